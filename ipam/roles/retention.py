"""Apache Kafka's way of keeping the commands topic short: DeleteRecords below what Postgres has projected.

A command is read once, by the allocator that decides it; once the events it produced are projected
(``ipam_store.partitions.commands_offset`` has passed it), nothing reads it again: a takeover resumes
from that offset, and the continuity check (continuity.py) reads only the last command consumed.  So
every record below ``commands_offset - 1`` can go, and is deleted on each pass, on every partition.

The events topic is left to the broker's retention (``retention.ms`` on ``ipam.events``, set by the
deployment for its consumers): it is a public API, read by consumers ipam does not know.

The local broker refuses DeleteRecords; there the log trimmer (log_trim.py) swaps topics instead.
Any number of processes may run this: DeleteRecords only ever moves a log's start forward.
"""

from __future__ import annotations

import asyncio

import structlog

from ..adapters import topics
from ..adapters.postgres.ownership import read_partitions
from ..config import Config

log = structlog.get_logger("ipam.retention")

PASS_SECONDS = 30.0  # how often decided commands are deleted: often enough that a busy partition stays short


class CommandRetention:
    """Deletes the commands every partition's projection has passed (keeping the last one, for continuity)."""

    def __init__(self, cfg: Config, db, every: float = PASS_SECONDS) -> None:
        self.cfg, self.db, self.every = cfg, db, every
        self.log_starts: dict[int, int] = {}  # partition -> the commands log's start after the last pass

    async def step(self) -> dict[int, int]:
        """One pass: returns partition -> the start of its commands log after it, for the partitions that had
        something to delete (one already past the offset asked for stays: DeleteRecords never moves a start back)."""
        async with self.db.acquire() as conn:
            rows = await read_partitions(conn, list(range(self.cfg.partitions)))
        before = {p: row.commands_offset - 1 for p, row in rows.items()
                  if row.commands_offset > 1 and self.log_starts.get(p) != row.commands_offset - 1}  # idle ones: no call
        if not before:
            return {}
        self.log_starts.update(await topics.delete_records_before(self.cfg, self.cfg.commands_topic, before))
        return {p: self.log_starts[p] for p in before}

    async def run(self) -> None:
        while True:
            try:
                starts = await self.step()
                if starts:
                    log.debug("decided commands deleted", log_starts=starts)
            except (topics.TopicError, OSError) as e:  # a broker away, a leader moving: the next pass tries again
                log.warning("deleting decided commands failed; retrying", error=repr(e))
            await asyncio.sleep(self.every)
