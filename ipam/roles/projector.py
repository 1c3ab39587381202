"""The projector: applies each events partition to Postgres, batch by batch, exactly once.

Its position lives in Postgres (``ipam_store.partitions.events_offset``), written in the
same transaction as the batch; partition leases (roles/membership.py) only decide who works on what.
"""

from __future__ import annotations

import time

from .. import failpoints, telemetry
from ..adapters import kafka
from ..adapters.postgres import outcomes
from ..adapters.postgres.ownership import fence_at, generations
from ..adapters.postgres.projection import OffsetConflict, Projection, SequenceGap
from ..config import Config
from .continuity import ensure_continuity
from .partitioned import PartitionRole


class Projector(PartitionRole[int]):  # the next offset to project
    name = "projector"
    max_records = 20000

    def __init__(self, cfg: Config, db) -> None:
        super().__init__(cfg, db, cfg.events_topic, f"{cfg.group_prefix}-projector",
                         max_partition_fetch_bytes=8 * 1024 * 1024)
        self.positions: dict[int, int] = self.taken
        self._generations: dict[int, int] = {}
        self._applier = Projection(lambda name: kafka.partition_for(name, cfg.partitions))
        self._pruned_at = 0.0
        self._generations_checked = 0.0

    async def take(self, partition: int) -> None:
        async with kafka.LogReader(self.cfg) as reader, self.db.acquire() as conn:
            row = await ensure_continuity(conn, reader, self.cfg, partition)
        self._applier.forget(partition)
        self._generations[partition] = row.generation
        if partition not in self.assigned:
            return
        self.member.seek(partition, row.events_offset)
        self.positions[partition] = row.events_offset
        self.log.info("projecting partition", partition=partition, offset=row.events_offset, generation=row.generation)

    def read_to(self) -> dict[int, int]:
        return dict(self.positions)

    async def resume_in_new_log(self) -> None:
        """Everything was projected before the swap: go on from offset 0 of each partition's new generation."""
        async with self.db.acquire() as conn:
            current = await generations(conn, sorted(self.assigned))
        for partition in sorted(self.assigned):
            if partition not in self.positions:
                self.take_until_done(partition)  # a take in progress: it reads the new row
                continue
            self._applier.forget(partition)
            self._generations[partition] = current[partition]
            self.member.seek(partition, 0)
            self.positions[partition] = 0

    async def work(self, batches: dict[int, list]) -> None:
        for partition, msgs in batches.items():
            expected = self.positions.get(partition)
            if expected is None:
                continue
            if msgs[0].offset < expected:
                # records before our position: the broker rewound us (its log was reset)
                self.log.warning("events partition went backwards; checking the log", partition=partition,
                                 expected=expected, got=msgs[0].offset)
                await self.take(partition)
                continue
            # Offsets need not be contiguous (Kafka skips offsets for control records and compaction; the
            # local broker was seen skipping one): the sequence check is what notices a lost event.
            await self._apply(partition, expected, [(m.offset, m.value) for m in msgs])

    async def _apply(self, partition: int, expected: int, batch: list[tuple[int, bytes]]) -> None:
        try:
            async with self.db.acquire() as conn:
                result = await self._applier.apply(conn, partition, expected, batch)
        except SequenceGap as e:
            await self._sequence_gap(partition, e)
            return
        except OffsetConflict as e:
            self.log.warning("partition offset moved under us; resuming from Postgres", partition=partition,
                             expected=expected, stored=e.stored)
            await self.take(partition)
            return
        failpoints.hit("projector.after_commit")
        if self.positions.get(partition) != expected:  # lost (or taken again) while applying: Postgres says where
            return
        self.positions[partition] = result.next_offset
        telemetry.projector_batch.labels(str(partition)).observe(len(batch))
        self.member.record_lag("projector", partition, result.next_offset)
        for offset, raw, reason in result.dead_letters:
            await kafka.dead_letter(self.producer, self.cfg, self.cfg.events_topic, partition, offset, raw, reason)
        skipped = {"zombie": result.dropped, "poison": result.poison, "duplicate": result.duplicates}
        for reason, count in skipped.items():
            if count:
                telemetry.records_skipped.labels(reason).inc(count)
        if any(skipped.values()):
            self.log.warning("records skipped", partition=partition, **skipped)

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
        self.log.warning("events lost before this offset: writer fenced, its later events are dropped and decided again",
                         partition=partition, offset=gap.offset, detail=str(gap), fence_epoch=epoch)
        await self.take(partition)

    async def tick(self) -> None:
        await self._maybe_prune()
        await self._follow_generations()

    async def _follow_generations(self) -> None:
        """Notice a new log generation someone else started (an allocator that stepped over an
        unserved range): no record tells us, because the broker serves nothing where we wait."""
        if time.monotonic() - self._generations_checked < 2.0 or not self.positions or self.quiet:
            return
        self._generations_checked = time.monotonic()
        async with self.db.acquire() as conn:
            current = await generations(conn, list(self.positions))
        for partition, generation in current.items():
            if generation != self._generations.get(partition) and partition in self.positions:
                self.log.warning("partition moved to a new log generation; following it", partition=partition,
                                 generation=generation)
                await self.take(partition)

    async def _maybe_prune(self) -> None:
        if time.monotonic() - self._pruned_at < 60:
            return
        self._pruned_at = time.monotonic()
        async with self.db.acquire() as conn:
            pruned = await outcomes.prune(conn, self.cfg.outcome_retention_hours)
        if pruned:
            self.log.info("pruned old command outcomes", rows=pruned)
