"""`ipam rebuild` replays the ledger and finds the live tables equal; tampering is detected."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import aiohttp
import asyncpg


def run_rebuild(dsn: str) -> tuple[int, dict]:
    env = {**os.environ, "IPAM_DATABASE_URL": dsn}
    done = subprocess.run([sys.executable, "-m", "ipam", "--json", "rebuild"], env=env, capture_output=True, text=True,
                          timeout=120)
    return done.returncode, json.loads(done.stdout)


async def test_rebuild_equals_live_tables_then_detects_tampering(service):
    base = service.url
    async with aiohttp.ClientSession() as http:
        async def post(path, body):
            async with http.post(base + path, json=body) as r:
                return r.status

        assert await post("/v1/pools", {"name": "a", "range": "02:00:00:00:00:00-02:00:00:00:00:3f", "default": True}) == 201
        assert await post("/v1/pools", {"name": "b", "range": "0a:00:00:00:00:00-0a:00:00:00:ff:ff", "namespaces": ["nb"]}) == 201
        statuses = await asyncio.gather(*[post("/v1/mac-leases", {"namespace": "nb" if i % 2 else "na", "vm": f"v{i}",
                                                                  "vm_uid": "u", "interface": "e"}) for i in range(120)])
        assert statuses.count(201) >= 100  # pool a has 64 addresses: some of its requests are refused
        assert await post("/v1/mac-leases", {"namespace": "na", "vm": "static", "vm_uid": "u", "interface": "e",
                                             "mac": "0a:00:00:00:ab:cd"}) == 201
        for i in range(0, 60, 3):
            async with http.delete(f"{base}/v1/mac-leases/{'nb' if i % 2 else 'na'}/v{i}") as r:
                assert r.status in (200, 404)
    code, report = await asyncio.to_thread(run_rebuild, service.cfg.database_url)
    assert code == 0 and report["equal"] is True, report
    assert report["leases"] > 90 and report["quarantined"] > 0
    conn = await asyncpg.connect(service.cfg.database_url)
    try:
        await conn.execute("DELETE FROM ipam_store.mac_leases WHERE mac = '0a:00:00:00:ab:cd'")
    finally:
        await conn.close()
    code, report = await asyncio.to_thread(run_rebuild, service.cfg.database_url)
    assert code == 1 and report["differences"]["mac_leases"] == 1
