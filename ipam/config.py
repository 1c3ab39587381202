"""Settings, read from the environment in one place.

``Config`` declares each setting, its type and its default; ``SETTINGS``, derived from it, names the
environment variables; what each one means is documented in docs/settings.md, which the tests check
against that table.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import typing
from dataclasses import dataclass

from .domain.errors import ConfigError


@dataclass(frozen=True)
class Config:
    """Every setting, as the service reads it (``Config.from_env``): one typed field per setting, named as its
    environment variable without ``IPAM_`` and in lower case, with its default.  ``SETTINGS`` is derived from
    these fields, so the table and the type cannot drift, and a type checker sees every ``cfg.x``."""

    database_url: str | None = None
    embedded_postgres_addr: str = "127.0.0.1:55432"
    embedded_postgres_dir: str = ".ipam/postgres"
    migrate: bool = True
    kafka_bootstrap: str | None = None
    local_broker_addr: str = "127.0.0.1:9092"
    log_trim_records: int | None = None
    kafka_broker: str = "apache-kafka"
    kafka_replication: int = -1
    kafka_min_insync_replicas: int = 0
    commands_topic: str = "ipam.commands"
    events_topic: str = "ipam.events"
    dead_letter_topic: str = "ipam.dead-letter"
    partitions: int = 8
    group_prefix: str = "ipam"
    ownership_ttl_seconds: float = 1.5
    ownership_beat_seconds: float = 0.25
    http_addr: str = "127.0.0.1:8080"
    plain_http: bool = False
    quarantine_seconds: int = 600
    request_timeout_seconds: float = 10.0
    shed_after_seconds: float = 2.0
    shed_min_waiting: int = 256
    shed_max_waiting: int = 512
    max_body_bytes: int = 1048576
    outcome_retention_hours: float = 168.0
    dedupe_window: int = 10000
    log_level: str = "info"
    log_format: str = "json"
    kafka_linger_ms: int = 1
    kafka_security_protocol: str = "PLAINTEXT"
    kafka_sasl_mechanism: str = ""
    kafka_sasl_username: str = ""
    kafka_sasl_password_file: str = ""
    kafka_ca_file: str = ""
    kafka_cert_file: str = ""
    kafka_key_file: str = ""
    kafka_fetch_max_wait_ms: int = 0
    webhook_addr: str = "127.0.0.1:8443"
    tls_cert_file: str = ""
    tls_key_file: str = ""
    webhook_client_ca_file: str = ""
    token_file: str = ""
    token_review: bool = False
    admin_subjects: str = ""
    reader_subjects: str = ""
    node_subjects: str = ""
    webhook_deadline_seconds: float = 8.0
    pending_seconds: int = 300
    namespace_opt_in: bool = False
    max_interfaces: int = 64
    kube_api: str = ""
    resync_seconds: float = 600.0
    cluster: str = "default"
    config_file: str = ""
    config_poll_seconds: float = 5.0

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
        for setting in ("IPAM_ADMIN_SUBJECTS", "IPAM_READER_SUBJECTS", "IPAM_NODE_SUBJECTS"):
            subjects(env.get(setting, ""), setting)
        if cfg.kafka_broker not in BROKERS:
            raise ConfigError(f"IPAM_KAFKA_BROKER={cfg.kafka_broker!r}: expected one of {', '.join(BROKERS)}")
        if cfg.log_trim_records and cfg.kafka_bootstrap is not None and cfg.kafka_broker != "local":
            raise ConfigError(f"IPAM_LOG_TRIM_RECORDS={cfg.log_trim_records}: only for the local broker (topics swapped for "
                              "empty ones); Apache Kafka deletes decided commands with DeleteRecords and keeps events "
                              "by its retention settings")
        if cfg.kafka_replication == 0 or cfg.kafka_replication < -1:
            raise ConfigError(f"IPAM_KAFKA_REPLICATION={cfg.kafka_replication}: expected a replica count, or -1 for the "
                              "broker's default.replication.factor")
        replicas = cfg.kafka_replication if cfg.kafka_replication > 0 else None
        if cfg.kafka_min_insync_replicas < 0 or (replicas is not None and cfg.kafka_min_insync_replicas > replicas):
            raise ConfigError(f"IPAM_KAFKA_MIN_INSYNC_REPLICAS={cfg.kafka_min_insync_replicas}: expected 0 (the broker's "
                              f"min.insync.replicas) up to IPAM_KAFKA_REPLICATION={cfg.kafka_replication}")
        if cfg.shed_after_seconds < 0 or cfg.shed_min_waiting < 1:
            raise ConfigError(f"IPAM_SHED_AFTER_SECONDS={cfg.shed_after_seconds:g}, IPAM_SHED_MIN_WAITING="
                              f"{cfg.shed_min_waiting}: expected seconds (0: never shed) and a count of at least 1")
        if cfg.shed_max_waiting < 0:
            raise ConfigError(f"IPAM_SHED_MAX_WAITING={cfg.shed_max_waiting}: expected a count (0: no cap; one "
                              "below IPAM_SHED_MIN_WAITING counts as that)")
        if cfg.kafka_fetch_max_wait_ms < 0:
            raise ConfigError(f"IPAM_KAFKA_FETCH_MAX_WAIT_MS={cfg.kafka_fetch_max_wait_ms}: expected milliseconds, or 0 "
                              "for the broker's best (500 on Apache Kafka, 5 on the local broker)")
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
    def local_broker(self) -> bool:
        """The broker is the local stand-in (Tansu): no idempotent producer, end offsets it under-reports, no
        DeleteRecords; the code that works around it asks this, and nothing else."""
        return self.kafka_broker == "local"

    @property
    def fetch_wait_ms(self) -> int:
        """How long a consumer's fetch may wait for data (IPAM_KAFKA_FETCH_MAX_WAIT_MS, 0: by broker).  Apache Kafka
        answers a fetch as soon as a record arrives, so a long wait costs no latency and saves polling (an idle
        service and its broker used 15 % and 37 % of a core at 5 ms, 2 % and 7 % at 500 ms); the local broker waits
        the whole time even when records arrive, so there it must be short."""
        if self.kafka_fetch_max_wait_ms > 0:
            return self.kafka_fetch_max_wait_ms
        return 5 if self.local_broker else 500

    @property
    def embedded_database_url(self) -> str:
        """Where the embedded Postgres ``ipam serve`` starts (IPAM_DATABASE_URL unset) takes connections."""
        return f"postgresql://postgres@{self.embedded_postgres_addr}/ipam"

    @property
    def database_dsn(self) -> str:
        """IPAM_DATABASE_URL, or the embedded Postgres's when unset (for the CLI's database verbs)."""
        return self.database_url or self.embedded_database_url

    @property
    def quarantine_ms(self) -> int:
        return self.quarantine_seconds * 1000


@dataclass(frozen=True)
class Setting:
    """One environment variable: its name, the type it is read as, and its default as written in
    docs/settings.md."""

    env: str
    type: type
    default: str | None  # "" for optional text settings; None: unset unless given

    @property
    def field(self) -> str:
        return self.env.removeprefix("IPAM_").lower()


def _written(default: object) -> str | None:
    """A field's default as the environment (and docs/settings.md) write it."""
    if default is None or isinstance(default, str):
        return default
    if isinstance(default, bool):
        return "true" if default else "false"
    return f"{default:g}" if isinstance(default, float) else str(default)


def _settings() -> tuple[Setting, ...]:
    hints = typing.get_type_hints(Config)
    table = []
    for f in dataclasses.fields(Config):
        kinds = [t for t in typing.get_args(hints[f.name]) if t is not type(None)] or [hints[f.name]]
        table.append(Setting("IPAM_" + f.name.upper(), kinds[0], _written(f.default)))
    return tuple(table)


SETTINGS: tuple[Setting, ...] = _settings()


# What IPAM_KAFKA_BROKER may name, and what each one can do (docs/settings.md)
BROKERS = ("apache-kafka", "local")
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
