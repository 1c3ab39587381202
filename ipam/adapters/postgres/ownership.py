"""Partition ownership in Postgres: epochs, fences and log generations.

Who may write a partition's events is decided here: each allocator taking a partition claims
the next epoch, and its fence (where its writes begin) is what the projector admits records by.
The watcher's single leader is chosen here too.
"""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from dataclasses import dataclass

import asyncpg
import msgspec

from ...domain.topic_records import Fences


@dataclass(frozen=True)
class PartitionRow:
    partition: int
    generation: int
    epoch: int
    fence_offset: int
    events_offset: int
    last_epoch: int | None
    last_seq: int | None
    commands_offset: int
    last_command_id: str | None
    last_record_hash: bytes | None

    @classmethod
    def of(cls, row: asyncpg.Record) -> PartitionRow:
        return cls(**{f: row[f] for f in cls.__dataclass_fields__})


_COLUMNS = ("partition, generation, epoch, fence_offset, events_offset, last_epoch, last_seq, commands_offset, "
            "last_command_id, last_record_hash")


async def read_partition(conn: asyncpg.Connection, partition: int) -> PartitionRow:
    return PartitionRow.of(await conn.fetchrow(
        f"INSERT INTO ipam_store.partitions (partition) VALUES ($1) ON CONFLICT (partition) "
        f"DO UPDATE SET partition = EXCLUDED.partition RETURNING {_COLUMNS}", partition))


async def read_partitions(conn: asyncpg.Connection, partitions: list[int]) -> dict[int, PartitionRow]:
    """The rows of these partitions that exist (a partition never worked has none)."""
    rows = await conn.fetch(f"SELECT {_COLUMNS} FROM ipam_store.partitions WHERE partition = ANY($1::int[])", partitions)
    return {r["partition"]: PartitionRow.of(r) for r in rows}


async def claim(conn: asyncpg.Connection, partition: int, owner: str) -> PartitionRow:
    """Take a partition: bump its epoch so every earlier owner's later writes are fenced off."""
    async with conn.transaction():
        row = await conn.fetchrow(
            f"INSERT INTO ipam_store.partitions (partition, epoch) VALUES ($1, 1) ON CONFLICT (partition) "
            f"DO UPDATE SET epoch = ipam_store.partitions.epoch + 1, updated_at = now() RETURNING {_COLUMNS}", partition)
        await conn.execute("INSERT INTO ipam_store.epochs (partition, epoch, generation, owner) VALUES ($1, $2, $3, $4)",
                           partition, row["epoch"], row["generation"], owner)
    return PartitionRow.of(row)


async def fence_at(conn: asyncpg.Connection, partition: int, offset: int, owner: str) -> int:
    """Start a new epoch fenced at ``offset`` with no writer: records of older epochs from there on are
    dropped, and the allocator that wrote them notices its epoch is gone and reloads from Postgres."""
    async with conn.transaction():
        row = await conn.fetchrow(
            "UPDATE ipam_store.partitions SET epoch = epoch + 1, fence_offset = $2, updated_at = now() "
            "WHERE partition = $1 RETURNING epoch, generation", partition, offset)
        await conn.execute(
            "INSERT INTO ipam_store.epochs (partition, epoch, generation, fence_offset, owner) VALUES ($1, $2, $3, $4, $5)",
            partition, row["epoch"], row["generation"], offset, owner)
    return row["epoch"]


async def current_epochs(conn: asyncpg.Connection, partitions: list[int]) -> dict[int, tuple[int, str | None, int]]:
    """partition -> (current epoch, who claimed it, log generation)."""
    rows = await conn.fetch(
        "SELECT p.partition, p.epoch, e.owner, p.generation FROM ipam_store.partitions p "
        "LEFT JOIN ipam_store.epochs e ON e.partition = p.partition AND e.epoch = p.epoch "
        "WHERE p.partition = ANY($1::int[])", partitions)
    return {r["partition"]: (r["epoch"], r["owner"], r["generation"]) for r in rows}


