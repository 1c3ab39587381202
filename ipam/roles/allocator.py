"""The allocator: single writer of each commands partition.

On assignment it claims the partition's next epoch in Postgres, loads the projected state,
catches up on events the projector has not applied yet, records its fence, and seeks the
commands partition to just after the last decided command.  Then it decides batches of
commands with the pure decider and produces the events to the same partition of the events
topic.  It never commits Kafka offsets: its position is derived from the events themselves,
so a crash at any point repeats at most undecided commands, and command ids make repeats harmless.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import msgspec

from .. import failpoints, telemetry
from ..adapters import kafka
from ..adapters.postgres.ownership import claim, current_epochs, load_fences, read_partition, set_fence
from ..adapters.postgres.spaces import load_pools, load_state
from ..clock import now_ms
from ..config import Config
from ..domain import pool_changes
from ..domain.commands import command_decoder, nul_field
from ..domain.decider import POOL_CHANGES, State, decide, evolve, pool_of, stream_key
from ..domain.events import CommandRejected
from ..domain.kinds import MAC
from ..domain.pools import REGISTRY_KEY
from ..domain.topic_records import EventRecord, record_decoder
from .continuity import command_id_of, ensure_continuity, skip_unserved
from .partitioned import PartitionRole

record_encoder = msgspec.json.Encoder()


@dataclass
class Owned:
    state: State
    epoch: int
    generation: int
    position: int = 0  # next commands offset expected
    seq: int = 0


class Allocator(PartitionRole[Owned]):
    name = "allocator"

    def __init__(self, cfg: Config, db) -> None:
        super().__init__(cfg, db, cfg.commands_topic, f"{cfg.group_prefix}-allocator")
        self.owned: dict[int, Owned] = self.taken
        self._pools_refreshed = 0
        self._epochs_checked = 0.0
        self._stalls: dict[int, tuple[int, int]] = {}  # partition -> (generation, position) of the last stall
        self.working = False  # deciding a batch: commands read, events maybe not produced yet (``busy``)

    # --- taking a partition -------------------------------------------------------------------

    async def take(self, partition: int) -> None:
        async with kafka.LogReader(self.cfg) as reader:
            await self._take(partition, reader)

    async def _take(self, partition: int, reader: kafka.LogReader) -> None:
        cfg = self.cfg
        async with self.db.acquire() as conn:
            await ensure_continuity(conn, reader, cfg, partition)
            row = await claim(conn, partition, self.owner_id)
            state = await load_state(conn, partition, quarantine_ms=cfg.quarantine_ms, recent_max=cfg.dedupe_window)
            fences = await load_fences(conn, partition, row.generation)
        self.log.info("catching up", partition=partition, epoch=row.epoch, generation=row.generation,
                      events_offset=row.events_offset)
        resume, position, caught_up = row.commands_offset, row.events_offset, 0
        try:
            async for batch in reader.read_to_end(cfg.events_topic, partition, row.events_offset):
                for offset, raw in batch:
                    position = offset + 1
                    try:
                        rec = record_decoder.decode(raw)
                    except (msgspec.DecodeError, msgspec.ValidationError):
                        continue  # the projector notes it in the ledger
                    if rec.epoch >= row.epoch or not fences.admits(rec.epoch, offset):
                        continue
                    evolve(state, rec.event)
                    caught_up += 1
                    resume = max(resume, rec.source_offset + 1)
        except kafka.CatchUpStalled as stalled:
            await self._stalled(reader, partition, row, stalled)
            raise
        self._stalls.pop(partition, None)
        async with self.db.acquire() as conn:
            if not await set_fence(conn, partition, row.epoch, position):
                self.log.warning("partition claimed by a newer allocator while catching up", partition=partition,
                                 epoch=row.epoch)
                return
        if partition not in self.assigned:
            return  # revoked while we were loading: someone else owns it now
        self.member.seek(partition, resume)
        # Only now is it ours: a failed seek must not leave a stale state behind.
        self.owned[partition] = Owned(state=state, epoch=row.epoch, generation=row.generation, position=resume)
        self.log.info("partition ready", partition=partition, epoch=row.epoch, generation=row.generation,
                      spaces=sum(len(b) for b in state.books.values()), caught_up=caught_up, commands_offset=resume,
                      leases=sum(len(b.by_key) for books in state.books.values() for b in books.values()),
                      events_offset=position)

    def read_to(self) -> dict[int, int]:
        return {partition: owned.position for partition, owned in self.owned.items()}

    def busy(self) -> str | None:
        return "the allocator deciding a batch" if self.working else super().busy()

    async def resume_in_new_log(self) -> None:
        """Keep each partition's state (everything was decided and projected before the trim): claim a new epoch
        whose writes begin at offset 0 of the new generation, as a take would, without reloading the state."""
        for partition in sorted(self.assigned):
            owned = self.owned.get(partition)
            if owned is None:
                self.take_until_done(partition)  # a take in progress (or a fence seen by ``tick``): it checks the log
                continue
            async with self.db.acquire() as conn:
                row = await claim(conn, partition, self.owner_id)
                fenced = await set_fence(conn, partition, row.epoch, 0)
            if not fenced or self.owned.get(partition) is not owned:
                self.take_until_done(partition)
                continue
            self.member.seek(partition, 0)
            self.owned[partition] = Owned(state=owned.state, epoch=row.epoch, generation=row.generation)

    async def _stalled(self, reader: kafka.LogReader, partition: int, row, stalled: kafka.CatchUpStalled) -> None:
        """A stall can be a slow broker; the same stall twice in a row, at the same place, is an unserved range."""
        where = (row.generation, stalled.position)
        if self._stalls.get(partition) != where:
            self._stalls[partition] = where
            return
        del self._stalls[partition]
        async with self.db.acquire() as conn:
            seen = await read_partition(conn, partition)
            await skip_unserved(conn, reader, self.cfg, seen, stalled)

    async def tick(self) -> None:
        """Once a second: has a partition's epoch moved on without us?  A projector that fenced us
        after losing one of our records, or an allocator whose take raced a hand-over of the partition's
        lease, claimed a newer epoch: our records are being dropped, so while our lease still gives us the
        partition we take it again from Postgres; if it does not, we stop deciding it."""
        now = time.monotonic()
        if now - self._epochs_checked < 1.0 or not self.owned or self.quiet:
            return
        self._epochs_checked = now
        async with self.db.acquire() as conn:
            epochs = await current_epochs(conn, list(self.owned))
        for partition, (epoch, owner, generation) in epochs.items():
            owned = self.owned.get(partition)
            if owned is None or (epoch, generation) == (owned.epoch, owned.generation):
                continue
            self.owned.pop(partition, None)
            # a new generation: someone found the broker lost the log (a restart of a memory-only broker); our
            # position is in the old log, and a new log can grow past it without the fetch ever failing
            self.log.warning("partition fenced by a newer epoch or log generation", partition=partition, ours=owned.epoch,
                             current=epoch, generation=generation, claimed_by=owner, retaking=partition in self.assigned)
            if partition in self.assigned:
                self.take_until_done(partition)

    # --- deciding ---------------------------------------------------------------------------

    async def work(self, batches: dict[int, list]) -> None:
        self.working = True
        try:
            await self._work(batches)
        finally:
            self.working = False

    async def _work(self, batches: dict[int, list]) -> None:
        records: dict[int, list[tuple[bytes | None, bytes]]] = {}
        for partition, msgs in batches.items():
            owned = self.owned.get(partition)
            if owned is None:
                continue
            if msgs[0].offset < owned.position:
                # the broker rewound us: its log was reset under a running consumer
                self.log.warning("commands partition went backwards; taking it again", partition=partition,
                                 expected=owned.position, got=msgs[0].offset)
                self.owned.pop(partition, None)
                await self.take(partition)
                break
            owned.position = msgs[-1].offset + 1
            self.member.record_lag("allocator", partition, owned.position)
            out = records.setdefault(partition, [])
            for msg in msgs:
                # events keep their command's key (pool, network or @registry); a poison command's have none
                out.extend((msg.key, record_encoder.encode(rec))
                           for rec in await self._decide_one(partition, owned, msg.offset, msg.value))
        if any(records.values()):
            failpoints.hit("allocator.before_produce")
            failpoints.fault("allocator.raise_before_produce")
            sent = await asyncio.gather(*(kafka.send_records(self.producer, self.cfg.events_topic, partition, out)
                                          for partition, out in records.items() if out))
            await asyncio.gather(*(future for futures in sent for future in futures))
            failpoints.hit("allocator.after_produce")

    async def _decide_one(self, partition: int, owned: Owned, offset: int, raw: bytes) -> list[EventRecord]:
        command = None
        try:
            command = command_decoder.decode(raw)
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            events = [CommandRejected(command_id=command_id_of(raw, partition, offset), at=now_ms(),
                                      command="unknown", code="malformed", reason=f"undecodable command: {e}")]
            self.log.warning("poison command sent to the dead-letter topic",
                             **command_context(raw, partition, offset, events[0]), error=str(e))
            await self._dead_letter(partition, offset, raw, f"undecodable command: {e}")
        else:
            events = self._refusal(partition, offset, command, raw) or await self._decide(partition, offset, owned, command,
                                                                                         raw)
        telemetry.commands.labels(type(command).__name__ if command is not None else "unknown").inc()
        for ev in events:
            if isinstance(ev, CommandRejected):
                telemetry.rejections.labels(ev.code).inc()
                if ev.command != "unknown":  # a poison command was logged as such above
                    self.log.info("command rejected", **command_context(raw, partition, offset, ev), code=ev.code,
                                  reason=ev.reason)
        out = []
        for i, ev in enumerate(events):
            evolve(owned.state, ev)
            owned.seq += 1
            out.append(EventRecord(partition=partition, epoch=owned.epoch, seq=owned.seq, source_offset=offset,
                                   last=i == len(events) - 1, event=ev))
        return out

    def _refusal(self, partition: int, offset: int, command, raw: bytes) -> list | None:
        """Commands refused before deciding: text Postgres cannot store, or a key of another partition."""
        bad = nul_field(command) if b"\\u0000" in raw else None  # JSON can only carry U+0000 escaped
        name = type(command).__name__
        if bad == "command_id":  # not even the id can be stored: answered under a made-up id, like poison
            return [CommandRejected(command_id=f"undecodable:{partition}:{offset}", at=command.at, command=name,
                                    code="invalid", field=bad, reason="command_id contains U+0000, which ipam does not store")]
        if bad is not None:
            return [CommandRejected(command_id=command.command_id, at=command.at, command=name, code="invalid", field=bad,
                                    reason=f"{bad} contains U+0000, which ipam does not store")]
        key = stream_key(command)
        if kafka.partition_for(key, self.cfg.partitions) != partition:
            return [CommandRejected(command_id=command.command_id, at=command.at, command=name, code="misrouted",
                                    reason=f"key {key!r} belongs to another partition")]
        return None

    async def _decide(self, partition: int, offset: int, owned: Owned, command, raw: bytes) -> list:
        pool = pool_of(command)
        if pool is not None and pool not in owned.state.pools:
            await self._refresh_pools(command.at)
        name = getattr(command, "name", None) or pool
        retired = pool is not None and getattr(owned.state.pools.get(pool), "retired", False)
        merge = isinstance(command, POOL_CHANGES) or retired
        if merge and name is not None:  # a pool change names its pool
            await self._merge_pool(partition, owned, name)
        try:
            return decide(owned.state, command)  # pure: on an exception the state is as it was
        except Exception as e:  # a command the decider cannot handle is poison: refuse it, keep the partition going
            reason = f"ipam could not decide this command: {e!r}"
            self.log.exception("decider failed; command rejected and dead-lettered", command_id=command.command_id,
                               command=type(command).__name__, partition=partition, offset=offset)
            await self._dead_letter(partition, offset, raw, reason)
            return [CommandRejected(command_id=command.command_id, at=command.at, command=type(command).__name__,
                                    code="internal", reason=reason)]

    async def _merge_pool(self, partition: int, owned: Owned, name: str) -> None:
        """Before a pool change: the other writer's latest decisions about this pool, as projected."""
        stored = await _stored_pool(self.db, name)
        if stored is None:
            return
        parts, mine = self.cfg.partitions, owned.state.pools.get(name)
        merged = owned.state.pools[name] = pool_changes.merge(mine, stored, kafka.partition_for(REGISTRY_KEY, parts) == partition,
                                                              kafka.partition_for(name, parts) == partition)
        book = owned.state.books[MAC].get(name)
        if book is not None and merged is stored and mine is not None:  # a new pool of a deleted one's name
            del owned.state.books[MAC][name]
        elif book is not None and book.space != merged:
            book.redefine(merged)

    async def _dead_letter(self, partition: int, offset: int, raw: bytes, reason: str) -> None:
        await kafka.dead_letter(self.producer, self.cfg, self.cfg.commands_topic, partition, offset, raw, reason)

    async def _refresh_pools(self, command_at: int) -> None:
        """Pools are decided on the registry partition; the others learn them from the projection.

        The API routes a command only to a pool it has read from Postgres, so a refresh that starts
        after the command was stamped must see that pool: one refresh per such command at most,
        none when the pool really does not exist."""
        if self._pools_refreshed >= command_at:
            return
        self._pools_refreshed = now_ms()
        async with self.db.acquire() as conn:
            pools = await load_pools(conn)
        for owned in list(self.owned.values()):
            for name, (pool, _part, _cursor) in pools.items():
                owned.state.pools.setdefault(name, pool)


async def _stored_pool(db, name: str):
    async with db.acquire() as conn:
        stored = (await load_pools(conn, name)).get(name)
    return None if stored is None else stored[0]


def command_context(raw: bytes, partition: int, offset: int, rejected: CommandRejected) -> dict:
    """What every log line about a command carries: its id, type, owner and where it was read."""
    context = {"command_id": rejected.command_id, "command": rejected.command, "partition": partition, "offset": offset}
    try:
        command = command_decoder.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return context
    owner = getattr(command, "owner", None)
    if owner is not None:
        context["owner"] = f"{owner.namespace}/{owner.vm}/{owner.interface}"
    elif (namespace := getattr(command, "namespace", None)) and (vm := getattr(command, "vm", None)):
        context["owner"] = f"{namespace}/{vm}"
    for scope in ("pool", "network"):
        if getattr(command, scope, None):
            context[scope] = getattr(command, scope)
    return context
