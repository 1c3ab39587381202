"""examples/mac_table.py, run as a user would run it, ends with the same MAC -> VM table as Postgres,
and a second run resumes from the offsets it stored without repeating or losing anything."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import asyncpg

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "mac_table.py"


def run_example(svc, out: Path) -> dict:
    subprocess.run([sys.executable, str(EXAMPLE), "--bootstrap", svc.cfg.kafka_bootstrap, "--topic", svc.cfg.events_topic,
                    "--out", str(out), "--until-idle", "2"], check=True, timeout=120, capture_output=True)
    return json.loads(out.read_text())


async def postgres_table(svc) -> dict:
    conn = await asyncpg.connect(svc.cfg.database_url)
    try:
        rows = await conn.fetch("SELECT mac::text, pool, namespace, vm, vm_uid, interface FROM ipam.mac_leases")
    finally:
        await conn.close()
    return {r["mac"]: {k: r[k] for k in ("pool", "namespace", "vm", "vm_uid", "interface")} for r in rows}


async def lease(http, svc, vm: str, interface: str = "eth0") -> str:
    body = {"namespace": "team", "vm": vm, "vm_uid": f"uid-{vm}", "interface": interface}
    async with http.post(svc.url + "/v1/mac-leases", json=body) as r:
        assert r.status == 201, await r.text()
        return (await r.json())["lease"]["mac"]


async def test_the_example_consumer_keeps_the_same_table_as_postgres(service, http, tmp_path):
    for name in ("a", "b"):
        n = ord(name) - 97
        pool = {"name": name, "range": f"02:5{n}:00:00:00:00-02:5{n}:00:00:ff:ff",
                "namespaces": ["team"] if name == "a" else [], "default": name == "b"}
        async with http.post(service.url + "/v1/pools", json=pool) as r:
            assert r.status == 201, await r.text()
    await asyncio.gather(*[lease(http, service, f"vm{i}", iface) for i in range(15) for iface in ("eth0", "eth1")])
    for vm in ("vm3", "vm7"):
        async with http.delete(f"{service.url}/v1/mac-leases/team/{vm}") as r:
            assert r.status == 200
    out = tmp_path / "macs.json"
    first = run_example(service, out)
    assert len(first["macs"]) == 26 and first["macs"] == await postgres_table(service)

    await asyncio.gather(*[lease(http, service, f"late{i}") for i in range(4)])
    async with http.delete(f"{service.url}/v1/mac-leases/team/vm1/eth1") as r:
        assert r.status == 200
    second = run_example(service, out)  # resumes from the stored offsets
    assert len(second["macs"]) == 29 and second["macs"] == await postgres_table(service)
    offsets = {k: (p["next_offset"], second["partitions"][k]["next_offset"]) for k, p in first["partitions"].items()}
    assert all(after >= before for before, after in offsets.values())
    assert sum(after - before for before, after in offsets.values()) > 0
