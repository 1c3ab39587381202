"""`make run`'s own Postgres: with IPAM_DATABASE_URL unset, `ipam serve` starts PostgreSQL from the wheel on its
data directory; after kill -9 of `ipam serve` the server goes too and the next start finds every lease; a server an
older ipam left on the data directory is replaced; any other program on the address is a one-line error (exit 2)."""

from __future__ import annotations

import os
import signal

import aiohttp
import asyncpg

from ipam.devenv import EmbeddedPostgres, free_port
from ipam.devenv.processes import cmdline

from .harness import eventually
from .test_local_broker import leased_macs, plain_env, pool_and_lease, ready, serve, serve_with_address_taken


def servers_on(data_dir: str) -> list[int]:
    """Postmasters (not their children: those share the command line only when forked) on ``data_dir``."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        args = cmdline(int(pid))
        if args and os.path.basename(args[0]) == "postgres" and data_dir in args:
            found.append(int(pid))
    return found


async def test_its_own_postgres_keeps_leases_across_kill_9_and_leftovers_are_replaced(tmp_path):
    data, addr, port = str(tmp_path / "pg"), f"127.0.0.1:{free_port()}", free_port()
    env = plain_env(port, IPAM_EMBEDDED_POSTGRES_DIR=data, IPAM_EMBEDDED_POSTGRES_ADDR=addr,
                    IPAM_LOCAL_BROKER_ADDR=f"127.0.0.1:{free_port()}")
    url, log = f"http://127.0.0.1:{port}", open(tmp_path / "serve.log", "ab")
    procs, leftover = [], None
    try:
        async with aiohttp.ClientSession() as http:
            procs.append(first := serve(env, log))
            await ready(http, url, first)
            mac = await pool_and_lease(http, url)
            async with http.get(f"{url}/v1/status") as r:
                assert (await r.json())["database"] == f"postgresql://postgres@{addr}/ipam"
            conn = await asyncpg.connect(f"postgresql://postgres@{addr}/ipam")  # what psql reaches
            assert await conn.fetchval("SELECT mac::text FROM ipam.mac_leases") == mac
            await conn.close()
            first.send_signal(signal.SIGKILL)
            first.wait()
            async def server_gone():
                return not servers_on(data)
            await eventually(server_gone, timeout=15)  # the parent-death signal took it

            procs.append(second := serve(env, log))
            await ready(http, url, second)
            assert await leased_macs(http, url) == [mac]
            second.send_signal(signal.SIGTERM)
            assert second.wait(30) == 0
            assert not servers_on(data)

            # a server left by an ipam without the signal (started here, outside any ipam): found and replaced
            leftover = EmbeddedPostgres(data, addr, tied=False).start()
            procs.append(third := serve(env, log))
            await ready(http, url, third)
            assert leftover.proc.wait(30) is not None and servers_on(data) not in ([], [leftover.proc.pid])
            assert await leased_macs(http, url) == [mac]
            third.send_signal(signal.SIGTERM)
            third.wait(30)

        done = serve_with_address_taken(env, addr)  # something else there: one line naming the setting, exit 2
        assert done.returncode == 2, done.stderr
        assert "IPAM_EMBEDDED_POSTGRES_ADDR" in done.stderr and "Traceback" not in done.stderr
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        if leftover is not None:
            leftover.stop("immediate")
        log.close()
