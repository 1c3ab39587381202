"""Kafka: partitioning, client construction, producing in batches, and reading single records (topic
administration: ``topics.py``).

On Apache Kafka the producer is idempotent with acks=all, so a retried produce is never written twice
in a partition; the local broker (Tansu) has no idempotent producer, and ``ipam serve`` turns it off
there.  Either way exactly-once comes from Postgres: command ids dedupe, sequences fence writers.
"""

from __future__ import annotations

import asyncio
import functools
from pathlib import Path

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.helpers import create_ssl_context
from aiokafka.partitioner import murmur2

from .. import telemetry
from ..config import Config

log = structlog.get_logger("ipam.kafka")


@functools.lru_cache(maxsize=65536)
def partition_for(key: str, partitions: int) -> int:
    """Kafka's default partitioner (murmur2, positive), so Java clients agree with us.

    Cached: it runs for every command, keys are pool names, and murmur2 is pure Python."""
    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions


@functools.lru_cache(maxsize=8)
def connection_options(cfg: Config) -> dict:
    """Bootstrap servers and security settings, the same for every client (producer, consumer, admin).

    Made once per configuration: the SSL context and the password file are not read again for each
    client (a LogReader is made per partition takeover and per status call).  Callers copy, never mutate."""
    options: dict = {"bootstrap_servers": cfg.kafka_bootstrap, "security_protocol": cfg.kafka_security_protocol}
    if cfg.kafka_security_protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = create_ssl_context(cafile=cfg.kafka_ca_file or None, certfile=cfg.kafka_cert_file or None,
                                                    keyfile=cfg.kafka_key_file or None)
    if cfg.kafka_security_protocol.startswith("SASL_"):
        password = Path(cfg.kafka_sasl_password_file).read_text(encoding="utf-8").strip() if cfg.kafka_sasl_password_file else ""
        options |= {"sasl_mechanism": cfg.kafka_sasl_mechanism, "sasl_plain_username": cfg.kafka_sasl_username,
                    "sasl_plain_password": password}
    return options


# A produce to a leader cut off from its peers (it still answers clients) is never acknowledged by acks=all:
# it hangs for the whole request timeout, and aiokafka then sends it to the same leader again, because nothing
# told it otherwise.  So on Apache Kafka a produce gives up after 3 s (the others have fenced that leader by
# then: broker.session.timeout.ms) and the metadata is refreshed every second, as the consumers' is.  aiokafka
# asks a random broker for metadata and reads no leader epochs (KIP-320), so the cut-off one's stale answer
# can still win (it is one of the three asked), and a produce may go to it again.  ``make broker-partition``:
# longest unanswered 19.4 s with 15 s and the default metadata age, 11.6 s with 5 s, 9.9 s with 3 s
# (docs/performance.md).  The local broker keeps 15 s: it has
# no replicas to wait for, and a produce it is slow to answer is load, which resending would only add to.
PRODUCE_TIMEOUT_MS = 3000
LOCAL_PRODUCE_TIMEOUT_MS = 15000


def producer(cfg: Config, **overrides) -> AIOKafkaProducer:
    """acks=all and idempotent (a retried produce is written once), except on the local broker, which has no
    idempotent producer."""
    timeout = LOCAL_PRODUCE_TIMEOUT_MS if cfg.local_broker else PRODUCE_TIMEOUT_MS
    return AIOKafkaProducer(**{**connection_options(cfg), "acks": "all", "enable_idempotence": not cfg.local_broker,
                               "linger_ms": cfg.kafka_linger_ms, "max_batch_size": 256 * 1024, "request_timeout_ms": timeout,
                               "metadata_max_age_ms": 1000, **overrides})


def consumer(cfg: Config, group: str | None, **overrides) -> AIOKafkaConsumer:
    """No committed offsets: positions live in Postgres."""
    return AIOKafkaConsumer(**{**connection_options(cfg), "group_id": group, "enable_auto_commit": False,
                               "auto_offset_reset": "earliest", "fetch_max_wait_ms": cfg.fetch_wait_ms,
                               "max_partition_fetch_bytes": 4 * 1024 * 1024, "session_timeout_ms": 10000,
                               "heartbeat_interval_ms": 1000, "max_poll_interval_ms": 60000, "metadata_max_age_ms": 1000,
                               **overrides})


async def send_records(producer: AIOKafkaProducer, topic: str, partition: int,
                       records: list[tuple[bytes | None, bytes]]) -> list[asyncio.Future]:
    """Queue ``(key, value)`` records for one partition, in order, as few record batches as fit; the futures
    resolve when the broker has them.  ``send`` per record cost the allocator a coroutine, an accumulator
    append and, once a batch filled, a wait on its drain (``asyncio.wait``) for each event: 18 % of the
    service's CPU in the pipeline (docs/performance.md).  A record too big for a batch goes alone through
    ``send``, which refuses it as the broker would."""
    futures: list[asyncio.Future] = []
    batch = producer.create_batch()
    for key, value in records:
        if batch.append(key=key, value=value, timestamp=None) is not None:
            continue
        if batch.record_count():
            futures.append(await producer.send_batch(batch, topic, partition=partition))
            batch = producer.create_batch()
            if batch.append(key=key, value=value, timestamp=None) is not None:
                continue
        futures.append(await producer.send(topic, value, key=key, partition=partition))
    if batch.record_count():
        futures.append(await producer.send_batch(batch, topic, partition=partition))
    return futures


