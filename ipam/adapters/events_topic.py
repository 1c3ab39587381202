"""Reading the events topic directly: no consumer group, nothing committed, with the same connection and
security settings as the service, so a reader sees exactly what consumers of the topic see.  ``ipam events
tail`` (``cli/tail.py``) is its user; how records are shown is the CLI's.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from ..config import Config
from .kafka import connection_options


async def _read(cfg: Config, last: int, follow: bool, emit: Callable[[int, int, dict], None],
               partitions: list[int] | None = None, idle: float = 1.0) -> int:
    """Emit the last ``last`` events of each partition (then everything new, with ``follow``)."""
    consumer = AIOKafkaConsumer(**connection_options(cfg), enable_auto_commit=False, group_id=None)
    await consumer.start()
    shown = 0
    try:
        chosen = partitions if partitions is not None else list(range(cfg.partitions))
        tps = [TopicPartition(cfg.events_topic, p) for p in chosen]
        consumer.assign(tps)
        begins, ends = await consumer.beginning_offsets(tps), await consumer.end_offsets(tps)
        for tp in tps:
            consumer.seek(tp, max(begins[tp], ends[tp] - last))
        quiet = 0.0
        while follow or quiet < idle:
            batches = await consumer.getmany(timeout_ms=200, max_records=1000)
            if not batches:
                quiet += 0.2
                if not follow and all(await _at_end(consumer, ends)):
                    break
                continue
            quiet = 0.0
            for tp, msgs in sorted(batches.items(), key=lambda kv: kv[0].partition):
                for msg in msgs:
                    try:
                        record = json.loads(msg.value)
                    except ValueError:
                        record = {"event": {"type": "undecodable"}}
                    emit(tp.partition, msg.offset, record)
                    shown += 1
    finally:
        await consumer.stop()
    return shown


async def _at_end(consumer: AIOKafkaConsumer, ends: dict) -> list[bool]:
    return [await consumer.position(tp) >= end for tp, end in ends.items()]


def read_events(cfg: Config, last: int, follow: bool, emit: Callable[[int, int, dict], None],
                partitions: list[int] | None = None) -> int:
    """Hand ``emit`` (partition, offset, record) the last ``last`` records of each partition, then what comes
    with ``follow`` (until Ctrl-C); how many were handed.  ``EventsTopicError`` when the topic cannot be read."""
    try:
        return asyncio.run(_read(cfg, last, follow, emit, partitions))
    except KeyboardInterrupt:
        return 0
    except KafkaError as e:
        raise EventsTopicError(str(e)) from e


class EventsTopicError(RuntimeError):
    """The topic could not be read (the broker is unreachable, the topic is missing)."""
