"""What the allocator and the projector share: working the partitions of one topic that Postgres gives us.

Partition leases in Postgres (``membership``) decide who works on which partition; what a
partition's owner knows (its state, its position) comes from Postgres when it takes the
partition.  Taking must not give up, and must not hold up the beats that keep the other
partitions ours: each take runs as its own task, retried with backoff while the partition stays
ours, and cancelled when it is lost.  Every take ends with a seek: records fetched for a
partition before it was taken are skipped and fetched again.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from typing import Generic, TypeVar

import structlog

from ..adapters import kafka
from ..config import Config
from .membership import Membership

FIRST_RETRY, LONGEST_RETRY = 0.5, 5.0  # seconds between attempts to take a partition


Kept = TypeVar("Kept")  # what a role keeps of each partition it has taken


class PartitionRole(ABC, Generic[Kept]):
    """A member of one group; subclasses say how to take, hold, drop and work a partition."""

    name = "partitioned"

    def __init__(self, cfg: Config, db, topic: str, group: str, **consumer_options) -> None:
        self.cfg, self.db = cfg, db
        self.log = structlog.get_logger(f"ipam.{self.name}")
        # the pod name in Kubernetes; the pid tells processes apart on one machine (the fault suite)
        self.owner_id = f"{socket.gethostname()}/{self.name}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.assigned: set[int] = set()
        self.member = kafka.PartitionReader(cfg, topic, **consumer_options)
        self.membership = Membership(cfg.database_dsn, group, self.owner_id, cfg.partitions, ttl=cfg.ownership_ttl_seconds,
                                     beat=cfg.ownership_beat_seconds, gained=self._gained, lost=self._lost)
        self.producer = kafka.producer(cfg)
        self._stopping = asyncio.Event()
        self._takes: dict[int, asyncio.Task] = {}
        self.taken: dict[int, Kept] = {}  # partitions taken and ready to work -> what the role keeps of each
        self.quiet = False  # the log is being swapped (``quiesced``): the role's own log checks wait for it

    def held(self) -> set[int]:
        return set(self.taken)

    def drop(self, partitions: set[int]) -> None:
        for p in partitions:
            self.taken.pop(p, None)

    # --- what a subclass provides ------------------------------------------------------------

    @abstractmethod
    async def take(self, partition: int) -> None:
        """Load what owning the partition needs (from Postgres) and start working it."""

    @abstractmethod
    async def work(self, batches: dict[int, list]) -> None:
        """Handle what was fetched (partition -> records)."""

    async def tick(self) -> None:  # noqa: B027 (optional: most roles have no periodic checks)
        """Periodic checks between fetches."""

    max_records = 5000

    # --- the loop ------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return bool(self.assigned) and self.assigned <= self.held()

    async def start(self) -> None:
        """Connect; the service then runs ``membership.run`` and ``run`` as supervised tasks."""
        await self.producer.start()
        await self.member.start()

    async def run(self) -> None:
        while not self._stopping.is_set():
            await self.tick()
            batches = await self.member.fetch(self.max_records)
            if batches:
                await self.work(batches)

    async def recover(self) -> None:
        """After a failure of ``run`` (mid-batch): take every partition again from Postgres."""
        self.drop(set(self.held()))
        for p in sorted(self.assigned):
            await self.take(p)

    def retake_all(self, why: str = "after a broker outage") -> None:
        """Take every partition again (after a broker outage, a trimmed log): each take checks the log is the one
        Postgres knows."""
        self.log.info(f"taking every partition again {why}", partitions=sorted(self.assigned))
        self.drop(set(self.held()))
        for p in sorted(self.assigned):
            self.take_until_done(p)

    # --- quiescing: what a planned swap of the log needs (ipam/devenv/log_trim.py) -----------------------

    def read_to(self) -> dict[int, int]:
        """Partition -> offset of the next record this role reads, for every partition it works: below it, every
        record was decided (commands) or projected (events)."""
        return {}

    def busy(self) -> str | None:
        """What a drain must wait for before the log may be swapped, or None: idle, every partition taken."""
        taking = sorted(self.assigned - self.held())
        return f"partitions being taken: {taking}" if taking else None

    @contextlib.asynccontextmanager
    async def quiesced(self) -> AsyncIterator[None]:
        """While the log is swapped under the role: its own checks of the log (epochs, generations) wait, since
        they would see the new generations first and take everything again."""
        self.quiet = True
        try:
            yield
        finally:
            self.quiet = False

    async def resume_in_new_log(self) -> None:
        """The topics were swapped for empty ones with nothing lost: go on from offset 0 in the new generation.
        A subclass that can keep what it holds overrides this; taking again is always right."""
        self.retake_all("in the swapped log")

    async def stop(self) -> None:
        self._stopping.set()

    async def close(self) -> None:
        for task in self._takes.values():
            task.cancel()
        await self.membership.leave()  # the others take our partitions on their next beat
        await self.member.stop()
        await self.producer.stop()

    # --- assignment -----------------------------------------------------------------------------

    async def _lost(self, partitions: set[int]) -> None:
        for p in partitions:
            task = self._takes.pop(p, None)
            if task is not None:
                task.cancel()
        self.drop(partitions)
        self.assigned -= partitions
        await self.member.assign(self.assigned)

    async def _gained(self, partitions: set[int]) -> None:
        self.assigned |= partitions
        await self.member.assign(self.assigned)
        for p in sorted(partitions):
            self.take_until_done(p)

    async def _try_take(self, partition: int) -> bool:
        try:
            await self.take(partition)
            return True
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self.log.warning("cannot take partition yet; retrying", partition=partition, error=repr(e))
            return False

    def take_until_done(self, partition: int) -> None:
        """Take in the background, retrying with backoff while the partition stays ours."""
        if partition in self._takes and not self._takes[partition].done():
            return

        async def attempts() -> None:
            wait = FIRST_RETRY
            while partition in self.assigned:
                if await self._try_take(partition):
                    if partition in self.held():
                        await self.membership.ready(partition)
                    return
                await asyncio.sleep(wait)
                wait = min(LONGEST_RETRY, wait * 2)

        task = asyncio.get_running_loop().create_task(attempts(), name=f"{self.name}-take-{partition}")
        self._takes[partition] = task
        task.add_done_callback(lambda done: self._takes.pop(partition, None) if self._takes.get(partition) is done else None)