async def dead_letter(producer: AIOKafkaProducer, cfg: Config, source_topic: str, partition: int, offset: int,
                      raw: bytes, reason: str) -> None:
    """Copy a record that cannot be processed to the dead-letter topic, saying why."""
    headers = [("ipam-reason", reason[:1000].encode()), ("ipam-source-topic", source_topic.encode()),
               ("ipam-source-partition", str(partition).encode()), ("ipam-source-offset", str(offset).encode())]
    await producer.send(cfg.dead_letter_topic, raw, partition=partition % cfg.partitions, headers=headers)
    telemetry.dead_letters.labels(source_topic).inc()


class PartitionReader:
    """Reads the partitions of one topic this process is told to work, outside any consumer group.

    Who works on what is decided in Postgres (``roles.membership``); this only follows it.  The
    roles see partition numbers and records (``offset``, ``key``, ``value``), never aiokafka.
    Changing the assignment and fetching take turns (a lock), and a partition kept across a
    change keeps its position: aiokafka's ``assign`` would otherwise reset it."""

    def __init__(self, cfg: Config, topic: str, **overrides) -> None:
        self.topic = topic
        self._consumer = consumer(cfg, None, **overrides)
        self._lock = asyncio.Lock()
        self.partitions: set[int] = set()

    async def start(self, partitions: list[int] | None = None) -> None:
        await self._consumer.start()
        if partitions:
            await self.assign(set(partitions))

    async def stop(self) -> None:
        await self._consumer.stop()

    async def assign(self, partitions: set[int]) -> None:
        async with self._lock:
            kept = {p: await self._consumer.position(self._tp(p)) for p in self.partitions & partitions
                    if self._consumer.assignment() and self._has_position(p)}
            if partitions:
                self._consumer.assign([self._tp(p) for p in sorted(partitions)])
            else:
                self._consumer.unsubscribe()
            for p, offset in kept.items():
                self._consumer.seek(self._tp(p), offset)
            self.partitions = set(partitions)

    def _has_position(self, partition: int) -> bool:
        # aiokafka has no public "is this position known?"; position() would reset an unknown one
        state = self._consumer._subscription.subscription.assignment.state_value(self._tp(partition))
        return state is not None and state.has_valid_position

    async def fetch(self, max_records: int) -> dict[int, list]:
        """Records fetched since the last call, by partition (waits up to 100 ms for some)."""
        async with self._lock:
            batches = await self._consumer.getmany(timeout_ms=100, max_records=max_records) if self.partitions else None
        if batches is None:  # nothing assigned: aiokafka would not wait, so we do
            await asyncio.sleep(0.1)
            return {}
        return {tp.partition: msgs for tp, msgs in batches.items() if msgs}

    def seek(self, partition: int, offset: int) -> None:
        self._consumer.seek(self._tp(partition), offset)

    def record_lag(self, role: str, partition: int, position: int) -> None:
        """A batch fetched before its partition was lost is still worked (and dropped) by its role: aiokafka
        asserts on the high watermark of a partition no longer assigned, which failed the whole role."""
        if partition in self.partitions:
            telemetry.lag(role, self._consumer, self._tp(partition), position)

    def _tp(self, partition: int) -> TopicPartition:
        return TopicPartition(self.topic, partition)


class Unserved:
    """The broker lists an offset but no fetch returns it (seen on the local broker after restarts)."""

    def __repr__(self) -> str:
        return "UNSERVED"


UNSERVED = Unserved()


class CatchUpStalled(RuntimeError):
    """Reading a partition to its end made no progress: the broker says records exist that it does not serve."""

    def __init__(self, topic: str, partition: int, position: int, end: int, stall: float) -> None:
        super().__init__(f"{topic}[{partition}]: no records past {position} for {stall:.0f}s, broker says the log ends at {end}")
        self.partition, self.position, self.end = partition, position, end


