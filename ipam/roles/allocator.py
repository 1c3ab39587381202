"""The allocator: single writer of each commands partition.

On assignment it claims the partition's next epoch in Postgres, loads the projected
state, catches up on events the projector has not applied yet, records its fence, and
seeks the commands partition to just after the last decided command.  Then it decides
batches of commands with the pure decider and produces the events to the same partition
of the events topic.  It never commits Kafka offsets: its position is derived from the
events themselves, so a crash at any point repeats at most undecided commands, and
command ids make repeats harmless.
"""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from dataclasses import dataclass

import asyncpg
import msgspec
import structlog
from aiokafka import ConsumerRebalanceListener, TopicPartition

from .. import failpoints, telemetry
from ..adapters import kafka
from ..adapters.postgres.partitions import (claim, current_epochs, load_fences, load_pools, load_state, read_partition,
                                            set_fence)
from ..config import Config
from ..domain.allocation import State, decide, evolve, pool_of, stream_key
from ..domain.messages import CommandRejected, command_decoder, nul_field
from ..domain.records import EventRecord, record_decoder
from .ownership import take_until_done
from .continuity import command_id_of, ensure_continuity, skip_unserved

log = structlog.get_logger("ipam.allocator")
record_encoder = msgspec.json.Encoder()


@dataclass
class Owned:
    state: State
    epoch: int
    position: int = 0  # next commands offset expected
    seq: int = 0


