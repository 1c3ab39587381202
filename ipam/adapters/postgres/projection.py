"""Exactly-once projection of an events partition into Postgres: admit, fold, write.

Each batch is applied in one transaction together with the partition's next offset, which is
compare-and-set against the offset the projector started from: a batch is either applied once,
or not at all.  Admitting decides what of each record counts (records of fenced-off epochs,
duplicates and undecodable records are written to the ledger as notes and skipped, so none
stalls the partition); folding keeps the last state of every row the batch touches
(``fold``); writing sends them, the ledger, the outcomes and the offset in a few statements.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import msgspec
import structlog

from ... import failpoints
from ...domain.events import (
    LEASE_EVENTS,
    NetworkDefined,
    NetworkDeleted,
    PoolChanged,
    PoolCreated,
    PoolDeleted,
    PoolRangeSet,
    PoolRetired,
    encoder,
)
from ...domain.ip import address_of
from ...domain.kinds import IP, KINDS, MAC, Kind
from ...domain.pools import parse_range
from ...domain.topic_records import EventRecord, Fences, record_decoder
from . import outcomes
from .ownership import load_fences
from .spaces import SpaceChanges, load_spaces
from .tables import TABLES, LeaseChanges, ts

log = structlog.get_logger("ipam.projection")

_LEDGER_COLUMNS = ("generation", "partition", "offset", "epoch", "seq", "at", "type", "command_id",
                   "pool", "mac", "namespace", "vm", "vm_uid", "interface", "body", "network", "address", "workload",
                   "cluster")


class SequenceGap(Exception):
    """A record's sequence does not follow the last applied one: the log was replaced under us,
    or a record of the writer's epoch was lost.  The caller checks the log; if it is intact it
    fences the writer at this offset, so what follows is decided again from Postgres state."""

    def __init__(self, offset: int, detail: str) -> None:
        super().__init__(f"offset {offset}: {detail}")
        self.offset = offset


class OffsetConflict(Exception):
    """Another projector moved this partition's offset: re-read it and resume from there."""

    def __init__(self, stored: int) -> None:
        super().__init__(f"stored offset is {stored}")
        self.stored = stored


@dataclass
class BatchResult:
    next_offset: int
    applied: int = 0
    dropped: int = 0
    duplicates: int = 0
    poison: int = 0
    completed: list[str] = field(default_factory=list)
    dead_letters: list[tuple[int, bytes, str]] = field(default_factory=list)

    def merge(self, later: BatchResult) -> BatchResult:
        """This batch followed by ``later`` (when one batch was applied in parts)."""
        return BatchResult(next_offset=later.next_offset, applied=self.applied + later.applied,
                           dropped=self.dropped + later.dropped, duplicates=self.duplicates + later.duplicates,
                           poison=self.poison + later.poison, completed=self.completed + later.completed,
                           dead_letters=self.dead_letters + later.dead_letters)


def record_hash(raw: bytes) -> bytes:
    return hashlib.blake2b(raw, digest_size=16).digest()


class _Order:
    """Which record a partition applies next: (epoch, seq) of the last applied, checked against the fences."""

    __slots__ = ("epoch", "seq")

    def __init__(self, epoch: int | None, seq: int | None) -> None:
        self.epoch, self.seq = epoch, seq

    def admit(self, fences: Fences, epoch: int, seq: int, offset: int) -> str:
        """zombie (a fenced writer's record), duplicate (already applied) or apply; SequenceGap if one was lost."""
        if not fences.admits(epoch, offset):
            return "zombie"
        if self.epoch is not None and self.seq is not None:  # not the partition's first record
            if epoch == self.epoch and seq <= self.seq:
                return "duplicate"
            want = self.seq + 1 if epoch == self.epoch else 1
            if seq != want:
                raise SequenceGap(offset, f"epoch {epoch} seq {seq} after epoch {self.epoch} seq {self.seq}")
        self.epoch, self.seq = epoch, seq
        return "apply"


class _Header(msgspec.Struct):
    """The envelope of an event record, read when the event inside cannot be."""

    epoch: int
    seq: int


