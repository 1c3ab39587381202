"""Detect that the broker lost or rewrote a topic, and start a new log generation.

Postgres remembers the identity of the last record it consumed from each partition
(events: a hash of the record's bytes; commands: the command id).  If the broker no longer holds that
offset, or holds a different record there, the log was deleted, recreated or truncated: we log one
warning, record a new generation and continue from the new log's start with Postgres as truth.
An offset the broker lists but does not serve proves nothing and is not taken for a reset.
"""

from __future__ import annotations

import msgspec
import structlog

from ..adapters.kafka import UNSERVED, CatchUpStalled, LogReader, Unserved
from ..adapters.postgres.ownership import PartitionRow, read_partition, reset_log
from ..adapters.postgres.projection import record_hash
from ..config import Config
from ..domain.kinds import CommandId
from ..domain.topic_records import record_decoder

log = structlog.get_logger("ipam.continuity")


class _Id(msgspec.Struct):
    command_id: CommandId | None = None


def command_id_of(raw: bytes, partition: int, offset: int) -> str:
    """The command id of an undecodable command, when it is itself a valid id (so the caller
    waiting on it is answered); else ``undecodable:<partition>:<offset>``."""
    try:
        cid = msgspec.json.decode(raw, type=_Id).command_id
    except (msgspec.DecodeError, msgspec.ValidationError):
        cid = None
    return cid if cid and "\x00" not in cid else f"undecodable:{partition}:{offset}"


async def _deleted_by_retention(reader: LogReader, cfg: Config, topic: str, partition: int, offset: int) -> bool:
    """On Apache Kafka, the last record consumed (at ``offset``) may be gone while nothing after it is: the log
    starts right after it (retention took it, nothing newer).  Offsets go on from where they were, so that is
    no reset.  A log that starts further on lost records ipam never read: that is one, and is declared.  (A
    topic deleted and created again starts at 0, and would have to lose exactly its first ``offset`` records.)"""
    if cfg.local_broker:
        return False
    return await reader.beginning(topic, partition) == offset + 1


async def _events_intact(reader: LogReader, cfg: Config, row: PartitionRow) -> bool:
    if row.events_offset == 0:
        return True
    topic, partition = cfg.events_topic, row.partition
    if row.last_epoch is None and row.last_record_hash is None:
        # Nothing consumed yet in this generation, which began past offset 0 (an unserved
        # range was skipped): intact while the log still reaches that start.
        # (the end offset can lag the last batch on the local broker: a record just before the start also proves it)
        if await reader.beginning(topic, partition) > row.events_offset:
            return False
        return row.events_offset <= await reader.end(topic, partition) or \
            await reader.record_at(topic, partition, row.events_offset - 1) not in (None, UNSERVED)
    raw = await reader.record_at(topic, partition, row.events_offset - 1)
    if raw is None:
        return await _deleted_by_retention(reader, cfg, topic, partition, row.events_offset - 1)
    if isinstance(raw, Unserved):
        log.warning("the broker lists the last record ipam consumed but does not serve it; assuming the log is intact",
                    topic=topic, partition=partition, offset=row.events_offset - 1)
        return True
    if row.last_record_hash is not None:
        return record_hash(raw) == row.last_record_hash
    if row.last_epoch is None:
        return False
    try:
        rec = record_decoder.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return False
    return (rec.epoch, rec.seq) == (row.last_epoch, row.last_seq)


async def _commands_intact(reader: LogReader, cfg: Config, row: PartitionRow) -> bool:
    if row.commands_offset == 0 or row.last_command_id is None:
        return True
    offset = row.commands_offset - 1
    raw = await reader.record_at(cfg.commands_topic, row.partition, offset)
    if isinstance(raw, Unserved):
        return True  # no proof of a reset (see _events_intact)
    if raw is None:
        return await _deleted_by_retention(reader, cfg, cfg.commands_topic, row.partition, offset)
    return command_id_of(raw, row.partition, offset) == row.last_command_id


async def ensure_continuity(conn, reader: LogReader, cfg: Config, partition: int) -> PartitionRow:
    """Return the partition row, after starting a new generation if a log was reset.

    Both topics are checked whoever asks (allocator or projector), so one reset of the
    broker makes one new generation and one warning.
    """
    while True:
        row = await read_partition(conn, partition)
        events_ok = await _events_intact(reader, cfg, row)
        commands_ok = await _commands_intact(reader, cfg, row)
        if events_ok and commands_ok:
            return row
        events_start = None if events_ok else await reader.beginning(cfg.events_topic, partition)
        commands_start = None if commands_ok else await reader.beginning(cfg.commands_topic, partition)
        lost = [n for n, ok in (("events", events_ok), ("commands", commands_ok)) if not ok]
        new = await reset_log(
            conn, partition, row, events_start=events_start, commands_start=commands_start,
            reason=f"{' and '.join(lost)} log no longer holds the last record ipam consumed",
        )
        if new is not None:
            log.warning(
                "log reset detected: continuing from Postgres state in a new generation",
                partition=partition, topics=lost, generation=new.generation,
                events_offset=row.events_offset, commands_offset=row.commands_offset,
            )
            return new


async def skip_unserved(conn, reader: LogReader, cfg: Config, seen: PartitionRow, stalled: CatchUpStalled) -> bool:
    """Step over events the broker lists but never serves, by starting a new generation past them.

    Seen once in about thirty local-broker restarts under load: a partition reports an end
    offset past records no fetch ever returns, so catch-up and projection both wait forever.
    Nothing in that range was projected, so nothing in it was ever confirmed to anyone:
    starting the new generation at the end offset drops those events, and the next owner
    decides their commands again from the commands log (command ids keep that harmless).
    Compare-and-set on the row: if the projector moved, the range was served after all.
    """
    end = await reader.end(cfg.events_topic, seen.partition)
    if seen.events_offset > stalled.position or end <= stalled.position:
        return False
    new = await reset_log(
        conn, seen.partition, seen, events_start=end, commands_start=None,
        reason=f"events log lists offsets {stalled.position}..{end - 1} but does not serve them",
    )
    if new is None:
        return False
    log.warning(
        "events the broker does not serve were skipped: their commands will be decided again",
        partition=seen.partition, unserved_from=stalled.position, unserved_to=end - 1, generation=new.generation,
        projected_offset=seen.events_offset,
    )
    return True