async def set_fence(conn: asyncpg.Connection, partition: int, epoch: int, fence_offset: int) -> bool:
    """Record where this epoch's writes begin.  False when a newer owner has claimed the partition."""
    async with conn.transaction():
        current = await conn.fetchval("SELECT epoch FROM ipam_store.partitions WHERE partition = $1 FOR UPDATE", partition)
        if current != epoch:
            return False
        await conn.execute("UPDATE ipam_store.epochs SET fence_offset = $3 WHERE partition = $1 AND epoch = $2",
                           partition, epoch, fence_offset)
        await conn.execute("UPDATE ipam_store.partitions SET fence_offset = $2, updated_at = now() WHERE partition = $1",
                           partition, fence_offset)
    return True


async def load_fences(conn: asyncpg.Connection, partition: int, generation: int) -> Fences:
    rows = await conn.fetch("SELECT epoch, fence_offset FROM ipam_store.epochs WHERE partition = $1 AND generation = $2",
                            partition, generation)
    return Fences({r["epoch"]: r["fence_offset"] for r in rows})


async def reset_log(conn: asyncpg.Connection, partition: int, seen: PartitionRow, *, events_start: int | None,
                    commands_start: int | None, reason: str) -> PartitionRow | None:
    """Start a new log generation after the broker lost or truncated a topic.

    Compare-and-set against the row we inspected: returns None when someone else changed it
    first (they reset it, or progressed, and the caller must look again).
    """
    async with conn.transaction():
        row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM ipam_store.partitions WHERE partition = $1 FOR UPDATE", partition)
        if PartitionRow.of(row) != seen:
            return None
        new = await conn.fetchrow(
            f"""UPDATE ipam_store.partitions SET generation = generation + 1,
                   events_offset = coalesce($2, events_offset),
                   last_epoch = CASE WHEN $2::bigint IS NULL THEN last_epoch END,
                   last_seq = CASE WHEN $2::bigint IS NULL THEN last_seq END,
                   applied_epoch = CASE WHEN $2::bigint IS NULL THEN applied_epoch END,
                   last_record_hash = CASE WHEN $2::bigint IS NULL THEN last_record_hash END,
                   applied_seq = CASE WHEN $2::bigint IS NULL THEN applied_seq END,
                   fence_offset = 0,
                   commands_offset = coalesce($3, commands_offset),
                   last_command_id = CASE WHEN $3::bigint IS NULL THEN last_command_id END,
                   updated_at = now()
               WHERE partition = $1 RETURNING {_COLUMNS}""", partition, events_start, commands_start)
        # The current epoch carries on into the new generation.
        await conn.execute(
            "INSERT INTO ipam_store.epochs (partition, epoch, generation, fence_offset, owner) "
            "SELECT partition, epoch, $2, NULL, 'log-reset' FROM ipam_store.partitions WHERE partition = $1 "
            "ON CONFLICT (partition, epoch) DO UPDATE SET generation = EXCLUDED.generation, fence_offset = NULL",
            partition, new["generation"])
        body = {"reason": reason, "previous_generation": seen.generation, "previous_events_offset": seen.events_offset,
                "previous_commands_offset": seen.commands_offset}
        await conn.execute(
            "INSERT INTO ipam_store.ledger (generation, partition, \"offset\", epoch, seq, at, type, command_id, body) "
            "VALUES ($1, $2, NULL, $3, 0, now(), 'LogReset', $4, $5::jsonb)", new["generation"], partition, new["epoch"],
            f"log-reset:{partition}:{new['generation']}", msgspec.json.encode(body).decode())
    return PartitionRow.of(new)


async def generations(conn: asyncpg.Connection, partitions: list[int]) -> dict[int, int]:
    """partition -> its current log generation."""
    rows = await conn.fetch("SELECT partition, generation FROM ipam_store.partitions WHERE partition = ANY($1::int[])",
                            partitions)
    return {r["partition"]: r["generation"] for r in rows}


@asynccontextmanager
async def leadership(dsn: str, key: int, scope: str, poll: float = 2.0):
    """Hold an advisory lock on a connection of its own while the block runs: one leader at a time per
    ``scope`` (a cluster: each cluster's watchers elect their own).  The lock goes with the connection, so a
    leader that dies lets another take over."""
    conn = await asyncpg.connect(dsn)
    try:
        while not await conn.fetchval("SELECT pg_try_advisory_lock($1::int4, hashtext($2))", key, scope):
            await asyncio.sleep(poll)
        yield
    finally:
        await conn.close()