class LogReader:
    """A group-less consumer used to read exact positions (catch-up, log-continuity checks)."""

    def __init__(self, cfg: Config) -> None:
        self._consumer = consumer(cfg, None, fetch_max_wait_ms=50)
        self._lock = asyncio.Lock()
        self._trust_end = not cfg.local_broker  # Apache Kafka's end offset is the high watermark, exact

    async def __aenter__(self) -> LogReader:
        await self._consumer.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self._consumer.stop()

    async def beginning(self, topic: str, partition: int) -> int:
        tp = TopicPartition(topic, partition)
        return (await self._consumer.beginning_offsets([tp]))[tp]

    async def end(self, topic: str, partition: int) -> int:
        tp = TopicPartition(topic, partition)
        return (await self._consumer.end_offsets([tp]))[tp]

    async def end_offsets(self, topics: list[str], partitions: int) -> dict[tuple[str, int], int]:
        """(topic, partition) -> end offset, for every partition of these topics."""
        ends = await self._consumer.end_offsets([TopicPartition(t, p) for t in topics for p in range(partitions)])
        return {(tp.topic, tp.partition): offset for tp, offset in ends.items()}

    async def record_at(self, topic: str, partition: int, offset: int, wait: float = 3.0) -> bytes | None | Unserved:
        """The value of the record at ``offset``; None when the log does not hold that offset (it
        was deleted, truncated or recreated shorter); ``UNSERVED`` when the broker lists the offset
        but returns nothing for it (no proof either way).

        The end offset is not an upper bound to trust: the local broker reports the first offset
        of the last batch as the end (268 of 300 multi-record batches in a probe), so the last
        record a projector consumed looked missing and every take after a batch declared a log
        reset.  So fetch first: a record at ``offset`` is the answer; a record past it, or one
        before it (the broker said out of range and the consumer went back to the earliest), means
        the offset is not there; the end offset only judges a fetch that returned nothing.  On Apache
        Kafka an offset at or past the end is known absent without a fetch."""
        tp = TopicPartition(topic, partition)
        async with self._lock:
            if offset < await self.beginning(topic, partition):
                return None
            if self._trust_end and offset >= await self.end(topic, partition):
                return None  # Apache Kafka: past the high watermark, certainly not there
            self._consumer.assign([tp])
            self._consumer.seek(tp, offset)
            deadline = asyncio.get_running_loop().time() + wait
            while asyncio.get_running_loop().time() < deadline:
                got = await self._consumer.getmany(tp, timeout_ms=200, max_records=1)
                for msg in got.get(tp, []):
                    return msg.value if msg.offset == offset else None
            return None if await self.end(topic, partition) <= offset else UNSERVED

    async def read_to_end(self, topic: str, partition: int, start: int, idle: float = 0.3, stall: float = 10.0):
        """Yield (offset, value) batches from ``start`` up to the end offset read when it began.

        On Apache Kafka the end offset is the high watermark (every record before it is committed and
        served), so reading stops there.  The local broker under-reports it after a multi-record batch:
        there we read until the end offset is reached *and* the log stayed quiet for ``idle`` seconds.  (Ending
        at the first empty fetch instead was tried: a seeded chaos run on the local broker then lost a
        confirmed lease, and a trim test stalled; the local broker keeps the quiet wait.)
        If the end offset is not reached and nothing arrives for ``stall`` seconds, raise rather than
        wait forever: the caller retries with a fresh consumer.
        """
        tp, clock = TopicPartition(topic, partition), asyncio.get_running_loop().time
        async with self._lock:
            self._consumer.assign([tp])
            self._consumer.seek(tp, start)
            end = (await self._consumer.end_offsets([tp]))[tp]
            position, quiet_since, progress_at = start, None, clock()
            while not (self._trust_end and position >= end):
                msgs = (await self._consumer.getmany(tp, timeout_ms=100, max_records=10000)).get(tp, [])
                if msgs:
                    quiet_since, progress_at, position = None, clock(), msgs[-1].offset + 1
                    yield [(m.offset, m.value) for m in msgs]
                elif position < end:
                    if clock() - progress_at > stall:
                        raise CatchUpStalled(topic, partition, position, end, stall)
                elif quiet_since is None:
                    quiet_since = clock()
                elif clock() - quiet_since >= idle:
                    return


async def nothing_at(cfg: Config, positions: dict[tuple[str, int], int], timeout: float = 1.0) -> bool | None:
    """Whether no partition holds a record at its position ((topic, partition) -> offset), or None when
    not every partition was answered within ``timeout``.

    Proof by fetching, not by end offsets (which the local broker under-reports): a partition
    counts as answered once a fetch response at its position came back (aiokafka then knows its
    highwater), and what that response held is returned by the ``getmany`` that follows.  A fresh
    consumer each time, so no response to an earlier question can pass for an answer."""
    tps = {TopicPartition(t, p): offset for (t, p), offset in positions.items()}
    clock = asyncio.get_running_loop().time
    reader = consumer(cfg, None, fetch_max_wait_ms=20)
    await reader.start()
    try:
        reader.assign(list(tps))
        for tp, offset in tps.items():
            reader.seek(tp, offset)
        deadline = clock() + timeout
        while True:
            answered = all(reader.highwater(tp) is not None for tp in tps)
            got = await reader.getmany(*tps, timeout_ms=0 if answered else 50)
            if any(got.values()):
                return False
            if answered:
                return True
            if clock() >= deadline:
                return None
    finally:
        await reader.stop()


async def topic_ends(cfg: Config) -> dict[tuple[str, int], int]:
    """End offsets of every partition of the commands and events topics; {} when the broker cannot say."""
    try:
        async with LogReader(cfg) as reader:
            return await asyncio.wait_for(reader.end_offsets([cfg.commands_topic, cfg.events_topic], cfg.partitions), 5)
    except (TimeoutError, KafkaError, OSError) as e:
        log.warning("cannot read end offsets", error=repr(e))
        return {}
