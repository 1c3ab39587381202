"""Leases per second: commands produced straight to the topic (pipeline) and the simple way (baseline)."""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid

import asyncpg
from aiokafka import AIOKafkaProducer

from ipam.adapters.kafka import partition_for
from ipam.domain.commands import LeaseIp, LeaseMac
from ipam.domain.events import encoder
from ipam.domain.kinds import Owner

from .stack import NETWORKS, POOLS


def mac_command(n: int, at: int, pools: list[str] = POOLS) -> tuple[str, LeaseMac]:
    pool = pools[n % len(pools)]
    return pool, LeaseMac(command_id=f"b{uuid.uuid4().hex}", at=at, pool=pool,
                          owner=Owner(namespace="bench", vm=f"vm-{n}", vm_uid=f"u{n}", interface="eth0"))


def ip_command(n: int, at: int) -> tuple[str, LeaseIp]:
    network = NETWORKS[n % len(NETWORKS)]
    return network, LeaseIp(command_id=f"i{uuid.uuid4().hex}", at=at, network=network,
                            owner=Owner(namespace="bench", vm=f"vm-{n}", vm_uid=f"u{n}", interface="eth1"))


async def projected(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval("SELECT coalesce(sum(events_offset), 0)::bigint FROM ipam_store.partitions"))


async def pipeline(cfg, seconds: float, max_inflight: int = 40000, ip: bool = False, show_samples: bool = False,
                   one_pool: bool = True) -> dict:
    """Produce lease commands as fast as the pipeline absorbs them; count committed events in Postgres
    (one per MAC lease; two per dual-stack IP lease command).  ``one_pool``: every MAC lease on the default
    pool, as most clusters run (one partition); else spread over the 16 pools."""
    pools = POOLS[:1] if one_pool else POOLS
    make = ip_command if ip else (lambda n, at: mac_command(n, at, pools))
    per_command = 2 if ip else 1
    producer = AIOKafkaProducer(bootstrap_servers=cfg.kafka_bootstrap, linger_ms=5, max_batch_size=512 * 1024,
                                enable_idempotence=False, acks="all")
    await producer.start()
    conn = await asyncpg.connect(cfg.database_url)
    base = await projected(conn)
    parts = {p: partition_for(p, cfg.partitions) for p in (NETWORKS if ip else POOLS)}
    sent = 0
    samples: list[tuple[float, int]] = []
    start = time.perf_counter()
    stop_at = start + seconds
    done = base
    next_poll = start
    try:
        while time.perf_counter() < stop_at:
            now = time.perf_counter()
            if now >= next_poll:
                done = await projected(conn)
                samples.append((now - start, done - base))
                next_poll = now + 0.25
            if sent - (done - base) // per_command > max_inflight:
                await asyncio.sleep(0.01)
                continue
            at = int(time.time() * 1000)
            futures = []
            for _ in range(2000):
                key, cmd = make(sent, at)
                futures.append(await producer.send(cfg.commands_topic, encoder.encode(cmd), key=key.encode(),
                                                   partition=parts[key]))
                sent += 1
            await asyncio.gather(*futures)
        done = await projected(conn)
        samples.append((time.perf_counter() - start, done - base))
        # sustained rate: commits between the 20% and 100% marks of the window (skip warm-up)
        warm = [s for s in samples if s[0] >= seconds * 0.2]
        if show_samples:  # the commit timeline: (seconds, committed) every 0.25 s
            print(json.dumps({"scenario": f"{'ip-' if ip else ''}pipeline-samples",
                              "samples": [[round(t, 2), n] for t, n in samples]}), file=sys.stderr)
        rate = (warm[-1][1] - warm[0][1]) / (warm[-1][0] - warm[0][0]) if len(warm) > 1 else 0.0
        # drain: everything sent must be committed
        drain_start = time.perf_counter()
        while done - base < sent * per_command and time.perf_counter() - drain_start < 120:
            await asyncio.sleep(0.1)
            done = await projected(conn)
        if ip:
            leases = await conn.fetchval("SELECT count(*) FROM ipam_store.ip_leases WHERE namespace = 'bench'")
            distinct = await conn.fetchval("SELECT count(DISTINCT (network, address)) FROM ipam_store.ip_leases "
                                           "WHERE namespace = 'bench'")
        else:
            leases = await conn.fetchval("SELECT count(*) FROM ipam_store.mac_leases")
            distinct = await conn.fetchval("SELECT count(DISTINCT mac) FROM ipam_store.mac_leases")
    finally:
        await producer.stop()
        await conn.close()
    if ip:
        return {"scenario": "ip-pipeline", "seconds": seconds, "leases_per_s": round(rate), "commands_per_s": round(rate / 2),
                "sent_commands": sent, "committed_leases": done - base, "leases": done - base, "live_leases": leases,
                "distinct_addresses": distinct, "networks": len(NETWORKS), "partitions": cfg.partitions, "leases_per_command": 2}
    return {"scenario": "pipeline" if one_pool else "pipeline-16-pools", "seconds": seconds, "leases_per_s": round(rate),
            "sent": sent, "committed": done - base, "leases": done - base, "live_leases": leases, "distinct_macs": distinct,
            "pools": len(pools), "partitions": cfg.partitions}


