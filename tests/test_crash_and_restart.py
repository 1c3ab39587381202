"""Leases survive kill -9 of the service, and a broker that lost every topic (log reset)."""

from __future__ import annotations

import asyncio
import dataclasses

import asyncpg

from ipam.devenv import LocalBroker
from ipam.service import Service

from .harness import ServiceProcess


async def lease(http, base, i, **extra):
    body = {"namespace": "ns", "vm": f"vm-{i}", "vm_uid": f"uid-{i}", "interface": "eth0", **extra}
    async with http.post(f"{base}/v1/mac-leases", json=body) as r:
        return r.status, await r.json()


async def create_pool(http, base):
    pool = {"name": "p", "range": "02:00:00:00:00:00-02:00:00:00:ff:ff", "default": True}
    async with http.post(f"{base}/v1/pools", json=pool) as r:
        assert r.status == 201, await r.json()


async def test_kill_9_then_restart_keeps_every_lease_sticky(config, http):
    svc = ServiceProcess(config).start()
    try:
        await svc.wait_ready()
        await create_pool(http, svc.url)
        first = await asyncio.gather(*[lease(http, svc.url, i) for i in range(100)])
        assert all(s == 201 for s, _ in first)
        macs = {i: b["lease"]["mac"] for i, (_, b) in enumerate(first)}
        # leave requests in flight while the process dies
        inflight = [asyncio.ensure_future(lease(http, svc.url, i)) for i in range(100, 150)]
        await asyncio.sleep(0.02)
        svc.kill()
        await asyncio.gather(*inflight, return_exceptions=True)

        svc.start()
        await svc.wait_ready()
        again = await asyncio.gather(*[lease(http, svc.url, i) for i in range(150)])
        for i, (status, body) in enumerate(again):
            assert status in (200, 201), body
            if i < 100:
                assert status == 200 and body["lease"]["mac"] == macs[i]
        all_macs = [b["lease"]["mac"] for _, b in again]
        assert len(set(all_macs)) == 150
        conn = await asyncpg.connect(config.database_url)
        try:
            assert await conn.fetchval("SELECT count(*) FROM ipam.mac_leases") == 150
        finally:
            await conn.close()
        assert svc.terminate() == 0  # SIGTERM: graceful, exit 0
    finally:
        svc.kill()


async def test_restart_on_an_empty_broker_continues_from_postgres(backends, database, http):
    """The local broker keeps nothing: a restarted `make run` sees empty topics and must carry on."""
    broker = LocalBroker().start()
    try:
        from .harness import make_config

        cfg = make_config(broker.bootstrap, database)
        async with Service(cfg) as svc:
            await svc.wait_ready()
            await create_pool(http, svc.url)
            before = {i: (await lease(http, svc.url, i))[1]["lease"]["mac"] for i in range(20)}
        broker.restart()  # every topic and record is gone
        async with Service(dataclasses.replace(cfg)) as svc:
            await svc.wait_ready()
            for i in range(20):
                status, body = await lease(http, svc.url, i)
                assert status == 200 and body["lease"]["mac"] == before[i]
            status, body = await lease(http, svc.url, 99)
            assert status == 201 and body["lease"]["mac"] not in before.values()
            async with http.get(f"{svc.url}/v1/pools") as r:
                assert [p["name"] for p in (await r.json())["pools"]] == ["p"]
        conn = await asyncpg.connect(database)
        try:
            resets = await conn.fetchval("SELECT count(*) FROM ipam.history WHERE what = 'LogReset'")
            assert resets >= 1
            assert await conn.fetchval("SELECT max(generation) FROM ipam_store.partitions") == 2
        finally:
            await conn.close()
    finally:
        broker.stop()
