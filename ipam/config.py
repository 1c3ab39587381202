"""Settings, read from the environment in one place.  ``SETTINGS`` is the documented table
(docs/settings.md is checked against it by the tests)."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, make_dataclass


@dataclass(frozen=True)
class Setting:
    env: str
    type: type
    default: str | None
    help: str

    @property
    def field(self) -> str:
        return self.env.removeprefix("IPAM_").lower()


SETTINGS: tuple[Setting, ...] = (
    Setting("IPAM_DATABASE_URL", str, "postgresql://postgres@127.0.0.1:5432/ipam",
            "Postgres DSN; the database is created by `ipam migrate` when missing."),
    Setting("IPAM_MIGRATE", bool, "true",
            "true: `ipam serve` applies pending migrations at start. false: it only checks the schema is current (run as "
            "ipam_writer; `ipam migrate` as the owner)."),
    Setting("IPAM_KAFKA_BOOTSTRAP", str, None,
            "Kafka bootstrap servers. Unset: `ipam serve` starts a local memory-only broker (Tansu)."),
    Setting("IPAM_LOCAL_BROKER_ADDR", str, "127.0.0.1:9092",
            "Where the local broker listens when IPAM_KAFKA_BOOTSTRAP is unset."),
    Setting("IPAM_COMMANDS_TOPIC", str, "ipam.commands", "Topic of commands, keyed by pool (or the pool registry)."),
    Setting("IPAM_EVENTS_TOPIC", str, "ipam.events",
            "Topic of events; partition N holds the events decided from commands partition N."),
    Setting("IPAM_DEAD_LETTER_TOPIC", str, "ipam.dead-letter",
            "Where records that cannot be decoded go, with the reason in a header."),
    Setting("IPAM_PARTITIONS", int, "8", "Partitions of both topics, created on start-up. Fixed once the database has seen it."),
    Setting("IPAM_GROUP_PREFIX", str, "ipam", "Prefix of the consumer group ids (<prefix>-allocator, <prefix>-projector)."),
    Setting("IPAM_HTTP_ADDR", str, "127.0.0.1:8080",
            "host:port of the REST API, health and metrics (also --listen); HTTPS with the TLS files below."),
    Setting("IPAM_PLAIN_HTTP", bool, "false",
            "true: serve REST as plain HTTP, with no tokens unless a token source is set. Refused unless IPAM_HTTP_ADDR is a "
            "loopback address (development, `make run`, tests)."),
    Setting("IPAM_QUARANTINE_SECONDS", int, "600", "How long a released MAC or IP address is kept from automatic reuse."),
    Setting("IPAM_REQUEST_TIMEOUT_SECONDS", float, "10",
            "How long the API waits for a command's outcome before answering 504 (retry with the same command id)."),
    Setting("IPAM_MAX_BODY_BYTES", int, "1048576", "Largest accepted request body; larger bodies get 413."),
    Setting("IPAM_OUTCOME_RETENTION_HOURS", float, "168",
            "How long command outcomes (the answers to retried command ids) are kept."),
    Setting("IPAM_DEDUPE_WINDOW", int, "10000",
            "Command ids per partition an allocator remembers in memory to drop redelivered commands."),
    Setting("IPAM_LOG_LEVEL", str, "info", "debug, info, warning or error."),
    Setting("IPAM_LOG_FORMAT", str, "json", "json (one object per line) or console."),
    Setting("IPAM_KAFKA_LINGER_MS", int, "1", "Producer linger: batches records for up to this many ms."),
    Setting("IPAM_KAFKA_SECURITY_PROTOCOL", str, "PLAINTEXT", "PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL (passed to aiokafka)."),
    Setting("IPAM_KAFKA_SASL_MECHANISM", str, "", "PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 with a SASL_* protocol."),
    Setting("IPAM_KAFKA_SASL_USERNAME", str, "", "SASL user name."),
    Setting("IPAM_KAFKA_SASL_PASSWORD_FILE", str, "", "File holding the SASL password (a mounted Secret); read at start-up."),
    Setting("IPAM_KAFKA_CA_FILE", str, "",
            "PEM CA bundle that signed the brokers' certificates (SSL, SASL_SSL); empty: the system's CAs."),
    Setting("IPAM_KAFKA_CERT_FILE", str, "", "PEM client certificate for brokers that require mutual TLS."),
    Setting("IPAM_KAFKA_KEY_FILE", str, "", "PEM private key of the client certificate."),
    Setting("IPAM_KAFKA_FETCH_MAX_WAIT_MS", int, "5",
            "Longest a fetch waits for data. Tansu waits it out even when data arrives, so keep it low there."),
    Setting("IPAM_WEBHOOK_ADDR", str, "127.0.0.1:8443",
            "host:port of the HTTPS admission webhook (served only when the TLS files are set)."),
    Setting("IPAM_TLS_CERT_FILE", str, "",
            "PEM certificate (chain) of the HTTPS listeners (REST and webhook); reloaded when the file changes."),
    Setting("IPAM_TLS_KEY_FILE", str, "", "PEM private key of the HTTPS listeners; reloaded with the certificate."),
    Setting("IPAM_WEBHOOK_CLIENT_CA_FILE", str, "",
            "PEM CA bundle: when set, the webhook listener requires a client certificate it signed (the API server's, from its "
            "admission kubeconfig)."),
    Setting("IPAM_TOKEN_FILE", str, "",
            "Bearer tokens for REST, one per line: `<token> <reader|admin> <name>`; re-read when the file changes."),
    Setting("IPAM_TOKEN_REVIEW", bool, "false",
            "true: bearer tokens unknown to the token file are checked with a Kubernetes TokenReview (through IPAM_KUBE_API)."),
    Setting("IPAM_ADMIN_SUBJECTS", str, "",
            "Comma-separated `user:NAME` / `group:NAME` that TokenReview-authenticated callers need to be admins."),
    Setting("IPAM_READER_SUBJECTS", str, "",
            "Comma-separated `user:NAME` / `group:NAME` that may read (leases, pools, metrics) after a TokenReview."),
    Setting("IPAM_WEBHOOK_DEADLINE_SECONDS", float, "8",
            "The webhook denies a review it could not decide in this time; keep it below the webhook's timeoutSeconds (10)."),
    Setting("IPAM_PENDING_SECONDS", int, "300",
            "How long a MAC or IP address leased at admission waits for its VM to appear before it is released."),
    Setting("IPAM_NAMESPACE_OPT_IN", bool, "false",
            "true: only namespaces labelled ipam.kubevirt.io/mac-allocation=allocate (or KubeMacPool's label) get MACs."),
    Setting("IPAM_MAX_INTERFACES", int, "64", "Largest number of interfaces a VM may have; a review with more is denied."),
    Setting("IPAM_KUBE_API", str, "",
            "Kubernetes API for the watcher: 'in-cluster', a kubeconfig path, or a URL. Empty: no watcher."),
    Setting("IPAM_RESYNC_SECONDS", float, "600",
            "The watcher lists everything again this often (and after 410 Gone), reconciling what drifted."),
)


# Config's fields are the settings' (``Setting.field``), typed as the table says: one list, not two.
_Fields = make_dataclass("_Fields", [(x.field, x.type | None if x.default is None else x.type) for x in SETTINGS], frozen=True)


@dataclass(frozen=True)
class Config(_Fields):
    """Every setting, as the service reads it (``Config.from_env``)."""

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides: object) -> Config:
        env = dict(os.environ if env is None else env)
        values: dict[str, object] = {}
        for s in SETTINGS:
            raw = env.get(s.env, s.default) if s.default == "" else (env.get(s.env) or s.default)
            try:
                values[s.field] = None if raw is None else _convert(s.type, raw)
            except ValueError:
                raise ConfigError(f"{s.env}={raw!r}: expected {s.type.__name__}") from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        cfg = cls(**values)  # type: ignore[arg-type]
        if cfg.partitions < 1:
            raise ConfigError("IPAM_PARTITIONS must be at least 1")
        if cfg.kafka_security_protocol not in KAFKA_PROTOCOLS:
            raise ConfigError(f"IPAM_KAFKA_SECURITY_PROTOCOL={cfg.kafka_security_protocol!r}: expected one of "
                              f"{', '.join(KAFKA_PROTOCOLS)}")
        if cfg.kafka_security_protocol.startswith("SASL_") and cfg.kafka_sasl_mechanism not in SASL_MECHANISMS:
            raise ConfigError(f"IPAM_KAFKA_SASL_MECHANISM={cfg.kafka_sasl_mechanism!r}: expected one of "
                              f"{', '.join(SASL_MECHANISMS)} "
                              f"with IPAM_KAFKA_SECURITY_PROTOCOL={cfg.kafka_security_protocol}")
        for setting in ("IPAM_ADMIN_SUBJECTS", "IPAM_READER_SUBJECTS"):
            subjects(env.get(setting, ""), setting)
        if cfg.token_review and not cfg.kube_api:
            raise ConfigError("IPAM_TOKEN_REVIEW=true needs IPAM_KUBE_API (in-cluster, a kubeconfig path or a URL)")
        return cfg

    def check_listener(self) -> None:
        """REST is HTTPS with tokens, unless plain HTTP was asked for on a loopback address."""
        host = self.http_addr.rsplit(":", 1)[0].strip("[]")
        if self.plain_http:
            if not is_loopback(host):
                raise ConfigError(f"IPAM_PLAIN_HTTP=true: IPAM_HTTP_ADDR={self.http_addr} is not a loopback address; "
                                  "plain HTTP is served on loopback only (set IPAM_TLS_CERT_FILE and IPAM_TLS_KEY_FILE)")
            return
        if not (self.tls_cert_file and self.tls_key_file):
            raise ConfigError("IPAM_TLS_CERT_FILE and IPAM_TLS_KEY_FILE are needed to serve REST over HTTPS "
                              "(or IPAM_PLAIN_HTTP=true on a loopback address, for development)")
        if not (self.token_file or self.token_review):
            raise ConfigError("REST needs a token source: IPAM_TOKEN_FILE and/or IPAM_TOKEN_REVIEW=true "
                              "(or IPAM_PLAIN_HTTP=true on a loopback address, for development)")

    @property
    def quarantine_ms(self) -> int:
        return self.quarantine_seconds * 1000


class ConfigError(ValueError):
    pass


KAFKA_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def subjects(text: str, setting: str = "subjects") -> frozenset[tuple[str, str]]:
    """``user:alice,group:ipam-admins`` -> {("user", "alice"), ("group", "ipam-admins")}."""
    out = set()
    for item in filter(None, (part.strip() for part in text.split(","))):
        kind, _, name = item.partition(":")
        if kind not in ("user", "group") or not name:
            raise ConfigError(f"{setting}: {item!r} is not user:NAME or group:NAME")
        out.add((kind, name))
    return frozenset(out)


def _boolean(raw: str) -> bool:
    if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
        raise ValueError(raw)
    return raw.lower() in ("true", "1", "yes")


def _convert(kind: type, raw: str) -> object:
    return _boolean(raw) if kind is bool else kind(raw)
