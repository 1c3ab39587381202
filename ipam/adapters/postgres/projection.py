"""Exactly-once projection of an events partition into Postgres.

Each batch is applied in one transaction together with the partition's next offset,
which is compare-and-set against the offset the projector started from: a batch is
either applied once, or not at all.  Records from fenced-off epochs and records that
cannot be decoded are written to the ledger as notes and skipped, so neither stalls
the partition.  Callers waiting for a command's answer are told by NOTIFY on commit.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass, field

import asyncpg
import msgspec
import structlog

from ... import failpoints

from ...domain.allocation import mac_of
from ...domain.fencing import Fences
from ...domain.ip import address_of
from ...domain.mac import format_mac, unicast_below
from ...domain.messages import MacLeaseConfirmed, MacLeased, MacReleased, NetworkDefined, NetworkDeleted, PoolCreated, encoder
from ...domain.pools import parse_range
from ...domain.records import EventRecord, record_decoder
from .ip_projection import IP_EVENTS, IpChanges, NetworkCache
from .partitions import load_fences

log = structlog.get_logger("ipam.projection")

NOTIFY_CHANNEL = "ipam_outcomes"
PRUNE_BATCH = 10000
_NOTIFY_LIMIT = 7000  # Postgres caps a NOTIFY payload at 8000 bytes

_LEDGER_COLUMNS = (
    "generation", "partition", "offset", "epoch", "seq", "at", "type", "command_id",
    "pool", "mac", "namespace", "vm", "vm_uid", "interface", "body", "network", "address",
)


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


def _ts(ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.timezone.utc)


class Projector:
    """Applies batches of one partition at a time; keeps the fences it has seen."""

    def __init__(self, partition_of) -> None:
        self._fences: dict[int, tuple[int, Fences]] = {}
        self._partition_of = partition_of  # pool or network name -> partition
        self._networks = NetworkCache()

    def forget(self, partition: int) -> None:
        self._fences.pop(partition, None)
        self._networks.forget()  # whoever projects it next may change its networks

    async def apply(self, conn: asyncpg.Connection, partition: int, expected: int, batch: list[tuple[int, bytes]],
                    poison: dict[int, str] | None = None) -> BatchResult:
        """Apply a batch in one transaction.  Records at the offsets in ``poison`` are treated as
        undecodable.  If Postgres refuses a value in the batch, the batch is applied record by record
        and only the refused record is skipped, as poison: a bad record never stalls a partition."""
        try:
            return await self._apply(conn, partition, expected, batch, poison or {})
        except asyncpg.DataError as e:
            self._networks.forget()
            if len(batch) == 1:
                if batch[0][0] in (poison or {}):
                    raise
                return await self.apply(conn, partition, expected, batch, {batch[0][0]: f"refused by Postgres: {e}"})
            log.warning("Postgres refused a value in a batch; applying it record by record", partition=partition,
                        records=len(batch), error=str(e))
            total = None
            for record in batch:
                result = await self.apply(conn, partition, expected, [record], poison)
                expected = result.next_offset
                total = result if total is None else total.merge(result)
            return total
        except BaseException:
            self._networks.forget()  # it may hold definitions of a batch that was not committed
            raise

    async def _apply(self, conn: asyncpg.Connection, partition: int, expected: int, batch: list[tuple[int, bytes]],
                     poison: dict[int, str]) -> BatchResult:
        async with conn.transaction():
            row = await conn.fetchrow(
                "SELECT generation, events_offset, commands_offset, applied_epoch, applied_seq "
                "FROM ipam_store.partitions WHERE partition = $1 FOR UPDATE",
                partition,
            )
            if row is None or row["events_offset"] != expected:
                raise OffsetConflict(-1 if row is None else row["events_offset"])
            generation = row["generation"]
            result = BatchResult(next_offset=expected)
            ledger: list[tuple] = []
            leases: dict[str, tuple | None] = {}
            quarantine: dict[str, tuple | None] = {}
            pools: list[tuple] = []
            cursors: dict[str, str] = {}
            confirms: dict[str, tuple] = {}  # provisional leases bound to their VM (leased in an earlier batch)
            outcomes: dict[str, list] = {}
            complete: set[str] = set()
            commands_offset = row["commands_offset"]
            last_command_id = None
            last_epoch = last_seq = None
            last_raw = None
            order = _Order(row["applied_epoch"], row["applied_seq"])
            fences = await self._fences_for(conn, partition, generation, 0)
            await self._networks.ensure(conn)
            ip = IpChanges(self._networks, self._partition_of)
            for offset, raw in batch:
                result.next_offset = offset + 1
                last_raw = raw
                try:
                    if offset in poison:
                        raise msgspec.ValidationError(poison[offset])
                    rec = record_decoder.decode(raw)
                    head = rec
                except (msgspec.DecodeError, msgspec.ValidationError) as e:
                    rec, head, why = None, _header_of(raw), str(e)
                    result.poison += 1
                    result.dead_letters.append((offset, raw, why))
                verdict = "poison"
                if head is not None:  # a poison record whose envelope reads keeps its place in the sequence,
                    # so one bad event is skipped instead of looking like a lost one (which fences the writer)
                    if head.epoch > fences.max_epoch:
                        fences = await self._fences_for(conn, partition, generation, head.epoch)
                    last_epoch, last_seq = head.epoch, head.seq
                    verdict = order.admit(fences, head.epoch, head.seq, offset)
                if rec is None:
                    ledger.append(_note(generation, partition, offset, "PoisonEvent", f"poison:{partition}:{offset}", why, raw,
                                        head.epoch if head else 0, head.seq if head else 0))
                    continue
                if verdict == "zombie":
                    result.dropped += 1
                    ledger.append(
                        _note(generation, partition, offset, "ZombieEventDropped", rec.event.command_id,
                              f"epoch {rec.epoch} was fenced off by a newer allocator", raw, rec.epoch, rec.seq)
                    )
                    continue
                if verdict == "duplicate":
                    result.duplicates += 1
                    ledger.append(
                        _note(generation, partition, offset, "DuplicateEventDropped", rec.event.command_id,
                              f"epoch {rec.epoch} seq {rec.seq} was already applied", raw, rec.epoch, rec.seq)
                    )
                    continue
                ev = rec.event
                result.applied += 1
                if rec.source_offset + 1 > commands_offset:
                    commands_offset = rec.source_offset + 1
                    last_command_id = ev.command_id
                ledger.append(_ledger_row(generation, partition, offset, rec))
                outcomes.setdefault(ev.command_id, []).append(msgspec.json.decode(encoder.encode(ev)))
                if rec.last:
                    complete.add(ev.command_id)
                kind = type(ev)
                if kind is MacLeased:
                    o = ev.owner
                    leases[ev.mac] = (ev.pool, o.namespace, o.vm, o.vm_uid, o.interface, ev.static, _ts(ev.at), ev.command_id,
                                      _ts(ev.pending_until) if ev.pending_until else None)
                    quarantine[ev.mac] = None
                    if confirms:
                        confirms.pop(ev.mac, None)
                    if not ev.static:
                        cursors[ev.pool] = ev.mac
                elif kind is MacReleased:
                    o = ev.owner
                    leases[ev.mac] = None
                    if confirms:
                        confirms.pop(ev.mac, None)
                    quarantine[ev.mac] = (
                        (ev.pool, _ts(ev.quarantined_until), _ts(ev.at), o.namespace, o.vm, o.vm_uid, o.interface)
                        if ev.quarantined_until > ev.at
                        else None
                    )
                elif kind is MacLeaseConfirmed:
                    o = ev.owner
                    current = leases.get(ev.mac)
                    if current is not None:  # leased earlier in this batch: rewrite the row to insert
                        leases[ev.mac] = (current[0], o.namespace, o.vm, o.vm_uid, o.interface, *current[5:8], None)
                    else:
                        confirms[ev.mac] = (o.namespace, o.vm, o.vm_uid, o.interface)
                elif kind is PoolCreated:
                    pools.append(_pool_row(ev, self._partition_of(ev.name)))
                elif kind in IP_EVENTS:
                    ip.add(ev)
            await self._write(conn, ledger, pools, leases, quarantine, cursors, confirms)
            if ip:
                await ip.write(conn)
            failpoints.hit("projector.mid_batch")
            await _write_outcomes(conn, partition, outcomes, complete)
            await conn.execute(
                """UPDATE ipam_store.partitions SET events_offset = $2,
                       last_epoch = coalesce($3, last_epoch), last_seq = coalesce($4, last_seq),
                       commands_offset = $5, last_command_id = coalesce($6, last_command_id),
                   applied_epoch = $7, applied_seq = $8, last_record_hash = coalesce($9, last_record_hash),
                   updated_at = now()
                   WHERE partition = $1""",
                partition, result.next_offset, last_epoch, last_seq, commands_offset, last_command_id,
                order.epoch, order.seq, None if last_raw is None else record_hash(last_raw),
            )
            result.completed = sorted(complete)
            await _notify(conn, outcomes, complete)
        return result

    async def _fences_for(self, conn: asyncpg.Connection, partition: int, generation: int, epoch: int) -> Fences:
        cached = self._fences.get(partition)
        if cached is not None and cached[0] == generation and cached[1].max_epoch >= epoch:
            return cached[1]
        fences = await load_fences(conn, partition, generation)
        self._fences[partition] = (generation, fences)
        return fences

    @staticmethod
    async def _write(conn, ledger, pools, leases, quarantine, cursors, confirms) -> None:
        if pools:
            await conn.executemany(
                """INSERT INTO ipam_store.pools (name, first_mac, last_mac, range_lo, range_hi, lo_ordinal, size, namespaces,
                       is_default, external, start_offset, cursor, partition, created_at, command_id)
                   VALUES ($1, $2::macaddr, $3::macaddr, $4, $5, $6, $7, $8, $9, $10, $11, $11, $12, $13, $14)
                   ON CONFLICT (name) DO NOTHING""",
                pools,
            )
        if leases:
            touched = list(leases)
            await conn.execute("DELETE FROM ipam_store.mac_leases WHERE mac = ANY($1::macaddr[])", touched)
            live = [(m, *v) for m, v in leases.items() if v is not None]
            if live:
                cols = list(zip(*live))
                await conn.execute(
                    """INSERT INTO ipam_store.mac_leases (mac, pool, namespace, vm, vm_uid, interface, static, since, command_id,
                                                         pending_until)
                       SELECT * FROM unnest($1::macaddr[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                                            $7::boolean[], $8::timestamptz[], $9::text[], $10::timestamptz[])""",
                    *cols,
                )
        if confirms:
            cols = list(zip(*[(m, *v) for m, v in confirms.items()]))
            await conn.execute(
                """UPDATE ipam_store.mac_leases l SET namespace = c.ns, vm = c.vm, vm_uid = c.uid, interface = c.iface,
                          pending_until = NULL
                   FROM unnest($1::macaddr[], $2::text[], $3::text[], $4::text[], $5::text[]) AS c(mac, ns, vm, uid, iface)
                   WHERE l.mac = c.mac""",
                *cols,
            )
        if quarantine:
            await conn.execute("DELETE FROM ipam_store.mac_quarantine WHERE mac = ANY($1::macaddr[])", list(quarantine))
            held = [(m, *v) for m, v in quarantine.items() if v is not None]
            if held:
                cols = list(zip(*held))
                await conn.execute(
                    """INSERT INTO ipam_store.mac_quarantine (mac, pool, until, released_at, namespace, vm, vm_uid, interface)
                       SELECT * FROM unnest($1::macaddr[], $2::text[], $3::timestamptz[], $4::timestamptz[],
                                            $5::text[], $6::text[], $7::text[], $8::text[])""",
                    *cols,
                )
        if cursors:
            names = list(cursors)
            macs = [unicast_below(mac_of(m)) for m in cursors.values()]
            await conn.execute(
                """UPDATE ipam_store.pools p SET cursor = ((c.ordinal - p.lo_ordinal) + 1) % p.size
                   FROM (SELECT unnest($1::text[]) AS name, unnest($2::bigint[]) AS ordinal) c
                   WHERE p.name = c.name AND p.size > 0""",
                names,
                macs,
            )
        if ledger:
            await conn.copy_records_to_table("ledger", schema_name="ipam_store", columns=_LEDGER_COLUMNS, records=ledger)


def _pool_row(ev: PoolCreated, partition: int) -> tuple:
    if ev.range is None:
        first = last = lo = hi = None
        size = 0
        return (ev.name, first, last, lo, hi, None, size, list(ev.namespaces), ev.default, True, ev.start, partition, _ts(ev.at), ev.command_id)
    else:
        rng = parse_range(ev.range)
        first, last = format_mac(rng.first), format_mac(rng.last)
        lo, hi, size = rng.first, rng.last, rng.size
    return (ev.name, first, last, lo, hi, None if lo is None else unicast_below(lo), size, list(ev.namespaces), ev.default, ev.range is None, ev.start, partition, _ts(ev.at), ev.command_id)


def _ledger_row(generation: int, partition: int, offset: int, rec: EventRecord) -> tuple:
    ev = rec.event
    owner = getattr(ev, "owner", None) or getattr(ev, "holder", None)
    mac = getattr(ev, "mac", None)
    pool = getattr(ev, "pool", None) if not isinstance(ev, PoolCreated) else ev.name
    network = ev.name if isinstance(ev, (NetworkDefined, NetworkDeleted)) else getattr(ev, "network", None)
    address = getattr(ev, "address", None)
    return (
        generation, partition, offset, rec.epoch, rec.seq, _ts(ev.at), type(ev).__name__, ev.command_id,
        pool, mac,
        owner.namespace if owner else None, owner.vm if owner else None,
        owner.vm_uid if owner else None, owner.interface if owner else None,
        encoder.encode(ev).decode(),
        network, None if address is None else address_of(address),
    )


class _Order:
    """Which record a partition applies next: (epoch, seq) of the last applied, checked against the fences."""

    __slots__ = ("epoch", "seq")

    def __init__(self, epoch: int | None, seq: int | None) -> None:
        self.epoch, self.seq = epoch, seq

    def admit(self, fences: Fences, epoch: int, seq: int, offset: int) -> str:
        """zombie (a fenced writer's record), duplicate (already applied) or apply; SequenceGap if one was lost."""
        if not fences.admits(epoch, offset):
            return "zombie"
        if epoch == self.epoch and seq <= self.seq:
            return "duplicate"
        if self.epoch is not None:
            want = self.seq + 1 if epoch == self.epoch else 1
            if seq != want:
                raise SequenceGap(offset, f"epoch {epoch} seq {seq} after epoch {self.epoch} seq {self.seq}")
        self.epoch, self.seq = epoch, seq
        return "apply"


class _Header(msgspec.Struct):
    """The envelope of an event record, read when the event inside cannot be."""

    epoch: int
    seq: int


def _header_of(raw: bytes) -> _Header | None:
    try:
        return msgspec.json.decode(raw, type=_Header)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


def _note(generation, partition, offset, kind, command_id, reason, raw, epoch=0, seq=0) -> tuple:
    body = {"reason": reason, "record": raw[:2000].decode("utf-8", "replace")}
    return (generation, partition, offset, epoch, seq, dt.datetime.now(dt.timezone.utc), kind, command_id,
            None, None, None, None, None, None, msgspec.json.encode(body).decode(), None, None)


async def _write_outcomes(conn: asyncpg.Connection, partition: int, outcomes: dict[str, list], complete: set[str]) -> None:
    if not outcomes:
        return
    ids = list(outcomes)
    await conn.execute(
        """INSERT INTO ipam_store.command_outcomes (command_id, partition, events, complete, decided_at)
           SELECT u.id, $1, u.events::jsonb, u.complete, now()
           FROM unnest($2::text[], $3::text[], $4::boolean[]) AS u(id, events, complete)
           ON CONFLICT (command_id) DO UPDATE
           SET events = ipam_store.command_outcomes.events || EXCLUDED.events, complete = EXCLUDED.complete
           WHERE NOT ipam_store.command_outcomes.complete""",
        partition,
        ids,
        [msgspec.json.encode(outcomes[i]).decode() for i in ids],
        [i in complete for i in ids],
    )


async def _notify(conn: asyncpg.Connection, outcomes: dict[str, list], complete: set[str]) -> None:
    """Tell waiting API processes; delivered on commit.  Big answers send only the id (they re-read)."""
    chunk: list = []
    size = 2
    for cid in complete:
        item = [cid, outcomes[cid]]
        encoded = msgspec.json.encode(item)
        if len(encoded) > _NOTIFY_LIMIT:
            item, encoded = [cid, None], msgspec.json.encode([cid, None])
        if size + len(encoded) + 1 > _NOTIFY_LIMIT:
            await conn.execute("SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, msgspec.json.encode(chunk).decode())
            chunk, size = [], 2
        chunk.append(item)
        size += len(encoded) + 1
    if chunk:
        await conn.execute("SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, msgspec.json.encode(chunk).decode())


async def prune_outcomes(conn: asyncpg.Connection, retention_hours: float) -> int:
    """Forget answers older than the retention (the dedupe store is bounded in time)."""
    status = await conn.execute(
        """DELETE FROM ipam_store.command_outcomes WHERE command_id IN (
               SELECT command_id FROM ipam_store.command_outcomes
               WHERE decided_at < now() - make_interval(secs => $1) LIMIT $2)""",
        retention_hours * 3600, PRUNE_BATCH,
    )
    return int(status.split()[-1])