class Allocator:
    def __init__(self, cfg: Config, db: asyncpg.Pool) -> None:
        self.cfg = cfg
        self.db = db
        self.owner_id = f"{socket.gethostname()}/allocator-{uuid.uuid4().hex[:8]}"  # the pod name in Kubernetes
        self.owned: dict[int, Owned] = {}
        self.assigned: set[int] = set()
        self._consumer = kafka.consumer(cfg, f"{cfg.group_prefix}-allocator")
        self._producer = kafka.producer(cfg)
        self._stopping = asyncio.Event()
        self._background: set[asyncio.Task] = set()
        self._pools_refreshed = 0
        self._epochs_checked = 0.0
        self._stalls: dict[int, tuple[int, int]] = {}  # partition -> (generation, position) of the last stall

    @property
    def ready(self) -> bool:
        return bool(self.assigned) and self.assigned <= set(self.owned)

    async def start(self) -> None:
        await self._producer.start()
        self._consumer.subscribe([self.cfg.commands_topic], listener=_Listener(self))
        await self._consumer.start()

    async def stop(self) -> None:
        self._stopping.set()

    async def close(self) -> None:
        await self._consumer.stop()  # leaves the group
        await self._producer.stop()

    # --- ownership ----------------------------------------------------------------

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
        resume = row.commands_offset
        position = row.events_offset
        log.info("catching up", partition=partition, epoch=row.epoch, generation=row.generation, events_offset=position)
        caught_up = 0
        try:
            async for batch in reader.read_to_end(TopicPartition(cfg.events_topic, partition), row.events_offset):
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
                    if rec.source_offset + 1 > resume:
                        resume = rec.source_offset + 1
        except kafka.CatchUpStalled as stalled:
            await self._stalled(reader, partition, row, stalled)
            raise
        self._stalls.pop(partition, None)
        async with self.db.acquire() as conn:
            if not await set_fence(conn, partition, row.epoch, position):
                log.warning("partition claimed by a newer allocator while catching up", partition=partition, epoch=row.epoch)
                return
        if partition not in self.assigned:
            return  # revoked while we were loading: someone else owns it now
        self._consumer.seek(TopicPartition(cfg.commands_topic, partition), resume)
        # Only now is it ours: a failed seek must not leave a stale state behind.
        self.owned[partition] = Owned(state=state, epoch=row.epoch, position=resume)
        log.info(
            "partition ready", partition=partition, epoch=row.epoch, generation=row.generation,
            pools=len(state.books), leases=sum(len(b.by_mac) for b in state.books.values()),
            caught_up=caught_up, commands_offset=resume, events_offset=position,
        )

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

    async def recover(self) -> None:
        """After a failure mid-batch the consumer may be past undecided commands: take everything again."""
        self.owned.clear()
        for p in sorted(self.assigned):
            await self.take(p)

    def drop(self, partitions: set[int]) -> None:
        for p in partitions:
            self.owned.pop(p, None)

    # --- deciding -----------------------------------------------------------------

    async def run(self) -> None:
        cfg = self.cfg
        events_topic = cfg.events_topic
        while not self._stopping.is_set():
            await self._check_epochs()
            batches = await self._consumer.getmany(timeout_ms=100, max_records=5000)
            if not batches:
                continue
            sends = []
            for tp, msgs in batches.items():
                owned = self.owned.get(tp.partition)
                if owned is None or not msgs:
                    continue
                if msgs[0].offset < owned.position:
                    # the broker rewound us: its log was reset under a running consumer
                    log.warning("commands partition went backwards; taking it again", partition=tp.partition,
                                expected=owned.position, got=msgs[0].offset)
                    self.owned.pop(tp.partition, None)
                    await self.take(tp.partition)
                    break
                owned.position = msgs[-1].offset + 1
                telemetry.lag("allocator", self._consumer, tp, owned.position)
                for msg in msgs:
                    # events keep their command's key (pool, network or @registry); a poison command's have none
                    for rec in await self._decide_one(tp.partition, owned, msg.offset, msg.value):
                        sends.append(self._producer.send(events_topic, record_encoder.encode(rec), key=msg.key,
                                                         partition=tp.partition))
            if sends:
                failpoints.hit("allocator.before_produce")
                futures = await asyncio.gather(*sends)
                await asyncio.gather(*futures)
                failpoints.hit("allocator.after_produce")

    async def _check_epochs(self) -> None:
        """Once a second: has a partition's epoch moved on without us?  A projector that fenced us
        after losing one of our records, or an allocator whose take raced a rebalance, claimed a
        newer epoch: our records are being dropped, so while the group still gives us the
        partition we take it again from Postgres; if it does not, we stop deciding it."""
        now = time.monotonic()
        if now - self._epochs_checked < 1.0 or not self.owned:
            return
        self._epochs_checked = now
        async with self.db.acquire() as conn:
            epochs = await current_epochs(conn, list(self.owned))
        for partition, (epoch, owner) in epochs.items():
            owned = self.owned.get(partition)
            if owned is None or epoch == owned.epoch:
                continue
            self.owned.pop(partition, None)
            log.warning("partition fenced by a newer epoch", partition=partition, ours=owned.epoch, current=epoch,
                        claimed_by=owner, retaking=partition in self.assigned)
            if partition in self.assigned:
                await take_until_done(self, partition, log)

    async def _decide_one(self, partition: int, owned: Owned, offset: int, raw: bytes) -> list[EventRecord]:
        command = None
        try:
            command = command_decoder.decode(raw)
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            events = [
                CommandRejected(
                    command_id=command_id_of(raw, partition, offset), at=int(time.time() * 1000),
                    command="unknown", code="malformed", reason=f"undecodable command: {e}",
                )
            ]
            log.warning("poison command sent to the dead-letter topic", **command_context(raw, partition, offset, events[0]),
                        error=str(e))
            await kafka.dead_letter(self._producer, self.cfg, self.cfg.commands_topic, partition, offset, raw,
                                    f"undecodable command: {e}")
        else:
            key = stream_key(command)
            bad = nul_field(command) if b"\\u0000" in raw else None  # JSON can only carry U+0000 escaped
            if bad == "command_id":  # not even the id can be stored: answered under a made-up id, like poison
                events = [CommandRejected(command_id=f"undecodable:{partition}:{offset}", at=command.at,
                                          command=type(command).__name__, code="invalid", field=bad,
                                          reason="command_id contains U+0000, which ipam does not store")]
            elif bad is not None:
                events = [CommandRejected(command_id=command.command_id, at=command.at, command=type(command).__name__,
                                          code="invalid", field=bad, reason=f"{bad} contains U+0000, which ipam does not store")]
            elif kafka.partition_for(key, self.cfg.partitions) != partition:
                events = [
                    CommandRejected(
                        command_id=command.command_id, at=command.at, command=type(command).__name__,
                        code="misrouted", reason=f"key {key!r} belongs to another partition",
                    )
                ]
            else:
                pool = pool_of(command)
                if pool is not None and pool not in owned.state.pools:
                    await self._refresh_pools(command.at)
                try:
                    events = decide(owned.state, command)  # pure: on an exception the state is as it was
                except Exception as e:  # a command the decider cannot handle is poison: refuse it, keep the partition going
                    reason = f"ipam could not decide this command: {e!r}"
                    log.exception("decider failed; command rejected and dead-lettered", command_id=command.command_id,
                                  command=type(command).__name__, partition=partition, offset=offset)
                    events = [CommandRejected(command_id=command.command_id, at=command.at, command=type(command).__name__,
                                              code="internal", reason=reason)]
                    await kafka.dead_letter(self._producer, self.cfg, self.cfg.commands_topic, partition, offset, raw, reason)
        telemetry.commands.labels(type(command).__name__ if command is not None else "unknown").inc()
        for ev in events:
            if isinstance(ev, CommandRejected):
                telemetry.rejections.labels(ev.code).inc()
                if ev.command != "unknown":  # a poison command was logged as such above
                    log.info("command rejected", **command_context(raw, partition, offset, ev), code=ev.code, reason=ev.reason)
        state = owned.state
        out = []
        for i, ev in enumerate(events):
            evolve(state, ev)
            owned.seq += 1
            out.append(
                EventRecord(partition=partition, epoch=owned.epoch, seq=owned.seq, source_offset=offset,
                            last=i == len(events) - 1, event=ev)
            )
        return out

    async def _refresh_pools(self, command_at: int) -> None:
        """Pools are decided on the registry partition; the others learn them from the projection.

        The API routes a command only to a pool it has read from Postgres, so a refresh
        that starts after the command was stamped must see that pool: one refresh per
        such command at most, none when the pool really does not exist.
        """
        if self._pools_refreshed >= command_at:
            return
        self._pools_refreshed = int(time.time() * 1000)
        async with self.db.acquire() as conn:
            pools = await load_pools(conn)
        for owned in list(self.owned.values()):
            for name, (pool, _part, _cursor) in pools.items():
                owned.state.pools.setdefault(name, pool)


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
    elif getattr(command, "namespace", None) and getattr(command, "vm", None):
        context["owner"] = f"{command.namespace}/{command.vm}"
    for scope in ("pool", "network"):
        if getattr(command, scope, None):
            context[scope] = getattr(command, scope)
    return context


class _Listener(ConsumerRebalanceListener):
    def __init__(self, allocator: Allocator) -> None:
        self.allocator = allocator

    async def on_partitions_revoked(self, revoked) -> None:
        lost = {tp.partition for tp in revoked}
        self.allocator.drop(lost)
        self.allocator.assigned -= lost

    async def on_partitions_assigned(self, assigned) -> None:
        parts = sorted(tp.partition for tp in assigned)
        self.allocator.assigned = set(parts)
        await asyncio.gather(*(take_until_done(self.allocator, p, log) for p in parts))
