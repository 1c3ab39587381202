"""What the servers ipam starts for development share: free ports, waiting for a listener, reading a
process's command line, and tying a child's life to its parent's.

Not used in production deployments, where Kafka and Postgres are run by the platform; ``ipam serve``
starts a local broker and an embedded Postgres only when none is configured.
"""

from __future__ import annotations

import ctypes
import os
import random
import signal
import socket
import subprocess
import sys
import time


def free_port() -> int:
    """A port nothing listens on, below the kernel's ephemeral range: a port the kernel handed out for
    binding to 0 is one it hands out again as the source of some outgoing connection, and the server that
    wanted it then fails with 'address already in use' (seen in a fault run: a REST port taken by a Kafka
    client).  Random, so the test servers of one session rarely ask for the same one."""
    low = _ephemeral_low()
    for _ in range(200):
        port = random.randrange(10000, low)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:  # everything below the range taken: fall back to the kernel's choice
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return max(10001, int(f.read().split()[0]))
    except (OSError, ValueError, IndexError):
        return 32768


def listening(host: str, port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex((host, port)) == 0


def wait_port(host: str, port: int, timeout: float, proc: subprocess.Popen | None = None, what: str = "server") -> None:
    """Return once something accepts on ``host:port``; fail early, naming ``what``, if ``proc`` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s ({what})")


def die_with_parent(sig: int = signal.SIGTERM):
    """A ``preexec_fn``: the child gets ``sig`` when the thread that started it dies, however it dies
    (kill -9, an OOM kill, a closed terminal), so no server outlives its run (Linux's PR_SET_PDEATHSIG).

    Runs after ``Popen(user=...)`` has changed the child's user, which would otherwise clear it."""

    def arm() -> None:
        if sys.platform.startswith("linux"):
            ctypes.CDLL(None, use_errno=True).prctl(1, sig)  # 1 = PR_SET_PDEATHSIG
    return arm


def cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def stop_pid(pid: int, sig: int = signal.SIGTERM, grace: float = 5.0) -> None:
    """Send ``sig``, wait up to ``grace`` seconds for the process to go, then SIGKILL it."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while cmdline(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if cmdline(pid):
        os.kill(pid, signal.SIGKILL)
