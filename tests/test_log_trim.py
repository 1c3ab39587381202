"""The local broker's log is trimmed under load, and nothing is lost or handed out twice.

The trimmer holds new commands back, waits until everything produced was decided and projected,
swaps both topics for empty ones and starts a new log generation (ipam/devenv/log_trim.py).  These
tests run it with a low threshold on the real local broker and Postgres while requests keep coming.
"""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from ipam.adapters import kafka, topics
from ipam.adapters.postgres.codecs import connect
from ipam.adapters.postgres.rebuild import rebuild
from ipam.config import Config, ConfigError
from ipam.service import Service

from .harness import make_config
from .kinds import KINDS, create_space, lease, lease_until_answered

THRESHOLD = 60  # records in one partition; the waves below cross it several times


@KINDS
async def test_trimming_under_load_keeps_every_answer_and_lease(local_broker, database, http, kind):
    config = make_config(local_broker.bootstrap, database, log_trim_records=THRESHOLD)
    async with Service(config) as svc:
        await svc.wait_ready()
        await create_space(http, svc.url, kind)
        answers = []
        for wave in range(25):  # 25 waves of 16 concurrent leases, one pool: one partition takes them all
            answers += await asyncio.gather(*(lease_until_answered(http, svc.url, kind, 16 * wave + i, "trim")
                                              for i in range(16)))
            await asyncio.sleep(0.15)  # the trimmer looks once a second: spread the waves over a few seconds
        assert [s for s, _ in answers] == [201] * len(answers), [a for a in answers if a[0] != 201][:3]
        every = [a for _, body in answers for a in kind.addresses(body)]
        assert len(every) == len(set(every)) == 400 * kind.per_lease
        assert svc.trimmer.trims >= 2
        positions = [o.position for o in svc.allocator.owned.values()]
        assert max(positions) < 400, positions  # the 400 leases' commands are no longer all in the log
        again = await asyncio.gather(*(lease(http, svc.url, kind, i) for i in range(400)))  # sticky across trims
        assert [kind.addresses(b) for _, b in again] == [kind.addresses(b) for _, b in answers]
        trims = svc.trimmer.trims
    conn = await connect(database)
    try:
        assert await conn.fetchval("SELECT max(generation) FROM ipam_store.partitions") == 1 + trims
        reasons = await conn.fetch("SELECT DISTINCT body->>'reason' AS reason FROM ipam_store.ledger WHERE type = 'LogReset'")
        assert [r["reason"] for r in reasons] == [f"local broker log trimmed: every record was projected "
                                                 f"(IPAM_LOG_TRIM_RECORDS={THRESHOLD})"]
        report = await rebuild(conn)
        assert report.equal, report.differences
    finally:
        await conn.close()


async def test_trimming_is_refused_without_every_role_in_the_process(local_broker, database):
    cfg = make_config(local_broker.bootstrap, database, log_trim_records=100)
    with pytest.raises(ConfigError, match="IPAM_LOG_TRIM_RECORDS=100 needs the api, allocator and projector"):
        async with Service(cfg, {"api", "projector"}):
            pass


def test_trimming_is_refused_on_apache_kafka():
    """Swapping topics is the local broker's workaround: on Apache Kafka, deletion is asynchronous and a topic
    created again while the old one is being deleted could take writes that vanish."""
    with pytest.raises(ConfigError, match="IPAM_LOG_TRIM_RECORDS=100: only for the local broker"):
        Config.from_env(env={"IPAM_KAFKA_BOOTSTRAP": "kafka:9092", "IPAM_LOG_TRIM_RECORDS": "100"})
    assert Config.from_env(env={"IPAM_KAFKA_BOOTSTRAP": "k:9092", "IPAM_KAFKA_BROKER": "local",
                                "IPAM_LOG_TRIM_RECORDS": "100"}).log_trim_records == 100


async def test_trimming_is_refused_on_a_broker_ipam_did_not_start(backends, database):
    """Declaring a broker local (IPAM_KAFKA_BROKER=local) is not enough: the service swaps topics only on a local
    broker that ipam started on this machine.  Here the suite's own broker, which ipam's launcher did not start
    at that address, is refused before any role runs."""
    from ipam.devenv import started_here

    if started_here(backends.kafka_bootstrap):
        pytest.skip("the suite's broker is a local broker ipam started: nothing here is refused")
    cfg = make_config(backends.kafka_bootstrap, database, log_trim_records=100, kafka_broker="local")
    with pytest.raises(ConfigError, match=f"IPAM_LOG_TRIM_RECORDS=100: {backends.kafka_bootstrap} is not a local broker ipam"):
        async with Service(cfg):
            pass