def _decode(offset: int, raw: bytes, poison: dict[int, str]) -> tuple[EventRecord | None, EventRecord | _Header | None, str]:
    """(the record or None, its envelope (epoch, seq) or None, why it cannot be read); ``poison``: offsets taken
    as unreadable (a value Postgres refused)."""
    try:
        if offset in poison:
            raise msgspec.ValidationError(poison[offset])
        rec = record_decoder.decode(raw)
        return rec, rec, ""
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        return None, _header_of(raw), str(e)


def _header_of(raw: bytes) -> _Header | None:
    try:
        return msgspec.json.decode(raw, type=_Header)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


@dataclass
class _Batch:
    """What one batch has admitted and folded so far, beside the row changes."""

    partition: int
    generation: int
    order: _Order
    commands_offset: int
    result: BatchResult
    ledger: list[tuple] = field(default_factory=list)
    outcomes: dict[str, list] = field(default_factory=dict)
    complete: set[str] = field(default_factory=set)
    last_command_id: str | None = None
    last_epoch: int | None = None
    last_seq: int | None = None
    last_raw: bytes | None = None

    def note(self, offset: int | None, kind: str, command_id: str, reason: str, raw: bytes, epoch: int = 0, seq: int = 0):
        body = {"reason": reason, "record": raw[:2000].decode("utf-8", "replace")}
        self.ledger.append((self.generation, self.partition, offset, epoch, seq, dt.datetime.now(dt.UTC), kind,
                            command_id, None, None, None, None, None, None, msgspec.json.encode(body).decode(), None, None,
                            None, None))

    def fold(self, offset: int, rec: EventRecord, changes: BatchChanges) -> None:
        ev = rec.event
        self.result.applied += 1
        if rec.source_offset + 1 > self.commands_offset:
            self.commands_offset, self.last_command_id = rec.source_offset + 1, ev.command_id
        body = encoder.encode(ev)  # once: the ledger's text and the outcome's element (Raw: not encoded again)
        self.ledger.append(_ledger_row(self.generation, self.partition, offset, rec, body))
        self.outcomes.setdefault(ev.command_id, []).append(msgspec.Raw(body))
        if rec.last:
            self.complete.add(ev.command_id)
        changes.add(ev)


def _ledger_row(generation: int, partition: int, offset: int, rec: EventRecord, body: bytes) -> tuple:
    ev = rec.event
    owner = getattr(ev, "owner", None) or getattr(ev, "holder", None)
    pool = ev.name if isinstance(ev, (PoolCreated, PoolChanged, PoolDeleted)) else getattr(ev, "pool", None)
    network = ev.name if isinstance(ev, (NetworkDefined, NetworkDeleted)) else getattr(ev, "network", None)
    address = getattr(ev, "address", None)
    return (generation, partition, offset, rec.epoch, rec.seq, ts(ev.at), type(ev).__name__, ev.command_id,
            pool, getattr(ev, "mac", None),
            owner.namespace if owner else None, owner.vm if owner else None,
            owner.vm_uid if owner else None, owner.interface if owner else None,
            body.decode(), network, None if address is None else address_of(address),
            owner.workload if owner else None, owner.cluster if owner else None)


