"""Day-2 changes of MAC pools through REST and the CLI, on the real broker and Postgres: grow, shrink (refused
while live leases would be orphaned, naming them), rebind namespaces, move the default, delete (refused while
in use), make again; quarantined addresses outside a shrunk range are dropped; the ledger replays to the same
tables; a restarted allocator decides with the changed pools."""

from __future__ import annotations

import asyncio
import json

import asyncpg

from ipam.service import Service

from .harness import make_config, query
from .test_bad_input import cli
from .test_rebuild import run_rebuild

P1 = "02:00:00:00:00:00-02:00:00:00:00:0f"


async def call(http, method: str, url: str, body: dict | None = None) -> tuple[int, dict]:
    async with http.request(method, url, json=body) as r:
        return r.status, await r.json()


async def lease(http, base: str, vm: str, namespace: str = "ns", **extra) -> tuple[int, dict]:
    return await call(http, "POST", f"{base}/v1/mac-leases",
                      {"namespace": namespace, "vm": vm, "vm_uid": f"uid-{vm}", "interface": "eth0", **extra})


async def test_grow_shrink_rebind_default_delete_and_make_again(service, http):
    base = service.url
    status, pool = await call(http, "POST", f"{base}/v1/pools", {"name": "p1", "range": P1, "default": True})
    assert status == 201 and pool["size"] == 16
    for i in range(3):
        assert (await lease(http, base, f"vm-{i}"))[0] == 201

    status, grown = await call(http, "PATCH", f"{base}/v1/pools/p1", {"range": "02:00:00:00:00:00-02:00:00:00:00:ff"})
    assert status == 200 and grown["size"] == 256 and grown["range"] == "02:00:00:00:00:00-02:00:00:00:00:ff", grown
    status, static = await lease(http, base, "high", mac="02:00:00:00:00:80")
    assert status == 201, static

    # shrinking below a live lease is refused, naming it; nothing changed
    status, refused = await call(http, "PATCH", f"{base}/v1/pools/p1", {"range": P1})
    assert status == 409 and refused["error"]["code"] == "in_use" and "ns/high" in refused["error"]["message"], refused
    assert (await call(http, "GET", f"{base}/v1/pools"))[1]["pools"][0]["size"] == 256
    async with http.delete(f"{base}/v1/mac-leases/ns/high") as r:
        assert r.status == 200
    assert len(await query(service, "SELECT 1 FROM ipam_store.mac_quarantine WHERE mac = '02:00:00:00:00:80'")) == 1
    status, shrunk = await call(http, "PATCH", f"{base}/v1/pools/p1", {"range": P1})
    assert status == 200 and shrunk["size"] == 16 and shrunk["quarantined"] == 0, shrunk
    assert await query(service, "SELECT 1 FROM ipam_store.mac_quarantine WHERE mac = '02:00:00:00:00:80'") == []
    status, outside = await lease(http, base, "high2", mac="02:00:00:00:00:80")
    assert status == 422 and outside["error"]["code"] == "outside_pool", outside

    # the freed part belongs to nobody: another pool may take it; growing into it again is an overlap
    status, _ = await call(http, "POST", f"{base}/v1/pools", {"name": "p2", "range": "02:00:00:00:00:40-02:00:00:00:00:7f"})
    assert status == 201
    status, overlap = await call(http, "PATCH", f"{base}/v1/pools/p1", {"range": "02:00:00:00:00:00-02:00:00:00:00:4f"})
    assert status == 409 and overlap["error"]["code"] == "overlap" and "'p2'" in overlap["error"]["message"]
    assert (await call(http, "GET", f"{base}/v1/pools"))[1]["pools"][0]["size"] == 16  # left as it was

    # namespaces and the default move by PATCH
    status, rebound = await call(http, "PATCH", f"{base}/v1/pools/p2", {"namespaces": ["team-b"]})
    assert status == 200 and rebound["namespaces"] == ["team-b"]
    status, got = await lease(http, base, "b-1", namespace="team-b")
    assert status == 201 and got["lease"]["pool"] == "p2"
    status, conflict = await call(http, "PATCH", f"{base}/v1/pools/p2", {"default": True})
    assert status == 409 and conflict["error"]["code"] == "conflict" and "'p1'" in conflict["error"]["message"]
    assert (await call(http, "PATCH", f"{base}/v1/pools/p1", {"default": False}))[0] == 200
    assert (await call(http, "PATCH", f"{base}/v1/pools/p2", {"default": True}))[0] == 200
    status, got = await lease(http, base, "elsewhere", namespace="other")
    assert status == 201 and got["lease"]["pool"] == "p2"

    # delete: refused while in use, then gone, then made again with another range
    status, busy = await call(http, "DELETE", f"{base}/v1/pools/p1")
    assert status == 409 and busy["error"]["code"] == "in_use" and "3 live lease(s)" in busy["error"]["message"], busy
    async with http.delete(f"{base}/v1/mac-leases/ns/vm-0") as r:
        assert r.status == 200
    for i in (1, 2):
        async with http.delete(f"{base}/v1/mac-leases/ns/vm-{i}") as r:
            assert r.status == 200
    status, gone = await call(http, "DELETE", f"{base}/v1/pools/p1")
    assert status == 200 and gone == {"deleted": "p1"}
    assert [p["name"] for p in (await call(http, "GET", f"{base}/v1/pools"))[1]["pools"]] == ["p2"]
    assert (await call(http, "DELETE", f"{base}/v1/pools/p1"))[0] == 404
    status, _ = await call(http, "POST", f"{base}/v1/pools", {"name": "p1", "range": "0a:00:00:00:00:00-0a:00:00:00:00:0f"})
    assert status == 201
    status, again = await lease(http, base, "new", pool="p1")
    assert status == 201 and again["lease"]["mac"].startswith("0a:"), again

    what = [r["what"] for r in await query(service, "SELECT what FROM ipam.history WHERE pool = 'p1' AND what LIKE 'pool %'")]
    assert {"pool changed", "pool range set", "pool retired", "pool deleted"} <= set(what)
    code, report = await asyncio.to_thread(run_rebuild, service.cfg.database_url)
    assert code == 0 and report["equal"] is True, report
    await cli_pool_change_and_delete(service)


