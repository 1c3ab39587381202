"""What the allocator and the projector share: owning partitions of one topic through a consumer group.

Kafka group membership decides who works on which partition; what a partition's owner knows
(its state, its position) comes from Postgres when it takes the partition.  Taking must not
give up: a failure inside a rebalance callback would leave a partition assigned but never
loaded (aiokafka logs the error and keeps the assignment), so a failed take is retried in the
background while the partition stays ours.  Every take ends with a seek: records fetched for a
partition before it was taken are skipped and fetched again.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod

import structlog

from ..adapters import kafka
from ..config import Config

FIRST_RETRY, LONGEST_RETRY = 0.5, 5.0  # seconds between attempts to take a partition


class PartitionRole(ABC):
    """A member of one consumer group; subclasses say how to take, hold, drop and work a partition."""

    name = "partitioned"

    def __init__(self, cfg: Config, db, topic: str, group: str, **consumer_options) -> None:
        self.cfg, self.db = cfg, db
        self.log = structlog.get_logger(f"ipam.{self.name}")
        self.assigned: set[int] = set()
        self.member = kafka.GroupMember(cfg, topic, group, self._assigned, self._revoked, **consumer_options)
        self.producer = kafka.producer(cfg)
        self._stopping = asyncio.Event()
        self._retries: set[asyncio.Task] = set()
        self.taken: dict[int, object] = {}  # partitions taken and ready to work -> what the role keeps of each

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

    async def stop(self) -> None:
        self._stopping.set()

    async def close(self) -> None:
        for task in self._retries:
            task.cancel()
        await self.member.stop()  # leaves the group
        await self.producer.stop()

    # --- assignment -----------------------------------------------------------------------------

    async def _revoked(self, partitions: list[int]) -> None:
        self.drop(set(partitions))
        self.assigned -= set(partitions)

    async def _assigned(self, partitions: list[int]) -> None:
        self.assigned = set(partitions)
        await asyncio.gather(*(self.take_until_done(p) for p in partitions))

    async def _try_take(self, partition: int) -> bool:
        try:
            await self.take(partition)
            return True
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self.log.warning("cannot take partition yet; retrying", partition=partition, error=repr(e))
            return False

    async def take_until_done(self, partition: int) -> None:
        """Try once inline; on failure keep trying in the background while the partition stays ours."""
        if await self._try_take(partition):
            return

        async def retry() -> None:
            wait = FIRST_RETRY
            while partition in self.assigned:
                await asyncio.sleep(wait)
                if await self._try_take(partition):
                    return
                wait = min(LONGEST_RETRY, wait * 2)

        task = asyncio.get_running_loop().create_task(retry(), name=f"{self.name}-take-{partition}")
        self._retries.add(task)
        task.add_done_callback(self._retries.discard)