class Projection:
    """Applies batches of events, one partition at a time; keeps the fences and space definitions it has seen."""

    def __init__(self, partition_of) -> None:
        self._fences: dict[int, tuple[int, Fences]] = {}
        self._partition_of = partition_of  # pool or network name -> partition
        self._spaces: dict | None = None  # every definition; loaded on first use and after a partition was given up

    def forget(self, partition: int) -> None:
        self._fences.pop(partition, None)
        self._spaces = None  # whoever projects it next may change its definitions

    async def apply(self, conn: asyncpg.Connection, partition: int, expected: int, batch: list[tuple[int, bytes]],
                    poison: dict[int, str] | None = None) -> BatchResult:
        """Apply a batch in one transaction.  Records at the offsets in ``poison`` are treated as
        undecodable.  If Postgres refuses a value in the batch, the batch is applied record by record
        and only the refused record is skipped, as poison: a bad record never stalls a partition."""
        try:
            return await self._apply(conn, partition, expected, batch, poison or {})
        except asyncpg.DataError as e:
            self._spaces = None
            if len(batch) == 1:
                if batch[0][0] in (poison or {}):
                    raise
                return await self.apply(conn, partition, expected, batch, {batch[0][0]: f"refused by Postgres: {e}"})
            log.warning("Postgres refused a value in a batch; applying it record by record", partition=partition,
                        records=len(batch), error=str(e))
            total = await self.apply(conn, partition, expected, batch[:1], poison)
            for record in batch[1:]:
                total = total.merge(await self.apply(conn, partition, total.next_offset, [record], poison))
            return total
        except BaseException:
            self._spaces = None  # it may hold definitions of a batch that was not committed
            raise

    async def _apply(self, conn: asyncpg.Connection, partition: int, expected: int, batch: list[tuple[int, bytes]],
                     poison: dict[int, str]) -> BatchResult:
        async with conn.transaction():
            row = await conn.fetchrow(
                "SELECT generation, events_offset, commands_offset, applied_epoch, applied_seq "
                "FROM ipam_store.partitions WHERE partition = $1 FOR UPDATE", partition)
            if row is None or row["events_offset"] != expected:
                raise OffsetConflict(-1 if row is None else row["events_offset"])
            b = _Batch(partition, row["generation"], _Order(row["applied_epoch"], row["applied_seq"]), row["commands_offset"],
                       BatchResult(next_offset=expected))
            if self._spaces is None:
                self._spaces = await load_spaces(conn)
            changes = BatchChanges(SpaceChanges(self._spaces, self._partition_of))
            decoded = [(offset, raw, *_decode(offset, raw, poison)) for offset, raw in batch]
            # the fences of the newest epoch here, read once: none can be added while this batch holds the
            # partition's row (claim and fence_at update it first), so reading them per record gave the same answer
            epochs = [head.epoch for _, _, _, head, _ in decoded if head is not None]
            fences = await self._fences_for(conn, partition, b.generation, max(epochs)) if epochs else None
            for offset, raw, rec, head, why in decoded:
                if (admitted := self._admit(b, fences, offset, raw, rec, head, why)) is not None:
                    b.fold(offset, admitted, changes)
            await changes.write(conn)
            if b.ledger:
                await conn.copy_records_to_table("ledger", schema_name="ipam_store", columns=_LEDGER_COLUMNS, records=b.ledger)
            failpoints.hit("projector.mid_batch")
            failpoints.fault("projector.raise_mid_batch")
            await outcomes.write(conn, partition, b.outcomes, b.complete)
            await conn.execute(
                """UPDATE ipam_store.partitions SET events_offset = $2,
                       last_epoch = coalesce($3, last_epoch), last_seq = coalesce($4, last_seq),
                       commands_offset = $5, last_command_id = coalesce($6, last_command_id),
                       applied_epoch = $7, applied_seq = $8, last_record_hash = coalesce($9, last_record_hash),
                       updated_at = now()
                   WHERE partition = $1""",
                partition, b.result.next_offset, b.last_epoch, b.last_seq, b.commands_offset, b.last_command_id,
                b.order.epoch, b.order.seq, None if b.last_raw is None else record_hash(b.last_raw))
            b.result.completed = sorted(b.complete)
            await outcomes.notify(conn, b.outcomes, b.complete)
        return b.result

    @staticmethod
    def _admit(b: _Batch, fences: Fences | None, offset: int, raw: bytes, rec: EventRecord | None,
               head: EventRecord | _Header | None, why: str) -> EventRecord | None:
        """The record to fold, or None: a skipped one is noted in the ledger."""
        b.result.next_offset, b.last_raw = offset + 1, raw
        if rec is None:
            b.result.poison += 1
            b.result.dead_letters.append((offset, raw, why))
        verdict = "poison"
        if head is not None:  # a poison record whose envelope reads keeps its place in the sequence,
            # so one bad event is skipped instead of looking like a lost one (which fences the writer)
            b.last_epoch, b.last_seq = head.epoch, head.seq
            assert fences is not None, "read for the batch whenever a record in it has an envelope"
            verdict = b.order.admit(fences, head.epoch, head.seq, offset)
        if rec is None:
            b.note(offset, "PoisonEvent", f"poison:{b.partition}:{offset}", why, raw, head.epoch if head else 0,
                   head.seq if head else 0)
        elif verdict == "zombie":
            b.result.dropped += 1
            b.note(offset, "ZombieEventDropped", rec.event.command_id, f"epoch {rec.epoch} was fenced off by a newer allocator",
                   raw, rec.epoch, rec.seq)
        elif verdict == "duplicate":
            b.result.duplicates += 1
            b.note(offset, "DuplicateEventDropped", rec.event.command_id,
                   f"epoch {rec.epoch} seq {rec.seq} was already applied", raw, rec.epoch, rec.seq)
        else:
            return rec
        return None

    async def _fences_for(self, conn: asyncpg.Connection, partition: int, generation: int, epoch: int) -> Fences:
        cached = self._fences.get(partition)
        if cached is not None and cached[0] == generation and cached[1].max_epoch >= epoch:
            return cached[1]
        fences = await load_fences(conn, partition, generation)
        self._fences[partition] = (generation, fences)
        return fences


