"""A role that raises inside its loop recovers inside the process, from Postgres, without calling it a log reset.

Before the fix, every take after a multi-record batch declared a log reset: the local broker
reports the first offset of the last batch as the log's end, so the last record the projector
consumed looked gone.  The new generation restarted the events log at 0 and replayed it; under
kills it broke the projection (a unique violation in a loop, a partition stuck).
"""

from __future__ import annotations

import asyncio

from ipam import failpoints
from ipam.adapters import kafka, topics
from ipam.adapters.postgres.codecs import connect
from ipam.adapters.postgres.rebuild import rebuild
from ipam.service import Service

from .kinds import KINDS, create_space, lease_until_answered


@KINDS
async def test_raising_roles_recover_without_a_log_reset(config, http, kind, monkeypatch):
    async with Service(config) as svc:
        await svc.wait_ready()
        await create_space(http, svc.url, kind)
        monkeypatch.setattr(failpoints, "_POINTS", {"allocator.raise_before_produce": 0.1, "projector.raise_mid_batch": 0.1})
        monkeypatch.setattr(failpoints, "raised", {})
        answers, waves = [], 0
        # small waves, many batches: until each loop has raised twice (and 120 leases at least)
        while waves < 10 or min(failpoints.raised.get(p, 0) for p in failpoints._POINTS) < 2:
            start = 12 * waves
            answers += await asyncio.gather(*(lease_until_answered(http, svc.url, kind, i, "recover")
                                              for i in range(start, start + 12)))
            waves += 1
            assert waves < 60, failpoints.raised
        monkeypatch.setattr(failpoints, "_POINTS", {})
        assert all(status == 201 for status, _ in answers), [a for a in answers if a[0] != 201][:3]
        every = [a for _, body in answers for a in kind.addresses(body)]
        assert len(every) == len(set(every)) == 12 * waves * kind.per_lease
        again = await asyncio.gather(*(lease_until_answered(http, svc.url, kind, i, "recover") for i in range(12 * waves)))
        assert [kind.addresses(b) for _, b in again] == [kind.addresses(b) for _, b in answers]
    conn = await connect(config.database_url)
    try:
        # the allocator took partitions again after its raises (a new epoch each time) ...
        assert await conn.fetchval("SELECT count(*) FROM ipam_store.epochs") > config.partitions
        # ... and nobody mistook a recovery for a lost log
        assert await conn.fetchval("SELECT max(generation) FROM ipam_store.partitions") == 1
        report = await rebuild(conn)
        assert report.equal, report.differences
    finally:
        await conn.close()


async def test_the_last_record_of_a_multi_record_batch_is_found_whatever_the_end_offset_says(config):
    """The adapter-level cause: ``record_at`` must find the last record of a batch.  On the local broker the
    end offset lands at the batch's first offset (the probe behind the fix); on Kafka it is exact."""
    await topics.ensure_topics(config)
    producer = kafka.producer(config, linger_ms=20)
    await producer.start()
    try:
        sent = [await producer.send(config.events_topic, f"r{i}".encode(), partition=0) for i in range(6)]
        offsets = [(await s).offset for s in sent]  # one batch: six records sent within the linger
    finally:
        await producer.stop()
    async with kafka.LogReader(config) as reader:
        end = await reader.end(config.events_topic, 0)
        assert await reader.record_at(config.events_topic, 0, offsets[-1]) == b"r5", f"end offset reported: {end}"
        assert await reader.record_at(config.events_topic, 0, offsets[-1] + 1, wait=0.5) is None
