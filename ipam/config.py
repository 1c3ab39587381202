"""Settings, read from the environment in one place.  ``SETTINGS`` is the documented table
(docs/settings.md is checked against it by the tests)."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields


@dataclass(frozen=True)
class Setting:
    env: str
    default: str | None
    help: str


SETTINGS: tuple[Setting, ...] = (
    Setting("IPAM_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/ipam", "Postgres DSN; the database is created by `ipam migrate` when missing."),
    Setting("IPAM_KAFKA_BOOTSTRAP", None, "Kafka bootstrap servers. Unset: `ipam serve` starts a local memory-only broker (Tansu)."),
    Setting("IPAM_LOCAL_BROKER_ADDR", "127.0.0.1:9092", "Where the local broker listens when IPAM_KAFKA_BOOTSTRAP is unset."),
    Setting("IPAM_COMMANDS_TOPIC", "ipam.commands", "Topic of commands, keyed by pool (or the pool registry)."),
    Setting("IPAM_EVENTS_TOPIC", "ipam.events", "Topic of events; partition N holds the events decided from commands partition N."),
    Setting("IPAM_DEAD_LETTER_TOPIC", "ipam.dead-letter", "Where records that cannot be decoded go, with the reason in a header."),
    Setting("IPAM_PARTITIONS", "8", "Partitions of both topics, created on start-up. Fixed once the database has seen it."),
    Setting("IPAM_GROUP_PREFIX", "ipam", "Prefix of the consumer group ids (<prefix>-allocator, <prefix>-projector)."),
    Setting("IPAM_HTTP_ADDR", "127.0.0.1:8080", "host:port of the REST API (also --listen)."),
    Setting("IPAM_QUARANTINE_SECONDS", "600", "How long a released MAC or IP address is kept from automatic reuse."),
    Setting("IPAM_REQUEST_TIMEOUT_SECONDS", "10", "How long the API waits for a command's outcome before answering 504 (retry with the same command id)."),
    Setting("IPAM_MAX_BODY_BYTES", "1048576", "Largest accepted request body; larger bodies get 413."),
    Setting("IPAM_OUTCOME_RETENTION_HOURS", "168", "How long command outcomes (the answers to retried command ids) are kept."),
    Setting("IPAM_DEDUPE_WINDOW", "10000", "Command ids per partition an allocator remembers in memory to drop redelivered commands."),
    Setting("IPAM_LOG_LEVEL", "info", "debug, info, warning or error."),
    Setting("IPAM_LOG_FORMAT", "json", "json (one object per line) or console."),
    Setting("IPAM_KAFKA_LINGER_MS", "1", "Producer linger: batches records for up to this many ms."),
    Setting("IPAM_KAFKA_FETCH_MAX_WAIT_MS", "5", "Longest a fetch waits for data. Tansu waits it out even when data arrives, so keep it low there."),
    Setting("IPAM_WEBHOOK_ADDR", "127.0.0.1:8443", "host:port of the HTTPS admission webhook (served only when the TLS files are set)."),
    Setting("IPAM_TLS_CERT_FILE", "", "PEM certificate (chain) of the webhook listener; reloaded when the file changes."),
    Setting("IPAM_TLS_KEY_FILE", "", "PEM private key of the webhook listener; reloaded with the certificate."),
    Setting("IPAM_WEBHOOK_DEADLINE_SECONDS", "8", "The webhook denies a review it could not decide in this time; keep it below the webhook's timeoutSeconds (10)."),
    Setting("IPAM_PENDING_SECONDS", "300", "How long a MAC or IP address leased at admission waits for its VM to appear before it is released."),
    Setting("IPAM_NAMESPACE_OPT_IN", "false", "true: only namespaces labelled ipam.kubevirt.io/mac-allocation=allocate (or KubeMacPool's label) get MACs."),
    Setting("IPAM_MAX_INTERFACES", "64", "Largest number of interfaces a VM may have; a review with more is denied."),
    Setting("IPAM_KUBE_API", "", "Kubernetes API for the watcher: 'in-cluster', a kubeconfig path, or a URL. Empty: no watcher."),
    Setting("IPAM_RESYNC_SECONDS", "600", "The watcher lists everything again this often (and after 410 Gone), reconciling what drifted."),
)


@dataclass(frozen=True)
class Config:
    database_url: str
    kafka_bootstrap: str | None
    local_broker_addr: str
    commands_topic: str
    events_topic: str
    dead_letter_topic: str
    partitions: int
    group_prefix: str
    http_addr: str
    quarantine_seconds: int
    request_timeout_seconds: float
    max_body_bytes: int
    outcome_retention_hours: float
    dedupe_window: int
    log_level: str
    log_format: str
    kafka_linger_ms: int
    kafka_fetch_max_wait_ms: int
    webhook_addr: str
    tls_cert_file: str
    tls_key_file: str
    webhook_deadline_seconds: float
    pending_seconds: int
    namespace_opt_in: bool
    max_interfaces: int
    kube_api: str
    resync_seconds: float

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides: object) -> Config:
        env = dict(os.environ if env is None else env)
        values: dict[str, object] = {}
        for f, s in zip(fields(cls), SETTINGS, strict=True):
            raw = env.get(s.env, s.default) if s.default == "" else (env.get(s.env) or s.default)
            try:
                values[f.name] = None if raw is None else _convert(f.type, raw)
            except ValueError:
                raise ConfigError(f"{s.env}={raw!r}: expected {f.type}") from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        cfg = cls(**values)  # type: ignore[arg-type]
        if cfg.partitions < 1:
            raise ConfigError("IPAM_PARTITIONS must be at least 1")
        return cfg

    @property
    def quarantine_ms(self) -> int:
        return self.quarantine_seconds * 1000


class ConfigError(ValueError):
    pass


def _convert(kind: object, raw: str) -> object:
    if kind in ("bool", bool):
        if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError(raw)
        return raw.lower() in ("true", "1", "yes")
    if kind in ("int", int):
        return int(raw)
    if kind in ("float", float):
        return float(raw)
    return raw
