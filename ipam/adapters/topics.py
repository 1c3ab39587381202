"""Kafka topic administration: creating ipam's topics (partitions and replication as configured, or the
broker's defaults), creating them again after a broker lost them, deleting records below a position
(retention on Apache Kafka), and which topics are missing.  Apart from ``kafka.py`` (clients, partitioning,
reading), which the roles use on every record.
"""

from __future__ import annotations

import asyncio

import structlog
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic, RecordsToDelete
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError

from ..config import Config
from .kafka import connection_options

log = structlog.get_logger("ipam.kafka")

TOPIC_EXISTS = 36


class TopicError(RuntimeError):
    """The topics exist with another partition count, or cannot be created."""


class _Admin:
    """An admin client for the length of a ``with`` block."""

    def __init__(self, cfg: Config) -> None:
        self.client = AIOKafkaAdminClient(**connection_options(cfg))

    async def __aenter__(self) -> AIOKafkaAdminClient:
        await self.client.start()
        return self.client

    async def __aexit__(self, *exc) -> None:
        await self.client.close()


async def _replication(cfg: Config, admin: AIOKafkaAdminClient) -> int:
    """IPAM_KAFKA_REPLICATION, or for -1 the broker's ``default.replication.factor``, read from the broker:
    aiokafka's NewTopic refuses -1 (it takes it for "replicas assigned by hand"), so we ask instead."""
    if cfg.kafka_replication > 0:
        return cfg.kafka_replication
    try:
        brokers = (await admin.describe_cluster())["brokers"]
        resource = ConfigResource(ConfigResourceType.BROKER, str(brokers[0]["node_id"]), {"default.replication.factor": None})
        for response in await admin.describe_configs([resource]):
            for _, _, _, _, entries in response.resources:
                for entry in entries:
                    if entry[0] == "default.replication.factor":
                        return max(1, min(int(entry[1]), len(brokers)))
    except (KafkaError, LookupError, ValueError, TypeError) as e:  # the local broker answers no broker configs
        log.info("broker default replication unknown: one replica", error=repr(e))
    return 1


def new_topic(cfg: Config, name: str, replication: int) -> NewTopic:
    """A topic as the deployment sets it: IPAM_PARTITIONS, the replication, IPAM_KAFKA_MIN_INSYNC_REPLICAS
    (0: the broker's)."""
    configs = {"min.insync.replicas": str(cfg.kafka_min_insync_replicas)} if cfg.kafka_min_insync_replicas else {}
    return NewTopic(name, cfg.partitions, replication, topic_configs=configs)


async def ensure_topics(cfg: Config) -> None:
    """Create the commands, events and dead-letter topics with the configured partition count."""
    wanted = [cfg.commands_topic, cfg.events_topic, cfg.dead_letter_topic]
    async with _Admin(cfg) as admin:
        replication = await _replication(cfg, admin)
        resp = await admin.create_topics([new_topic(cfg, t, replication) for t in wanted])
        for topic, code, message in resp.topic_errors:
            if code not in (0, TOPIC_EXISTS):
                raise TopicError(f"cannot create topic {topic}: error {code} {message}")
        for desc in await _described(admin, wanted):
            if len(desc["partitions"]) != cfg.partitions:
                raise TopicError(f"topic {desc['topic']} has {len(desc['partitions'])} partitions but "
                                 f"IPAM_PARTITIONS={cfg.partitions}")


async def _described(admin: AIOKafkaAdminClient, topics: list[str], wait: float = 15.0) -> list[dict]:
    """The topics' descriptions once every one lists its partitions: on a cluster, a topic another process
    has just created is described with none (or unknown) until its metadata reaches the broker asked."""
    deadline = asyncio.get_running_loop().time() + wait
    while True:
        described = await admin.describe_topics(topics)
        settled = all(d["partitions"] and not d.get("error_code") for d in described)
        if settled or asyncio.get_running_loop().time() >= deadline:
            return described
        await asyncio.sleep(0.2)


RECREATE_ATTEMPTS = 20  # each a delete and a create a few milliseconds apart: a client asking every 5 ms broke about 1 in 6


async def recreate_topics(cfg: Config, topics: list[str]) -> None:
    """Delete the topics and create them again, empty, with the same partition count: the only way to
    trim the local broker's logs (it refuses DeleteRecords and keeps every record in memory).

    The local broker creates a topic it does not have when any client asks for its metadata, with 4
    partitions of its own choosing; a client that asked between the delete and the create left a commands
    topic of 4 partitions that the create then met as "exists".  Half the partitions were gone: every
    command keyed to them failed, every drain after it too, and a soak collapsed from its fifth minute
    (docs/performance.md).  So each topic is described after the create, and one with another partition
    count is deleted and created again (nothing can be in it: commands are held while the log is trimmed)."""
    async with _Admin(cfg) as admin:
        replication = await _replication(cfg, admin)
        wrong = list(topics)
        for attempt in range(RECREATE_ATTEMPTS):
            resp = await admin.delete_topics(wrong)
            for topic, code in resp.topic_error_codes:
                if code != 0:
                    raise TopicError(f"cannot delete topic {topic}: error {code}")
            resp = await admin.create_topics([new_topic(cfg, t, replication) for t in wrong])
            for topic, code, message in resp.topic_errors:
                if code not in (0, TOPIC_EXISTS):  # exists: made by the watchdog, or by a client's metadata request
                    raise TopicError(f"cannot create topic {topic} again: error {code} {message}")
            counts = {d["topic"]: len(d["partitions"]) for d in await _described(admin, wrong)}
            wrong = [t for t in wrong if counts.get(t) != cfg.partitions]
            if not wrong:
                return
            log.warning("a topic came back with other partitions than IPAM_PARTITIONS; making it again",
                        topics={t: counts.get(t) for t in wrong}, partitions=cfg.partitions, attempt=attempt + 1)
    raise TopicError(f"topics {wrong} keep coming back without IPAM_PARTITIONS={cfg.partitions} partitions "
                     f"after {RECREATE_ATTEMPTS} attempts (created by clients' metadata requests in between)")


async def delete_records_before(cfg: Config, topic: str, before: dict[int, int]) -> dict[int, int]:
    """Apache Kafka's DeleteRecords: drop each partition's records below ``before[partition]``; returns each
    partition's new log start (low watermark).  The local broker refuses it (it trims by swapping topics)."""
    try:
        async with _Admin(cfg) as admin:
            marks = await admin.delete_records({TopicPartition(topic, p): RecordsToDelete(o) for p, o in before.items()})
    except KafkaError as e:
        raise TopicError(f"cannot delete records of {topic}: {e!r}") from e
    return {tp.partition: low for tp, low in marks.items()}


async def missing_topics(cfg: Config) -> list[str]:
    async with _Admin(cfg) as admin:
        present = set(await admin.list_topics())
    return [t for t in (cfg.commands_topic, cfg.events_topic, cfg.dead_letter_topic) if t not in present]