async def baseline(dsn: str, seconds: float, concurrency: int = 16) -> dict:
    """One transaction per lease: lock the pool row, take its next address, insert the lease."""
    pool = await asyncpg.create_pool(dsn, min_size=concurrency, max_size=concurrency)
    async with pool.acquire() as c:
        await c.execute("""DROP SCHEMA IF EXISTS bench_baseline CASCADE; CREATE SCHEMA bench_baseline;
            CREATE TABLE bench_baseline.pools (name text PRIMARY KEY, next_mac bigint NOT NULL, last_mac bigint NOT NULL);
            CREATE TABLE bench_baseline.leases (mac bigint PRIMARY KEY, pool text NOT NULL REFERENCES bench_baseline.pools,
                namespace text NOT NULL, vm text NOT NULL, vm_uid text NOT NULL, interface text NOT NULL,
                since timestamptz NOT NULL DEFAULT now(), UNIQUE (pool, namespace, vm, vm_uid, interface));""")
        await c.executemany("INSERT INTO bench_baseline.pools VALUES ($1, $2, $3)",
                            [(p, int(f"0a{i:02x}00000000", 16), int(f"0a{i:02x}ffffffff", 16)) for i, p in enumerate(POOLS)])
    count = 0
    stop_at = time.perf_counter() + seconds

    async def worker(w: int) -> None:
        nonlocal count
        i = w
        async with pool.acquire() as c:
            take = await c.prepare("SELECT next_mac, last_mac FROM bench_baseline.pools WHERE name = $1 FOR UPDATE")
            insert = await c.prepare("INSERT INTO bench_baseline.leases (mac, pool, namespace, vm, vm_uid, interface) "
                                     "VALUES ($1, $2, 'bench', $3, $4, 'eth0')")
            bump = await c.prepare("UPDATE bench_baseline.pools SET next_mac = next_mac + 1 WHERE name = $1")
            while time.perf_counter() < stop_at:
                p = POOLS[i % len(POOLS)]
                async with c.transaction():
                    row = await take.fetchrow(p)
                    await insert.fetch(row["next_mac"], p, f"vm-{i}", f"u{i}")
                    await bump.fetch(p)
                count += 1
                i += concurrency

    start = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    elapsed = time.perf_counter() - start
    await pool.close()
    return {"scenario": "baseline", "seconds": seconds, "leases_per_s": round(count / elapsed), "concurrency": concurrency,
            "leases": count, "how": "one transaction per lease: SELECT pool FOR UPDATE, INSERT lease, UPDATE pool"}
