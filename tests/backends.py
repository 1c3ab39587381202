"""Where the tests' and benchmarks' broker and database come from, chosen in one place.

Order: explicit settings (``IPAM_TEST_KAFKA_BOOTSTRAP``, ``IPAM_TEST_POSTGRES_DSN``) first; then
Docker, when a daemon answers (testcontainers: Apache Kafka and Postgres images); then local
processes (the Tansu broker ``ipam serve`` uses, and the machine's Postgres).  ``PrivatePostgres``
is a Postgres server of a test's own, so a fault run may restart it.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field

from ipam.devenv import LocalBroker, free_port, wait_port

LOCAL_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"


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
    broker: LocalBroker | None = None
    _closers: list[Callable[[], None]] = field(default_factory=list)

    def close(self) -> None:
        for close in reversed(self._closers):
            close()


def select_backends(env: dict[str, str] | None = None) -> Backends:
    env = dict(os.environ if env is None else env)
    closers: list[Callable[[], None]] = []
    kafka = env.get("IPAM_TEST_KAFKA_BOOTSTRAP")
    pg = env.get("IPAM_TEST_POSTGRES_DSN")
    kinds = []
    broker = None
    use_docker = (not kafka or not pg) and env.get("IPAM_TEST_DOCKER", "auto") != "no" and docker_available()
    if kafka:
        kinds.append("kafka:env")
    elif use_docker:
        from testcontainers.kafka import KafkaContainer

        container = KafkaContainer("apache/kafka:3.8.0").with_kraft()
        container.start()
        closers.append(container.stop)
        kafka = container.get_bootstrap_server()
        kinds.append("kafka:docker")
    else:
        broker = LocalBroker().start()
        closers.append(broker.stop)
        kafka = broker.bootstrap
        kinds.append("kafka:local-tansu")
    if pg:
        kinds.append("postgres:env")
    elif use_docker:
        from testcontainers.postgres import PostgresContainer

        container = PostgresContainer("postgres:16", driver=None)
        container.start()
        closers.append(container.stop)
        pg = container.get_connection_url()
        kinds.append("postgres:docker")
    else:
        pg = LOCAL_POSTGRES
        kinds.append("postgres:local")
    return Backends(kafka_bootstrap=kafka, postgres_dsn=pg, kind=",".join(kinds), broker=broker, _closers=closers)


class PrivatePostgres:
    """A throwaway Postgres server of our own (initdb into a temp dir), so a test may restart it.

    Uses the machine's Postgres binaries; runs them as the ``postgres`` user when we are root
    (initdb refuses root).
    """

    def __init__(self) -> None:
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
        if not found:
            raise RuntimeError("no Postgres server binaries under /usr/lib/postgresql")
        self.bin = os.path.dirname(found[-1])
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="ipam-pg-")
        self.data = os.path.join(self.dir, "data")
        self.log = os.path.join(self.dir, "server.log")

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        cmd = list(args)
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)

    def start(self) -> PrivatePostgres:
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        if not os.path.exists(self.data):
            self._run(f"{self.bin}/initdb", "-D", self.data, "-A", "trust", "-U", "postgres", "--no-sync")
        self._run(f"{self.bin}/pg_ctl", "-D", self.data, "-l", self.log, "-w", "start",
                  "-o", f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300")
        wait_port("127.0.0.1", self.port, 30)
        return self

    def stop(self, mode: str = "fast") -> None:
        if os.path.exists(os.path.join(self.data, "postmaster.pid")):
            self._run(f"{self.bin}/pg_ctl", "-D", self.data, "-m", mode, "-w", "stop")

    def restart(self) -> None:
        """Stop (dropping every connection) and start again; data is kept."""
        self.stop("immediate")
        self.start()

    def destroy(self) -> None:
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