class BatchChanges:
    """Everything one batch changes outside the ledger: spaces, leases and quarantine of every kind, cursors."""

    def __init__(self, spaces: SpaceChanges) -> None:
        self.spaces = spaces
        self.leases = {kind: LeaseChanges(TABLES[kind]) for kind in KINDS}

    def add(self, ev) -> None:
        fold = FOLDS.get(type(ev))
        if fold is not None:
            fold(self, ev)

    async def write(self, conn) -> None:
        await self.spaces.write_definitions(conn)
        for changes in self.leases.values():
            await changes.write(conn)
        await self.spaces.write_cursors(conn)
        await self.spaces.write_deletions(conn)


def _lease_fold(kind: Kind, role: str) -> Callable[[BatchChanges, object], None]:
    def fold(changes: BatchChanges, ev) -> None:
        getattr(changes.leases[kind], role)(ev)
        if role == "leased" and not ev.static:
            changes.spaces.advance(kind, getattr(ev, kind.space), getattr(ev, kind.address))
    return fold


def _network_deleted(changes: BatchChanges, ev: NetworkDeleted) -> None:
    changes.spaces.network_deleted(ev)
    changes.leases[IP].space_deleted(ev.name)


def _pool_range_set(changes: BatchChanges, ev: PoolRangeSet) -> None:
    changes.spaces.pool_range_set(ev)
    rng = parse_range(ev.range)
    changes.leases[MAC].space_narrowed(ev.pool, lambda key: int(key[0].replace(":", ""), 16) in rng)


def _pool_retired(changes: BatchChanges, ev: PoolRetired) -> None:
    changes.spaces.pool_retired(ev)
    changes.leases[MAC].space_deleted(ev.pool)


def _pool_deleted(changes: BatchChanges, ev: PoolDeleted) -> None:
    changes.spaces.pool_deleted(ev)
    changes.leases[MAC].space_deleted(ev.name)


# event type -> how it changes the rows; each fold takes the event of its own type (Any: the table is keyed by type)
FOLDS: dict[type, Callable[[BatchChanges, Any], None]] = {
    PoolCreated: lambda changes, ev: changes.spaces.pool_created(ev),
    PoolChanged: lambda changes, ev: changes.spaces.pool_changed(ev),
    PoolRangeSet: _pool_range_set,
    PoolRetired: _pool_retired,
    PoolDeleted: _pool_deleted,
    NetworkDefined: lambda changes, ev: changes.spaces.network_defined(ev),
    NetworkDeleted: _network_deleted,
}
for _kind in KINDS:
    for _role in ("leased", "released", "confirmed"):
        FOLDS[getattr(LEASE_EVENTS[_kind], _role)] = _lease_fold(_kind, _role)
