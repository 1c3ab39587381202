"""IP leases survive kill -9 with requests in flight, redelivered commands, and a broker that lost every
topic: the same pipeline guarantees as MACs, checked on what IP adds (networks decided on their own
partition, loaded from Postgres at takeover)."""

from __future__ import annotations

import asyncio
import dataclasses

from ipam.adapters.postgres.codecs import connect
from ipam.adapters.postgres.rebuild import rebuild
from ipam.devenv import LocalBroker
from ipam.service import Service

from .harness import ServiceProcess, make_config

NETWORK = {"name": "crash", "subnets": [{"cidr": "10.60.0.0/22", "gateway": "10.60.0.1", "exclude": ["10.60.1.0/24"]},
                                        {"cidr": "fd00:60::/64"}]}


async def lease(http, base, i, headers=None):
    body = {"network": "crash", "namespace": "ns", "vm": f"vm-{i}", "vm_uid": f"uid-{i}", "interface": "eth1"}
    async with http.post(f"{base}/v1/ip-leases", json=body, headers=headers or {}) as r:
        return r.status, await r.json()


async def create_network(http, base):
    async with http.post(f"{base}/v1/networks", json=NETWORK) as r:
        assert r.status == 201, await r.json()


def addresses(body) -> list[str]:
    return sorted(x["address"] for x in body["leases"])


async def test_kill_9_with_ip_leases_in_flight_then_restart(config, http):
    svc = ServiceProcess(config).start()
    try:
        await svc.wait_ready()
        await create_network(http, svc.url)
        first = await asyncio.gather(*[lease(http, svc.url, i) for i in range(100)])
        assert all(s == 201 for s, _ in first)
        held = {i: addresses(b) for i, (_, b) in enumerate(first)}
        inflight = [asyncio.ensure_future(lease(http, svc.url, i)) for i in range(100, 160)]
        await asyncio.sleep(0.02)
        svc.kill()
        await asyncio.gather(*inflight, return_exceptions=True)

        svc.start()
        await svc.wait_ready()
        again = await asyncio.gather(*[lease(http, svc.url, i) for i in range(160)])
        for i, (status, body) in enumerate(again):
            assert status in (200, 201), body
            if i < 100:
                assert status == 200 and addresses(body) == held[i]
        every = [a for _, b in again for a in addresses(b)]
        assert len(every) == len(set(every)) == 320
        assert not any(a.startswith("10.60.1.") for a in every)  # the excluded /24
        # a redelivered command (same id) gets the same answer and changes nothing
        key = {"Idempotency-Key": "ip-retry-1"}
        one = await lease(http, svc.url, 500, key)
        two = await lease(http, svc.url, 500, key)
        assert one == two and one[0] == 201
        conn = await connect(config.database_url)
        try:
            assert await conn.fetchval("SELECT count(*) FROM ipam.ip_leases") == 322
            report = await rebuild(conn)
            assert report.equal, report.differences
        finally:
            await conn.close()
        assert svc.terminate() == 0
    finally:
        svc.kill()


async def test_ip_leases_continue_from_postgres_on_an_empty_broker(database, http):
    broker = LocalBroker().start()
    try:
        cfg = make_config(broker.bootstrap, database)
        async with Service(cfg) as svc:
            await svc.wait_ready()
            await create_network(http, svc.url)
            before = {i: addresses((await lease(http, svc.url, i))[1]) for i in range(20)}
        broker.restart()  # every topic and record is gone
        async with Service(dataclasses.replace(cfg)) as svc:
            await svc.wait_ready()
            for i in range(20):
                status, body = await lease(http, svc.url, i)
                assert status == 200 and addresses(body) == before[i]
            status, body = await lease(http, svc.url, 99)
            assert status == 201 and not set(addresses(body)) & {a for v in before.values() for a in v}
            async with http.get(f"{svc.url}/v1/networks/crash") as r:
                assert (await r.json())["subnets"][0]["used"] == 21
    finally:
        broker.stop()
