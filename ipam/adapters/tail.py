"""``ipam events tail``: the events topic as people read it (one line per event) or as JSON lines.

Reads the topic directly (no consumer group, nothing committed), with the same connection and
security settings as the service, so it shows exactly what consumers of the topic see.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from ..config import Config
from .kafka import connection_options

# fields worth a glance, in the order they are shown; everything is in --json
_SHOWN = ("pool", "network", "mac", "address", "addresses", "code", "reason", "kind", "name")


def describe(partition: int, offset: int, record: dict) -> str:
    """One line: when, where, what, which owner, the fields that matter."""
    event = record.get("event", {})
    at = dt.datetime.fromtimestamp(event.get("at", 0) / 1000, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    owner = event.get("owner") or {}
    who = "/".join(owner[k] for k in ("namespace", "vm", "interface") if owner.get(k))
    details = [f"{k}={event[k]}" for k in _SHOWN if event.get(k) not in (None, "", [], ())]
    if who:
        details.insert(0, f"owner={who}")
    where = f"p{partition}@{offset} e{record.get('epoch')}#{record.get('seq')}"
    return f"{at}  {where:<18} {event.get('type', '?'):<18} {' '.join(details)}  [{event.get('command_id', '')}]"


async def tail(cfg: Config, last: int, follow: bool, emit: Callable[[int, int, dict], None],
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


def run(cfg: Config, last: int, follow: bool, as_json: bool, partitions: list[int] | None,
        write: Callable[[str], None]) -> int:
    def emit(partition: int, offset: int, record: dict) -> None:
        if as_json:
            write(json.dumps({"partition": partition, "offset": offset, **record}))
        else:
            write(describe(partition, offset, record))

    try:
        return asyncio.run(tail(cfg, last, follow, emit, partitions))
    except KeyboardInterrupt:
        return 0
    except KafkaError as e:
        raise TailError(str(e)) from e


class TailError(RuntimeError):
    """The topic could not be read (the broker is unreachable, the topic is missing)."""
