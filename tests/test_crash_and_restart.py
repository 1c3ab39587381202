"""Leases of every kind survive kill -9 of the service with requests in flight, redelivered command ids,
and a broker that lost every topic (a log reset): sticky, distinct, and a rebuild equal to the tables."""

from __future__ import annotations

import asyncio
import dataclasses

import asyncpg

from ipam.adapters.postgres.codecs import connect
from ipam.adapters.postgres.rebuild import rebuild
from ipam.service import Service

from .backends import local_broker
from .harness import ServiceProcess, make_config
from .kinds import KINDS, create_space, lease


@KINDS
async def test_kill_9_with_leases_in_flight_then_restart(config, http, kind):
    svc = ServiceProcess(config).start()
    try:
        await svc.wait_ready()
        await create_space(http, svc.url, kind)
        first = await asyncio.gather(*[lease(http, svc.url, kind, i) for i in range(100)])
        assert all(s == 201 for s, _ in first)
        held = {i: kind.addresses(b) for i, (_, b) in enumerate(first)}
        inflight = [asyncio.ensure_future(lease(http, svc.url, kind, i)) for i in range(100, 150)]
        await asyncio.sleep(0.02)  # leave requests in flight while the process dies
        svc.kill()
        await asyncio.gather(*inflight, return_exceptions=True)

        svc.start()
        await svc.wait_ready()
        again = await asyncio.gather(*[lease(http, svc.url, kind, i) for i in range(150)])
        for i, (status, body) in enumerate(again):
            assert status in (200, 201), body
            if i < 100:
                assert status == 200 and kind.addresses(body) == held[i]
        every = [a for _, b in again for a in kind.addresses(b)]
        assert len(every) == len(set(every)) == 150 * kind.per_lease
        assert not any(a.startswith("10.60.1.") for a in every)  # the IP network's excluded /24
        key = {"Idempotency-Key": f"{kind.name}-retry-1"}  # a redelivered command gets the same answer, changes nothing
        one, two = await lease(http, svc.url, kind, 500, headers=key), await lease(http, svc.url, kind, 500, headers=key)
        assert one == two and one[0] == 201
        conn = await connect(config.database_url)
        try:
            assert await conn.fetchval(f"SELECT count(*) FROM {kind.view}") == 151 * kind.per_lease
            report = await rebuild(conn)
            assert report.equal, report.differences
        finally:
            await conn.close()
        assert svc.terminate() == 0  # SIGTERM: graceful, exit 0
    finally:
        svc.kill()


@KINDS
async def test_a_restart_on_an_empty_broker_continues_from_postgres(database, http, kind):
    """The local broker keeps nothing: a restarted `make run` sees empty topics and must carry on."""
    broker = local_broker()
    try:
        cfg = make_config(broker.bootstrap, database)
        async with Service(cfg) as svc:
            await svc.wait_ready()
            await create_space(http, svc.url, kind)
            before = {i: kind.addresses((await lease(http, svc.url, kind, i))[1]) for i in range(20)}
        broker.restart()  # every topic and record is gone
        async with Service(dataclasses.replace(cfg)) as svc:
            await svc.wait_ready()
            for i in range(20):
                status, body = await lease(http, svc.url, kind, i)
                assert status == 200 and kind.addresses(body) == before[i]
            status, body = await lease(http, svc.url, kind, 99)
            assert status == 201 and not set(kind.addresses(body)) & {a for v in before.values() for a in v}
            async with http.get(svc.url + kind.spaces) as r:
                spaces = (await r.json())["pools" if kind.name == "mac" else "networks"]
            assert [s["name"] for s in spaces] == ["crash"]
        conn = await asyncpg.connect(database)
        try:
            assert await conn.fetchval("SELECT count(*) FROM ipam.history WHERE what = 'LogReset'") >= 1
            assert await conn.fetchval("SELECT max(generation) FROM ipam_store.partitions") == 2
            assert await conn.fetchval(f"SELECT count(*) FROM {kind.view}") == 21 * kind.per_lease
        finally:
            await conn.close()
    finally:
        broker.stop()
