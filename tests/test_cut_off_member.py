"""A member cut off from Postgres stops working its partitions before another member may take them (issue 25).

The allocator under test runs in a network namespace of the test's own; Postgres and Apache Kafka listen on
host addresses of that namespace's veth pair.  Cut from Postgres (packets dropped both ways, or only those it
sends), it can still reach the broker, so it could go on deciding the commands it reads.  What must hold: it
gives its partitions up (its log says when) before the other allocator claims them (``epochs.claimed_at``);
nothing of its epoch is projected after its successor's first event; every lease asked for meanwhile is
answered 201 and held once; once the cut heals it takes its share back.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import shutil
import tempfile
import time
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from ipam.adapters.kafka import partition_for
from ipam.devenv import EmbeddedPostgres, free_port

from . import apache_kafka, netns
from .harness import ServiceProcess, create_database, eventually, make_config

PARTITIONS = 4
GIVEN_UP = "ownership leases expired while Postgres is out of reach; partitions given up"


def pools_per_partition() -> dict[int, str]:
    """A pool name on each partition (commands are keyed by pool)."""
    found: dict[int, str] = {}
    i = 0
    while len(found) < PARTITIONS:
        found.setdefault(partition_for(f"cut-{i}", PARTITIONS), f"cut-{i}")
        i += 1
    return found


async def holders(conn, group: str) -> dict[int, str]:
    rows = await conn.fetch('SELECT partition, member FROM ipam_store.partition_leases WHERE "group" = $1 '
                            "AND expires_at > now() AND ready_at IS NOT NULL", group)
    return {r["partition"]: r["member"] for r in rows}


def given_up_at(log_path: str) -> list[dt.datetime]:
    """When the allocator in the namespace logged that it gave its partitions up."""
    times = []
    for line in Path(log_path).read_text().splitlines():
        if GIVEN_UP in line and line.startswith("{"):
            times.append(dt.datetime.fromisoformat(json.loads(line)["timestamp"].replace("Z", "+00:00")))
    return times


class Load:
    """REST leases on every pool, one new VM each time, until stopped: what each answer was."""

    def __init__(self, url: str, pools: dict[int, str]) -> None:
        self.url, self.pools, self.answers, self.stopped = url, pools, [], asyncio.Event()

    async def run(self, http: aiohttp.ClientSession) -> None:
        n = 0
        while not self.stopped.is_set():
            batch = []
            for partition, pool in self.pools.items():
                body = {"namespace": pool, "vm": f"vm-{n}", "vm_uid": f"u-{n}", "interface": "eth0"}
                batch.append(self.one(http, partition, body))
                n += 1
            await asyncio.gather(*batch)
            await asyncio.sleep(0.05)

    async def one(self, http, partition: int, body: dict) -> None:
        started = time.monotonic()
        async with http.post(f"{self.url}/v1/mac-leases", json=body) as r:
            answer = await r.json()
        self.answers.append((partition, r.status, time.monotonic() - started, body, answer.get("lease", {}).get("mac")))


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("direction", ["both", "out"])
async def test_a_member_cut_off_from_postgres_stops_before_its_successor_starts(direction):
    reason = netns.unavailable() or apache_kafka.unavailable()
    if reason:
        pytest.skip(reason)
    folder = Path(tempfile.mkdtemp(prefix="ipam-cut-"))
    with netns.Namespace() as ns:
        pg = EmbeddedPostgres(folder / "pg", addr=f"{ns.host['postgres']}:{free_port()}", durable=False,
                            trust=(f"{ns.inside.rsplit('.', 1)[0]}.0/24",)).start()
        kafka = apache_kafka.KafkaCluster(1, host=ns.host["kafka"]).start()
        processes: list[ServiceProcess] = []
        try:
            dsn = await create_database(pg.dsn)
            cfg = make_config(kafka.bootstrap, dsn, partitions=PARTITIONS, **kafka.topic_settings)
            group = f"{cfg.group_prefix}-allocator"
            front = ServiceProcess(cfg, roles=("api", "projector")).start()
            cut_off = ServiceProcess(cfg, roles=("allocator",), wrapper=ns.run).start()
            processes += [front, cut_off]
            await front.wait_ready()
            await check_cut_off_member(cfg, dsn, group, ns, front, cut_off, processes, direction)
        finally:
            for p in processes:
                p.kill()
            kafka.destroy()
            pg.stop("immediate")
            shutil.rmtree(folder, ignore_errors=True)


async def check_cut_off_member(cfg, dsn, group, ns, front, cut_off, processes, direction) -> None:
    pools = pools_per_partition()
    conn = await asyncpg.connect(dsn)
    async with aiohttp.ClientSession() as http:
        for i, (_, pool) in enumerate(sorted(pools.items())):
            body = {"name": pool, "range": f"0a:{i:02x}:00:00:00:00-0a:{i:02x}:00:ff:ff:ff", "namespaces": [pool]}
            async with http.post(f"{front.url}/v1/pools", json=body) as r:
                assert r.status == 201, await r.text()
        mine = f"allocator-{cut_off.proc.pid}-"
        await eventually(lambda: _all_held_by(conn, group, mine), timeout=60)
        successor = ServiceProcess(cfg, roles=("allocator",)).start()
        processes.append(successor)
        theirs = f"allocator-{successor.proc.pid}-"
        await eventually(lambda: _split(conn, group, mine, theirs), timeout=60)
        cut_partitions = {p for p, m in (await holders(conn, group)).items() if mine in m}
        load = Load(front.url, pools)
        running = asyncio.create_task(load.run(http))
        await asyncio.sleep(1.0)
        ns.cut("postgres", direction)
        cut_at = dt.datetime.now(dt.UTC)
        await eventually(lambda: _all_held_by(conn, group, theirs), timeout=30)
        await asyncio.sleep(2.0)
        ns.heal()
        await eventually(lambda: _split(conn, group, mine, theirs), timeout=60)  # its share back once it beats
        await asyncio.sleep(1.0)
        load.stopped.set()
        await running
    try:
        await _check_ledger(conn, mine, theirs, cut_partitions, cut_at, cut_off.log_path)
        _check_answers(load.answers, cut_partitions)
        leased = {r["mac"]: (r["namespace"], r["vm"]) for r in await conn.fetch(
            "SELECT mac::text AS mac, namespace, vm FROM ipam_store.mac_leases")}
        for *_, body, mac in load.answers:  # every confirmed lease is held, by whom it was given to
            assert leased.get(mac) == (body["namespace"], body["vm"]), (mac, body)
        assert await conn.fetchval("SELECT count(*) = count(DISTINCT mac) FROM ipam_store.mac_leases")
    finally:
        await conn.close()


async def _all_held_by(conn, group: str, member: str) -> bool:
    held = await holders(conn, group)
    return len(held) == PARTITIONS and all(member in m for m in held.values())


async def _split(conn, group: str, a: str, b: str) -> bool:
    held = list((await holders(conn, group)).values())
    return len(held) == PARTITIONS and sum(a in m for m in held) == sum(b in m for m in held) == PARTITIONS // 2


async def _check_ledger(conn, mine: str, theirs: str, cut_partitions: set[int], cut_at, log_path: str) -> None:
    """It stopped before its successor claimed its partitions, and nothing of its epoch counts after that."""
    stopped = [t for t in given_up_at(log_path) if t >= cut_at]
    assert stopped, f"the cut-off allocator never said it gave its partitions up (log: {log_path})"
    for partition in sorted(cut_partitions):
        claims = await conn.fetch("SELECT epoch, owner, claimed_at FROM ipam_store.epochs WHERE partition = $1 "
                                  "ORDER BY epoch", partition)
        old = [c for c in claims if mine in c["owner"] and c["claimed_at"] < cut_at][-1]
        new = next(c for c in claims if theirs in c["owner"] and c["claimed_at"] > cut_at)
        assert stopped[0] < new["claimed_at"], (partition, stopped[0], new["claimed_at"])
        first_new = await conn.fetchval('SELECT min("offset") FROM ipam_store.ledger WHERE partition = $1 AND epoch = $2',
                                        partition, new["epoch"])
        late = await conn.fetchval('SELECT count(*) FROM ipam_store.ledger WHERE partition = $1 AND epoch = $2 '
                                   'AND "offset" > $3', partition, old["epoch"], first_new)
        assert first_new is not None and late == 0, (partition, late)


def _check_answers(answers: list, cut_partitions: set[int]) -> None:
    assert answers and all(status == 201 for _, status, _, _, _ in answers), \
        [(p, s) for p, s, _, _, _ in answers if s != 201][:10]
    assert any(p in cut_partitions for p, *_ in answers)
    assert max(took for *_, took, _, _ in answers) < 10  # within the REST deadline, through the hand-over
