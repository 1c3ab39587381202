"""Partition leases in Postgres: which live member of a group works on which partition.

Time is Postgres's ``now()`` on both sides of every comparison, so members need no agreement
between their clocks.  A lease is only about liveness: safety stays with the epoch claimed by
whoever takes the partition (``ownership.claim``).
"""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager

import asyncpg

from .codecs import connect

# What a beat may meet while Postgres restarts or the network between us fails: retried, never fatal.
UNREACHABLE: tuple[type[BaseException], ...] = (OSError, asyncio.TimeoutError, asyncpg.PostgresError,
                                                asyncpg.InterfaceError)


class Connection:
    """A connection of the beats' own, outside the shared pool: a busy API must not delay a beat
    past the lease's expiry.  One user at a time; opened on first use and again after a failure."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.conn: asyncpg.Connection | None = None
        self._lock = asyncio.Lock()

    @asynccontextmanager
    async def use(self, timeout: float):
        async with self._lock:
            try:
                if self.conn is None or self.conn.is_closed():
                    self.conn = await asyncio.wait_for(connect(self.dsn), timeout)
                yield self.conn
            except UNREACHABLE:
                if self.conn is not None:
                    self.conn.terminate()
                self.conn = None
                raise

    async def close(self) -> None:
        if self.conn is not None and not self.conn.is_closed():
            await self.conn.close()
        self.conn = None


async def beat(conn: asyncpg.Connection, group: str, member: str, ttl: float) -> list[str]:
    """Say this member is alive for ``ttl`` seconds more; the live members of the group, sorted."""
    rows = await conn.fetch(
        """WITH me AS (
               INSERT INTO ipam_store.members ("group", member, alive_until)
               VALUES ($1, $2, now() + make_interval(secs => $3))
               ON CONFLICT ("group", member) DO UPDATE SET alive_until = EXCLUDED.alive_until
               RETURNING member),
           gone AS (
               DELETE FROM ipam_store.members WHERE "group" = $1 AND alive_until < now() - interval '1 minute')
           SELECT member FROM ipam_store.members WHERE "group" = $1 AND alive_until > now() AND member <> $2
           UNION SELECT member FROM me ORDER BY member""",
        group, member, ttl)
    return [r["member"] for r in rows]


async def hold(conn: asyncpg.Connection, group: str, member: str, partitions: list[int], ttl: float) -> set[int]:
    """Take or renew the lease of each of ``partitions`` that is ours or free (expired); the ones we hold now."""
    rows = await conn.fetch(
        """INSERT INTO ipam_store.partition_leases AS l ("group", partition, member, expires_at)
           SELECT $1, p, $2, now() + make_interval(secs => $4) FROM unnest($3::int[]) AS p
           ON CONFLICT ("group", partition) DO UPDATE
               SET member = EXCLUDED.member, expires_at = EXCLUDED.expires_at,
                   taken_at = CASE WHEN l.member = EXCLUDED.member THEN l.taken_at ELSE now() END,
                   ready_at = CASE WHEN l.member = EXCLUDED.member THEN l.ready_at END
               WHERE l.member = EXCLUDED.member OR l.expires_at < now()
           RETURNING partition""",
        group, member, partitions, ttl)
    return {r["partition"] for r in rows}


async def mark_ready(conn: asyncpg.Connection, group: str, member: str, partition: int) -> None:
    """The member has loaded the partition and works it (status, and the fault suite's hand-over times)."""
    await conn.execute('UPDATE ipam_store.partition_leases SET ready_at = now() WHERE "group" = $1 AND member = $2 '
                       "AND partition = $3", group, member, partition)


async def release(conn: asyncpg.Connection, group: str, member: str, partitions: list[int]) -> None:
    """Give these partitions up at once, so the member that should have them need not wait for expiry."""
    await conn.execute('DELETE FROM ipam_store.partition_leases WHERE "group" = $1 AND member = $2 '
                       "AND partition = ANY($3::int[])", group, member, partitions)


async def leave(conn: asyncpg.Connection, group: str, member: str) -> None:
    """A clean stop: the member and all its leases go now."""
    async with conn.transaction():
        await conn.execute('DELETE FROM ipam_store.partition_leases WHERE "group" = $1 AND member = $2', group, member)
        await conn.execute('DELETE FROM ipam_store.members WHERE "group" = $1 AND member = $2', group, member)

