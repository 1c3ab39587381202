"""What MAC leasing adds over REST (real broker, real Postgres, answers after commit): requests routed to the
pool of their namespace, or of their static MAC, the external pool.  What every kind shares is in
test_rest_leases."""

from __future__ import annotations

import asyncio

import asyncpg

from ipam.domain.mac import parse_mac
from ipam.domain.pools import parse_range

POOLS = {
    "pool-a": ("02:00:00:00:00:00-02:00:00:ff:ff:ff", ["ns-a"], False),
    "pool-b": ("02:10:00:00:00:00-02:10:00:00:ff:ff", ["ns-b"], False),
    "pool-c": ("0a:00:00:00:00:00-0a:ff:ff:ff:ff:ff", [], True),
}


async def post(http, url, body, **kw):
    async with http.post(url, json=body, **kw) as r:
        return r.status, await r.json()


async def create_pools(http, base, pools=POOLS):
    for name, (rng, namespaces, default) in pools.items():
        body = {"name": name, "range": rng, "namespaces": namespaces, "default": default}
        status, body = await post(http, f"{base}/v1/pools", body)
        assert status == 201, body


def owner(i: int, ns: str, iface: str = "eth0") -> dict:
    return {"namespace": ns, "vm": f"vm-{i}", "vm_uid": f"uid-{i}", "interface": iface}


async def test_two_thousand_concurrent_leases_across_three_pools(service, http):
    base = service.url
    await create_pools(http, base)
    namespaces = ["ns-a", "ns-b", "ns-other"]
    expected_pool = {"ns-a": "pool-a", "ns-b": "pool-b", "ns-other": "pool-c"}
    gate = asyncio.Semaphore(200)

    async def one(i):
        async with gate:
            return await post(http, f"{base}/v1/mac-leases", owner(i, namespaces[i % 3]))

    results = await asyncio.gather(*[one(i) for i in range(2000)])
    assert all(status == 201 for status, _ in results), [r for r in results if r[0] != 201][:3]
    macs = [body["lease"]["mac"] for _, body in results]
    assert len(set(macs)) == 2000
    for i, (_, body) in enumerate(results):
        lease = body["lease"]
        assert lease["pool"] == expected_pool[namespaces[i % 3]]
        assert parse_mac(lease["mac"]) in parse_range(POOLS[lease["pool"]][0])

    # repeats (a VM reboot, a retried request) get the same MAC back
    repeats = await asyncio.gather(*[one(i) for i in range(0, 2000, 7)])
    for i, (status, body) in zip(range(0, 2000, 7), repeats, strict=True):
        assert status == 200 and body["existing"] is True and body["lease"]["mac"] == macs[i]

    # everything is committed in Postgres, visible through the admin views
    conn = await asyncpg.connect(service.cfg.database_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM ipam.mac_leases") == 2000
        assert await conn.fetchval("SELECT count(DISTINCT mac) FROM ipam.mac_leases") == 2000
        usage = {r["pool"]: r for r in await conn.fetch("SELECT * FROM ipam.pool_usage")}
        assert sum(r["used"] for r in usage.values()) == 2000
        assert usage["pool-b"]["size"] == 65536 and usage["pool-b"]["free"] == 65536 - usage["pool-b"]["used"]
        history = await conn.fetchval("SELECT count(*) FROM ipam.history WHERE what = 'leased'")
        assert history == 2000
    finally:
        await conn.close()
    async with http.get(f"{base}/v1/mac-leases", params={"namespace": "ns-b", "vm": "vm-1"}) as r:
        listed = (await r.json())["leases"]
    assert [(x["vm"], x["mac"]) for x in listed] == [("vm-1", macs[1])]


async def test_static_requests_are_routed_to_the_pool_holding_the_mac(service, http):
    base = service.url
    await create_pools(http, base)
    status, first = await post(http, f"{base}/v1/mac-leases", owner(1, "ns-a"))
    assert status == 201
    mac = first["lease"]["mac"]
    status, body = await post(http, f"{base}/v1/mac-leases", {**owner(2, "ns-a"), "mac": mac.upper().replace(":", "-")})
    assert status == 409 and body["error"]["code"] == "held"  # any spelling of the MAC
    # a free static MAC inside a pool is granted and routed to that pool
    status, body = await post(http, f"{base}/v1/mac-leases", {**owner(3, "ns-other"), "mac": "02:10:00:00:12:34"})
    assert status == 201 and body["lease"]["pool"] == "pool-b" and body["lease"]["static"] is True
    # outside every pool: only with an external pool
    status, body = await post(http, f"{base}/v1/mac-leases", {**owner(4, "ns-a"), "mac": "52:54:00:12:34:56"})
    assert status == 422 and body["error"]["field"] == "mac" and "external" in body["error"]["message"]
    status, _ = await post(http, f"{base}/v1/pools", {"name": "outside", "external": True})
    assert status == 201
    status, body = await post(http, f"{base}/v1/mac-leases", {**owner(4, "ns-a"), "mac": "52:54:00:12:34:56"})
    assert status == 201 and body["lease"]["pool"] == "outside"


async def test_an_interface_keeps_its_one_mac_whatever_pool_it_came_from(service, http):
    """Leased from a named pool (or by a static MAC of a pool), asked for again with neither: the lease it
    holds is the answer (200), not a second MAC from the namespace's pool."""
    base = service.url
    for pool in ({"name": "main", "range": "02:00:00:00:00:00-02:00:00:00:ff:ff", "default": True},
                 {"name": "side", "range": "06:00:00:00:00:00-06:00:00:00:ff:ff"}):
        async with http.post(f"{base}/v1/pools", json=pool) as r:
            assert r.status == 201
    owner = {"namespace": "ns", "vm": "vm-x", "vm_uid": "u-x", "interface": "eth0"}
    for extra in ({"pool": "side"}, {"mac": "06:00:00:00:00:42"}):
        owner["interface"] = f"eth{len(extra)}-{next(iter(extra))}"
        async with http.post(f"{base}/v1/mac-leases", json={**owner, **extra}) as r:
            first = await r.json()
            assert r.status == 201, first
        async with http.post(f"{base}/v1/mac-leases", json=owner) as r:
            again = await r.json()
            assert r.status == 200 and again["existing"] is True, again
        assert again["lease"] == first["lease"]
    async with http.get(f"{base}/v1/mac-leases", params={"vm": "vm-x"}) as r:
        assert {x["pool"] for x in (await r.json())["leases"]} == {"side"}
