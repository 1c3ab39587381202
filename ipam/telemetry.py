"""What this process did, as Prometheus counters and histograms (one registry per process).

Roles, the API and the Kafka adapter all count here; ``/metrics`` renders it together with
the gauges the API reads from Postgres at scrape time (``ipam.api.app``).  Label values
are bounded: partitions, rejection codes, route templates, never names chosen by users.

Logs are structured: one JSON object per line (or console lines for people), with the standard
library's loggers (aiokafka, aiohttp) routed through the same renderer."""

from __future__ import annotations

import logging
import sys

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry()

# Seconds: the webhook must answer in milliseconds, REST within the request timeout.
_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

http_requests = Counter("ipam_http_requests", "REST requests answered, by route template and status",
                        ["route", "method", "status"], registry=REGISTRY)
http_seconds = Histogram("ipam_http_request_duration_seconds", "REST request latency, by route template",
                         ["route", "method"], buckets=_LATENCY, registry=REGISTRY)
webhook_reviews = Counter("ipam_webhook_reviews", "AdmissionReviews answered", ["result"], registry=REGISTRY)
requests_shed = Counter("ipam_requests_shed", "Lease requests refused at once under overload (429, or a review denied "
                        "busy): IPAM_SHED_AFTER_SECONDS", registry=REGISTRY)
loop_late = Gauge("ipam_event_loop_late_seconds", "How late the REST process's event loop ran a 50 ms timer last "
                  "(over 0.1 s twice running: new leases are refused with 429)", registry=REGISTRY)
webhook_seconds = Histogram("ipam_webhook_review_duration_seconds", "AdmissionReview latency", buckets=_LATENCY,
                            registry=REGISTRY)
auth_failures = Counter("ipam_auth_failures", "REST calls refused: missing or invalid token (401), role too weak (403)",
                        ["reason"], registry=REGISTRY)
config_refusals = Gauge("ipam_config_refusals", "Entries of the declared configuration (IPAM_CONFIG_FILE) refused at the "
                        "last reconcile", registry=REGISTRY)
commands = Counter("ipam_commands_decided", "Commands decided by the allocators in this process, by type",
                   ["command"], registry=REGISTRY)
rejections = Counter("ipam_rejections", "Commands rejected by the decider, by reason code", ["code"], registry=REGISTRY)
dead_letters = Counter("ipam_dead_letters", "Records copied to the dead-letter topic, by the topic they came from",
                       ["topic"], registry=REGISTRY)
log_trims = Counter("ipam_log_trims", "Times the local broker's topics were swapped for empty ones once projected "
                    "(IPAM_LOG_TRIM_RECORDS)", registry=REGISTRY)
consumer_lag = Gauge("ipam_consumer_lag", "Records on a partition not yet processed by this process (high watermark - position)",
                     ["group", "partition"], registry=REGISTRY)
projector_batch = Histogram("ipam_projector_batch_records", "Events applied to Postgres per projector transaction",
                            ["partition"], buckets=(1, 2, 5, 10, 50, 100, 500, 1000, 5000, 20000), registry=REGISTRY)
records_skipped = Counter("ipam_projector_skipped_records",
                          "Events the projector dropped: zombie (older epoch), poison, duplicate",
                          ["reason"], registry=REGISTRY)

# Series with a known, fixed set of labels exist from the start (at 0), so rates and alerts see them.
for _reason in ("missing", "invalid", "forbidden"):
    auth_failures.labels(_reason)
for _result in ("allowed", "denied", "error"):
    webhook_reviews.labels(_result)
for _reason in ("zombie", "poison", "duplicate"):
    records_skipped.labels(_reason)


def lag(group: str, consumer, tp, position: int) -> None:
    """Record how far ``position`` is behind the partition's last known high watermark."""
    high = consumer.highwater(tp)
    if high is not None:
        consumer_lag.labels(group, str(tp.partition)).set(max(0, high - position))


def configure_logs(level: str = "info", fmt: str = "json") -> None:
    lvl = getattr(logging, level.upper(), logging.INFO)
    renderer = structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(processor=renderer,
                                                             foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name]))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(lvl)
    # aiokafka is chatty about normal leader moves and reconnects
    logging.getLogger("aiokafka").setLevel(max(lvl, logging.WARNING))