async def cli_pool_change_and_delete(service) -> None:
    """The same through the CLI: change, a bad range (exit 2 naming the option), delete."""
    made = await asyncio.to_thread(cli, "pool", "create", "c", "--range", "0c:00:00:00:00:00-0c:00:00:00:00:0f", url=service.url)
    assert made.returncode == 0, made.stderr
    grown = await asyncio.to_thread(cli, "--json", "pool", "change", "c", "--range", "0c:00:00:00:00:00-0c:00:00:00:00:1f",
                                    "--namespace", "team", url=service.url)
    assert grown.returncode == 0, grown.stderr
    assert json.loads(grown.stdout)["size"] == 32 and json.loads(grown.stdout)["namespaces"] == ["team"]
    bad = await asyncio.to_thread(cli, "pool", "change", "c", "--range", "02:00:00:00:00:1f-02:00:00:00:00:00", url=service.url)
    assert bad.returncode == 2 and "--range" in bad.stderr and "Traceback" not in bad.stderr
    unknown = await asyncio.to_thread(cli, "pool", "delete", "nope", url=service.url)
    assert unknown.returncode != 0 and "pool 'nope' does not exist" in unknown.stderr
    gone = await asyncio.to_thread(cli, "pool", "delete", "c", url=service.url)
    assert gone.returncode == 0, gone.stderr


async def test_a_restarted_allocator_decides_with_the_changed_pool(config, http):
    async with Service(config) as svc:
        await svc.wait_ready()
        assert (await call(http, "POST", f"{svc.url}/v1/pools", {"name": "p", "range": P1, "default": True}))[0] == 201
        assert (await call(http, "PATCH", f"{svc.url}/v1/pools/p", {"range": "02:00:00:00:00:08-02:00:00:00:00:1f"}))[0] == 200
        assert (await lease(http, svc.url, "a"))[0] == 201
    async with Service(config) as svc:
        await svc.wait_ready()
        status, got = await lease(http, svc.url, "b", mac="02:00:00:00:00:02")  # shrunk away before the restart
        assert status == 422 and got["error"]["code"] == "outside_pool"
        status, got = await lease(http, svc.url, "c", mac="02:00:00:00:00:1e")  # grown into before the restart
        assert status == 201, got
        conn = await asyncpg.connect(config.database_url)
        try:
            row = await conn.fetchrow("SELECT first_mac::text, last_mac::text, claim_lo, claim_hi FROM ipam_store.pools")
        finally:
            await conn.close()
        assert (row["first_mac"], row["last_mac"]) == ("02:00:00:00:00:08", "02:00:00:00:00:1f")
        assert (row["claim_lo"], row["claim_hi"]) == (0x020000000008, 0x02000000001f)


