"""The projector: applies each events partition to Postgres, batch by batch, exactly once.

Its position lives in Postgres (``ipam_store.partitions.events_offset``), written in the
same transaction as the batch; Kafka group membership only decides who works on what.
"""

from __future__ import annotations

import asyncio
import time

import asyncpg
import structlog
from aiokafka import ConsumerRebalanceListener, TopicPartition

from .. import failpoints, telemetry
from ..adapters import kafka
from ..adapters.postgres.partitions import fence_at
from ..adapters.postgres.projection import OffsetConflict, Projector, SequenceGap, prune_outcomes
from ..config import Config
from .ownership import take_until_done
from .continuity import ensure_continuity

log = structlog.get_logger("ipam.projector")


class ProjectorRole:
    def __init__(self, cfg: Config, db: asyncpg.Pool) -> None:
        self.cfg = cfg
        self.db = db
        self.positions: dict[int, int] = {}
        self._generations: dict[int, int] = {}
        self.assigned: set[int] = set()
        self._projector = Projector(lambda name: kafka.partition_for(name, cfg.partitions))
        self._consumer = kafka.consumer(cfg, f"{cfg.group_prefix}-projector", max_partition_fetch_bytes=8 * 1024 * 1024)
        self._producer = kafka.producer(cfg)
        self._stopping = asyncio.Event()
        self._background: set[asyncio.Task] = set()
        self._pruned_at = 0.0
        self._generations_checked = 0.0

    @property
    def ready(self) -> bool:
        return bool(self.assigned) and self.assigned <= set(self.positions)

    async def start(self) -> None:
        await self._producer.start()
        self._consumer.subscribe([self.cfg.events_topic], listener=_Listener(self))
        await self._consumer.start()

    async def stop(self) -> None:
        self._stopping.set()

    async def close(self) -> None:
        await self._consumer.stop()
        await self._producer.stop()

    async def take(self, partition: int) -> None:
        async with kafka.LogReader(self.cfg) as reader, self.db.acquire() as conn:
            row = await ensure_continuity(conn, reader, self.cfg, partition)
        self._projector.forget(partition)
        self._generations[partition] = row.generation
        if partition not in self.assigned:
            return
        self._consumer.seek(TopicPartition(self.cfg.events_topic, partition), row.events_offset)
        self.positions[partition] = row.events_offset
        log.info("projecting partition", partition=partition, offset=row.events_offset, generation=row.generation)

    async def recover(self) -> None:
        """After a failure mid-batch, seek every partition back to the offset Postgres committed."""
        self.positions.clear()
        for p in sorted(self.assigned):
            await self.take(p)

    async def run(self) -> None:
        while not self._stopping.is_set():
            batches = await self._consumer.getmany(timeout_ms=100, max_records=20000)
            for tp, msgs in batches.items():
                expected = self.positions.get(tp.partition)
                if expected is None or not msgs:
                    continue
                if msgs[0].offset < expected:
                    # records before our position: the broker rewound us (its log was reset)
                    log.warning("events partition went backwards; checking the log", partition=tp.partition,
                                expected=expected, got=msgs[0].offset)
                    await self.take(tp.partition)
                    continue
                # Offsets need not be contiguous (Kafka skips offsets for control records and
                # compaction; the local broker was seen skipping one): the sequence check below
                # is what notices a lost event.
                batch = [(m.offset, m.value) for m in msgs]
                try:
                    async with self.db.acquire() as conn:
                        result = await self._projector.apply(conn, tp.partition, expected, batch)
                except SequenceGap as e:
                    await self._sequence_gap(tp.partition, e)
                    continue
                except OffsetConflict as e:
                    log.warning("partition offset moved under us; resuming from Postgres", partition=tp.partition,
                                expected=expected, stored=e.stored)
                    await self.take(tp.partition)
                    continue
                failpoints.hit("projector.after_commit")
                self.positions[tp.partition] = result.next_offset
                telemetry.projector_batch.labels(str(tp.partition)).observe(len(batch))
                telemetry.lag("projector", self._consumer, tp, result.next_offset)
                for offset, raw, reason in result.dead_letters:
                    await kafka.dead_letter(self._producer, self.cfg, self.cfg.events_topic, tp.partition, offset, raw, reason)
                for reason, count in (("zombie", result.dropped), ("poison", result.poison), ("duplicate", result.duplicates)):
                    if count:
                        telemetry.records_skipped.labels(reason).inc(count)
                if result.dropped or result.poison or result.duplicates:
                    log.warning("records skipped", partition=tp.partition, zombie=result.dropped, poison=result.poison,
                                duplicates=result.duplicates)
            await self._maybe_prune()
            await self._follow_generations()

    async def _sequence_gap(self, partition: int, gap: SequenceGap) -> None:
        """Events of the writer's epoch are missing.  If the log was reset, ``take`` starts a new
        generation.  Otherwise a record was lost: the writer decided something nobody will
        project, so fence it at the gap; it reloads from Postgres and decides those commands again."""
        generation = self._generations.get(partition)
        await self.take(partition)
        if self._generations.get(partition) != generation:
            return
        async with self.db.acquire() as conn:
            epoch = await fence_at(conn, partition, gap.offset, "projector:sequence-gap")
        log.warning("events lost before this offset: writer fenced, its later events are dropped and decided again",
                    partition=partition, offset=gap.offset, detail=str(gap), fence_epoch=epoch)
        await self.take(partition)

    async def _follow_generations(self) -> None:
        """Notice a new log generation someone else started (an allocator that stepped over an
        unserved range): no record tells us, because the broker serves nothing where we wait."""
        if time.monotonic() - self._generations_checked < 2.0 or not self.positions:
            return
        self._generations_checked = time.monotonic()
        async with self.db.acquire() as conn:
            rows = await conn.fetch("SELECT partition, generation FROM ipam_store.partitions WHERE partition = ANY($1::int[])",
                                    list(self.positions))
        for r in rows:
            if r["generation"] != self._generations.get(r["partition"]) and r["partition"] in self.positions:
                log.warning("partition moved to a new log generation; following it", partition=r["partition"],
                            generation=r["generation"])
                await self.take(r["partition"])

    async def _maybe_prune(self) -> None:
        if time.monotonic() - self._pruned_at < 60:
            return
        self._pruned_at = time.monotonic()
        async with self.db.acquire() as conn:
            pruned = await prune_outcomes(conn, self.cfg.outcome_retention_hours)
        if pruned:
            log.info("pruned old command outcomes", rows=pruned)


class _Listener(ConsumerRebalanceListener):
    def __init__(self, role: ProjectorRole) -> None:
        self.role = role

    async def on_partitions_revoked(self, revoked) -> None:
        for tp in revoked:
            self.role.positions.pop(tp.partition, None)
        self.role.assigned -= {tp.partition for tp in revoked}

    async def on_partitions_assigned(self, assigned) -> None:
        self.role.assigned = {tp.partition for tp in assigned}
        await asyncio.gather(*(take_until_done(self.role, tp.partition, log) for tp in assigned))
