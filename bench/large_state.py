"""Takeover, rebuild and memory at a million leases.

The million leases are written straight into Postgres with ``generate_series`` (a pipeline run of a
million commands takes minutes here and measures the pipeline, not the takeover): the pool is created
through the service as usual, then its leases and their ``MacLeased`` ledger events are inserted as the
projector would have written them. What is measured is the real code:

- takeover: ``Allocator.take`` in a child process (claim the epoch, check the log, load the partition's
  state from Postgres, catch up, record the fence, seek), and that process's resident memory before and
  after, per live lease;
- rebuild: ``ipam.adapters.postgres.rebuild.rebuild`` over the million events, with its equality check.

Run as part of ``python -m bench`` (scenarios ``takeover``, ``rebuild``, ``memory``), or the child alone:
``python -m bench.large_state takeover`` with the service's ``IPAM_*`` environment.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import subprocess
import sys
import time
from typing import TYPE_CHECKING

import aiohttp
import asyncpg

from ipam.adapters.kafka import partition_for
from tests.harness import env_of

from .metrics_scrape import measure_scrape

if TYPE_CHECKING:
    from .stack import Stack

BIG_POOL = "big"
BIG_RANGE = "0e:00:00:00:00:00-0e:00:ff:ff:ff:ff"  # 16.7M unicast addresses (0x0e: bit 40 clear throughout)
BIG_BASE = 0x0E0000000000

_MAC = "(substr(h,1,2)||':'||substr(h,3,2)||':'||substr(h,5,2)||':'||substr(h,7,2)||':'||substr(h,9,2)||':'||substr(h,11,2))"


async def populate(dsn: str, partition: int, count: int) -> float:
    """``count`` live leases in pool ``big`` and their ledger events; returns seconds taken."""
    started = time.perf_counter()
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"""
            INSERT INTO ipam_store.mac_leases (mac, pool, namespace, vm, vm_uid, interface, static, since, command_id)
            SELECT {_MAC}::macaddr, $1::text, 'ns-' || (i % 1000), 'vm-' || i, md5(i::text), 'eth0', false,
                   to_timestamp(1.7e9 + i / 1000.0), 'big-' || i
            FROM (SELECT i, lpad(to_hex($2::bigint + i), 12, '0') AS h FROM generate_series(0, $3 - 1) AS i) s""",
            BIG_POOL, BIG_BASE, count)
        await conn.execute(f"""
            INSERT INTO ipam_store.ledger (generation, partition, "offset", epoch, seq, at, type, command_id, pool, mac,
                                           namespace, vm, vm_uid, interface, body)
            SELECT 1, $4::int, 10000000 + i, 1, 10000000 + i, to_timestamp(1.7e9 + i / 1000.0), 'MacLeased', 'big-' || i,
                   $1::text,
                   {_MAC}::macaddr, 'ns-' || (i % 1000), 'vm-' || i, md5(i::text), 'eth0',
                   jsonb_build_object('type', 'MacLeased', 'command_id', 'big-' || i, 'at', 1700000000000 + i, 'pool', $1::text,
                                      'mac', {_MAC}, 'owner', jsonb_build_object('namespace', 'ns-' || (i % 1000),
                                      'vm', 'vm-' || i, 'vm_uid', md5(i::text), 'interface', 'eth0'))
            FROM (SELECT i, lpad(to_hex($2::bigint + i), 12, '0') AS h FROM generate_series(0, $3 - 1) AS i) s""",
            BIG_POOL, BIG_BASE, count, partition)
        # where next-fit continues after the last of them, as the projector would have left it
        await conn.execute("UPDATE ipam_store.pools SET cursor = $2 % size WHERE name = $1", BIG_POOL, count)
        await conn.execute("ANALYZE")
    finally:
        await conn.close()
    return time.perf_counter() - started


async def measure_rebuild(dsn: str) -> dict:
    from ipam.adapters.postgres.codecs import connect
    from ipam.adapters.postgres.rebuild import rebuild

    conn = await connect(dsn)
    try:
        report = await rebuild(conn)
        await conn.execute("DROP SCHEMA IF EXISTS ipam_rebuild CASCADE")
    finally:
        await conn.close()
    return {"scenario": "rebuild", "events": report.events, "seconds": round(report.seconds, 2),
            "events_per_s": round(report.events / report.seconds), "leases": report.leases, "equal": report.equal}


def measure_takeover(env: dict[str, str], partition: int) -> dict:
    """Run the takeover in a child process (a clean heap to measure) and return what it printed."""
    out = subprocess.run([sys.executable, "-m", "bench.large_state", "takeover", str(partition)], env={**os.environ, **env},
                         capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"takeover child failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


async def _takeover(partition: int) -> dict:
    from ipam import telemetry
    from ipam.adapters.postgres.codecs import create_pool
    from ipam.config import Config
    from ipam.roles.allocator import Allocator

    cfg = Config.from_env()
    telemetry.configure_logs("warning", "json")
    db = await create_pool(cfg.database_url, min_size=1, max_size=2)
    allocator = Allocator(cfg, db)
    await allocator.member.start([partition])  # outside the group: this partition only
    await allocator.producer.start()
    try:
        gc.collect()
        before = _rss()
        allocator.assigned = {partition}
        started = time.perf_counter()
        await allocator.take(partition)
        seconds = time.perf_counter() - started
        owned = allocator.owned[partition]
        leases = sum(len(b.by_key) for books in owned.state.books.values() for b in books.values())
        gc.collect()
        after = _rss()
    finally:
        await allocator.close()
        await db.close()
    return {"scenario": "takeover", "partition": partition, "leases": leases, "seconds": round(seconds, 2),
            "rss_before_mb": round(before / 2**20, 1), "rss_after_mb": round(after / 2**20, 1),
            "bytes_per_lease": round((after - before) / max(1, leases))}


async def large_state(stack: Stack, leases: int) -> list[dict]:
    """A pool made through the service, a million leases written under it, then the service stopped:
    time an allocator's takeover of that partition (and its memory), and a rebuild of the ledger."""
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{stack.svc.url}/v1/pools", json={"name": BIG_POOL, "range": BIG_RANGE}) as r:
            assert r.status == 201, await r.text()
    stack.stop_service()  # nobody else owns the partition while it is taken
    partition = partition_for(BIG_POOL, stack.cfg.partitions)
    seconds = await populate(stack.dsn, partition, leases)
    out = [{"scenario": "populate", "leases": leases, "seconds": round(seconds, 1), "how": "generate_series into "
            "mac_leases and the ledger (the pool itself made through the service)"}]
    out.append(await measure_scrape(stack.dsn, leases))
    taken = await asyncio.to_thread(measure_takeover, env_of(stack.cfg), partition)
    out.append(taken)
    out.append({"scenario": "memory", "leases": taken["leases"], "bytes_per_lease": taken["bytes_per_lease"],
                "rss_before_mb": taken["rss_before_mb"], "rss_after_mb": taken["rss_after_mb"],
                "how": "allocator process resident memory after taking the partition, minus before, per live lease"})
    out.append(await measure_rebuild(stack.dsn))
    return out


if __name__ == "__main__":
    if sys.argv[1:2] == ["takeover"]:
        print(json.dumps(asyncio.run(_takeover(int(sys.argv[2])))), flush=True)
    else:
        sys.exit("usage: python -m bench.large_state takeover PARTITION  (with the service's IPAM_* environment)")
