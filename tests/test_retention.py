"""On Apache Kafka the commands topic is kept short with DeleteRecords below what Postgres projected.

The local broker's way (swapping topics, test_log_trim.py) is refused there; this is Kafka's own: the log's
start moves up to the last command consumed, a restart resumes without declaring a log reset, and every
lease stays where it was.
"""

from __future__ import annotations

import asyncio

import pytest

from ipam.adapters import kafka
from ipam.adapters.postgres.codecs import connect
from ipam.service import Service

from .kinds import MAC, create_space, lease


@pytest.fixture
def apache_kafka(backends):
    if backends.broker is not None:
        pytest.skip("DeleteRecords is Apache Kafka's: the session runs on the local broker")


async def test_decided_commands_are_deleted_and_a_restart_resumes_past_them(apache_kafka, config, http):
    async with Service(config) as svc:
        await svc.wait_ready()
        assert svc.trimmer is None and svc.retention is not None
        await create_space(http, svc.url, MAC)
        first = await asyncio.gather(*(lease(http, svc.url, MAC, i) for i in range(60)))
        assert {s for s, _ in first} == {201}
        starts = await svc.retention.step()
        async with svc.db.acquire() as conn:
            decided = {r["partition"]: r["commands_offset"]
                       for r in await conn.fetch("SELECT partition, commands_offset FROM ipam_store.partitions")}
        busy = max(decided, key=decided.get)
        assert decided[busy] >= 60 and starts[busy] == decided[busy] - 1  # all but the last command consumed
        async with kafka.LogReader(config) as reader:
            assert await reader.beginning(config.commands_topic, busy) == decided[busy] - 1
    async with Service(config) as svc:  # a takeover past the deleted records: same generation, same leases
        await svc.wait_ready()
        again = await asyncio.gather(*(lease(http, svc.url, MAC, i) for i in range(60)))
        assert [MAC.addresses(b) for _, b in again] == [MAC.addresses(b) for _, b in first]
        more = await lease(http, svc.url, MAC, 61)
        assert more[0] == 201
    conn = await connect(config.database_url)
    try:
        assert await conn.fetchval("SELECT max(generation) FROM ipam_store.partitions") == 1
        assert await conn.fetchval("SELECT count(*) FROM ipam_store.ledger WHERE type = 'LogReset'") == 0
    finally:
        await conn.close()
