"""Stepping over events the broker lists but never serves (seen on the local broker after a restart).

The broker misbehaviour itself cannot be provoked on demand, so the test builds the state it
leaves behind: records in the events log that nothing projected, and a catch-up that stalled
on them.  What we own is checked for real: the new generation, its ledger note, that the
continuity check accepts it, and that a service started on it projects past the skipped range.
"""

from __future__ import annotations

import asyncio

import asyncpg

from ipam.adapters import kafka, topics
from ipam.adapters.postgres.codecs import connect
from ipam.adapters.postgres.migrations import migrate
from ipam.adapters.postgres.ownership import read_partition
from ipam.roles.continuity import ensure_continuity, skip_unserved
from ipam.service import Service

from .kinds import MAC, create_space, lease


async def test_a_stalled_range_becomes_a_new_generation_and_the_service_moves_past_it(config, http):
    await migrate(config.database_url)
    await topics.ensure_topics(config)
    pool_partition = kafka.partition_for("p", config.partitions)
    tp = (config.events_topic, pool_partition)
    producer = kafka.producer(config)
    await producer.start()
    try:
        for _ in range(3):
            await producer.send_and_wait(config.events_topic, b'{"not": "served"}', partition=pool_partition)
    finally:
        await producer.stop()

    conn = await connect(config.database_url)
    try:
        async with kafka.LogReader(config) as reader:
            seen = await read_partition(conn, pool_partition)
            assert seen.events_offset == 0
            end = await reader.end(*tp)
            assert end == 3
            # A stall that the broker's end offset no longer supports is not skipped.
            assert not await skip_unserved(conn, reader, config, seen, kafka.CatchUpStalled(*tp, 3, 3, 10))
            assert await skip_unserved(conn, reader, config, seen, kafka.CatchUpStalled(*tp, 0, end, 10))
            # Compare-and-set: a second caller holding the old row does nothing.
            assert not await skip_unserved(conn, reader, config, seen, kafka.CatchUpStalled(*tp, 0, end, 10))
            row = await ensure_continuity(conn, reader, config, pool_partition)
        assert (row.generation, row.events_offset, row.last_epoch) == (seen.generation + 1, 3, None)
        reason = await conn.fetchval(
            "SELECT body->>'reason' FROM ipam_store.ledger WHERE type = 'LogReset' AND partition = $1", pool_partition)
        assert reason == "events log lists offsets 0..2 but does not serve them"
    finally:
        await conn.close()

    async with Service(config) as svc:
        await svc.wait_ready()
        await create_space(http, svc.url, MAC, "p")
        statuses = [s for s, _ in await asyncio.gather(*[lease(http, svc.url, MAC, i, "p") for i in range(10)])]
        assert statuses == [201] * 10
    db = await asyncpg.connect(config.database_url)
    try:
        # the skipped records were never projected (no poison notes for them), later ones were
        notes = await db.fetchval(
            "SELECT count(*) FROM ipam_store.ledger WHERE partition = $1 AND generation = $2 AND \"offset\" < 3",
            pool_partition, seen.generation + 1)
        assert notes == 0
        offset = await db.fetchval("SELECT events_offset FROM ipam_store.partitions WHERE partition = $1", pool_partition)
        assert offset >= 3 + 10
        assert await db.fetchval("SELECT count(*) FROM ipam.mac_leases") == 10
    finally:
        await db.close()