def test_a_local_broker_ipam_started_is_known_as_one(local_broker):
    from ipam.devenv import started_here

    assert started_here(local_broker.bootstrap)
    host, port = local_broker.bootstrap.rsplit(":", 1)
    assert not started_here(f"{host}:{int(port) + 1}")  # nothing of ours there


async def test_nothing_at_sees_the_last_record_of_a_batch_whatever_the_end_offset_says(config):
    """The drain check must not trust end offsets: the local broker reports a batch's first offset as the end."""
    await topics.ensure_topics(config)
    producer = kafka.producer(config, linger_ms=20)
    await producer.start()
    try:
        sent = [await producer.send(config.events_topic, f"r{i}".encode(), partition=1) for i in range(6)]
        last = [(await s).offset for s in sent][-1]  # one batch: six records sent within the linger
    finally:
        await producer.stop()
    topic = config.events_topic
    assert await kafka.nothing_at(config, {(topic, 1): last, (topic, 0): 0}) is False
    assert await kafka.nothing_at(config, {(topic, 1): last + 1, (topic, 0): 0}) is True


async def test_a_trim_waits_for_commands_already_in_the_log(local_broker, database, http):
    """Commands in the log that the allocator has not decided yet (here produced straight to the topic, in
    multi-record batches) are decided and projected before the topics are swapped: none is lost."""
    from bench.throughput import mac_command  # the bench's own way of producing commands past the API

    config = make_config(local_broker.bootstrap, database, log_trim_records=50, partitions=2)
    async with Service(config) as svc:
        await svc.wait_ready()
        async with http.post(svc.url + "/v1/pools", json={"name": "bench-00", "range": "0a:00:00:00:00:00-0a:00:00:00:ff:ff",
                                                           "default": True}) as r:
            assert r.status == 201, await r.text()
        svc.trimmer._not_before = float("inf")  # no trim while we produce: the trimmer holds back only its own API
        producer = kafka.producer(config, linger_ms=5)
        await producer.start()
        try:
            commands = [mac_command(16 * n, 0) for n in range(400)]  # n % 16 == 0: all on pool bench-00
            sent = [await producer.send(config.commands_topic, msgspec.json.encode(cmd), key=pool.encode(),
                                        partition=kafka.partition_for(pool, config.partitions)) for pool, cmd in commands]
            await asyncio.gather(*sent)
        finally:
            await producer.stop()
        while max(svc.allocator.read_to().values(), default=0) < 50:
            await asyncio.sleep(0.001)
        svc.trimmer.drain_seconds = 0.001  # too short to prove anything: the drain fails, the topics stay
        svc.trimmer._not_before = 0.0
        assert not await svc.trimmer.step() and svc.trimmer.trims == 0
        assert svc.trimmer.drain_seconds == 0.002  # and the next drain may hold new commands twice as long
        svc.trimmer.drain_seconds = 0.5
        for _ in range(3000):  # as soon as the allocator has read past the threshold, long before it has decided all
            svc.trimmer._not_before = 0.0  # a drain that did not finish in time backs off; here, try again at once
            if await svc.trimmer.step() or svc.trimmer.trims:
                break
            await asyncio.sleep(0.001)
        assert svc.trimmer.trims == 1
        async with svc.db.acquire() as conn:
            held = await conn.fetchval("SELECT count(*) FROM ipam.mac_leases WHERE namespace = 'bench'")
        assert held == 400


async def test_topics_made_again_keep_their_partitions_while_clients_ask_for_metadata(local_broker, database):
    """The local broker makes a topic of 4 partitions for any metadata request that names a topic it lacks: a
    client asking between the delete and the create of a trim left half the commands topic's partitions gone
    (a soak collapsed from its fifth minute).  Here a client asks every 5 ms (without the check, about one
    trim in six broke); every topic made again still has IPAM_PARTITIONS partitions."""
    from aiokafka.admin import AIOKafkaAdminClient

    cfg = make_config(local_broker.bootstrap, database, partitions=8, kafka_broker="local")
    names = [cfg.commands_topic, cfg.events_topic]
    await topics.ensure_topics(cfg)
    asking = AIOKafkaAdminClient(bootstrap_servers=cfg.kafka_bootstrap)
    await asking.start()
    stop = asyncio.Event()

    async def ask() -> None:
        while not stop.is_set():
            await asking.describe_topics(names)  # a metadata request naming both topics, every 5 ms
            await asyncio.sleep(0.005)

    try:
        asker = asyncio.create_task(ask())
        for _ in range(30):
            await topics.recreate_topics(cfg, names)
            described = await asking.describe_topics(names)
            assert {d["topic"]: len(d["partitions"]) for d in described} == dict.fromkeys(names, 8)
        stop.set()
        await asker
    finally:
        stop.set()
        await asking.close()