async def test_a_range_moves_in_one_patch_when_nothing_is_in_the_way(backends, database, http):
    """KubeMacPool changes its range in place; here a PATCH to a range sharing no address with the old one is
    one request, refused naming what is in the way: a live lease, a quarantined address, a pool in between."""
    async with Service(make_config(backends.kafka_bootstrap, database, quarantine_seconds=1)) as service:
        await service.wait_ready()
        await _move_in_one_patch(service.url, http)


async def _move_in_one_patch(base: str, http) -> None:
    old, new = "02:00:00:00:00:00-02:00:00:00:00:0f", "02:00:00:00:10:00-02:00:00:00:10:0f"
    assert (await call(http, "POST", f"{base}/v1/pools", {"name": "mover", "range": old, "default": True}))[0] == 201
    assert (await lease(http, base, "held"))[0] == 201
    status, refused = await call(http, "PATCH", f"{base}/v1/pools/mover", {"range": new})
    assert status == 409 and refused["error"]["field"] == "range" and "ns/held" in refused["error"]["message"], refused
    assert "would orphan 1 live lease" in refused["error"]["message"]
    async with http.delete(f"{base}/v1/mac-leases/ns/held") as r:
        assert r.status == 200
    status, refused = await call(http, "PATCH", f"{base}/v1/pools/mover", {"range": new})
    assert status == 409 and "quarantined address" in refused["error"]["message"], refused
    pools = (await call(http, "GET", f"{base}/v1/pools"))[1]["pools"]
    assert [(p["name"], p["range"]) for p in pools] == [("mover", old)]  # the span was given back

    await asyncio.sleep(1.2)  # the quarantine (1 s here) runs out
    status, moved = await call(http, "PATCH", f"{base}/v1/pools/mover", {"range": new})
    assert status == 200 and moved["range"] == new and moved["size"] == 16, moved
    status, body = await lease(http, base, "after")
    assert status == 201 and body["lease"]["mac"].startswith("02:00:00:00:10:"), body

    # a pool between the two ranges: the span would overlap it, and the refusal says so
    between = {"name": "between", "range": "02:00:00:00:20:00-02:00:00:00:20:ff"}
    assert (await call(http, "POST", f"{base}/v1/pools", between))[0] == 201
    async with http.delete(f"{base}/v1/mac-leases/ns/after") as r:
        assert r.status == 200
    status, refused = await call(http, "PATCH", f"{base}/v1/pools/mover", {"range": "02:00:00:00:30:00-02:00:00:00:30:0f"})
    assert status == 409 and "claims 02:00:00:00:10:00-02:00:00:00:30:0f first" in refused["error"]["message"], refused
    assert "'between'" in refused["error"]["message"]


async def test_a_pool_does_not_grow_over_a_static_mac_of_the_external_pool(service, http):
    """Found by the decider's property test: a pool grown over a MAC the external pool holds would hand it out
    again.  Refused, naming the holder, whether the external pool shares the registry's partition or not."""
    base = service.url
    assert (await call(http, "POST", f"{base}/v1/pools", {"name": "ranged", "range": P1, "default": True}))[0] == 201
    assert (await call(http, "POST", f"{base}/v1/pools", {"name": "outside", "external": True}))[0] == 201
    status, body = await lease(http, base, "legacy", mac="02:00:00:00:00:20")
    assert status == 201 and body["lease"]["pool"] == "outside", body
    status, refused = await call(http, "PATCH", f"{base}/v1/pools/ranged", {"range": "02:00:00:00:00:00-02:00:00:00:00:ff"})
    assert status == 409 and refused["error"]["field"] == "range", refused
    assert "02:00:00:00:00:20" in refused["error"]["message"] and "ns/legacy" in refused["error"]["message"], refused
    pools = {p["name"]: p for p in (await call(http, "GET", f"{base}/v1/pools"))[1]["pools"]}
    assert pools["ranged"]["range"] == P1
    status, grown = await call(http, "PATCH", f"{base}/v1/pools/ranged", {"range": "02:00:00:00:00:00-02:00:00:00:00:1f"})
    assert status == 200 and grown["size"] == 32, grown  # up to the static MAC is fine
