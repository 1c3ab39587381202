"""Partition ownership in Postgres: epochs, fences, log generations, and loading an allocator's state."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

import asyncpg
import msgspec

from ...domain.allocation import PoolBook, State, mac_of
from ...domain.fencing import Fences
from ...domain.ip import parse_address
from ...domain.ip_allocation import NetworkBook, network_from, spec_of
from ...domain.messages import EVENT_TYPES, NetworkDefined, Owner

EVENT_TAGS = tuple(t.__struct_config__.tag for t in EVENT_TYPES)
from ...domain.pools import MacRange, Pool


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


LOAD_CHUNK = 20_000  # lease rows per fetch when loading a partition

_COLUMNS = ("partition, generation, epoch, fence_offset, events_offset, last_epoch, last_seq, commands_offset, "
            "last_command_id, last_record_hash")


async def read_partition(conn: asyncpg.Connection, partition: int) -> PartitionRow:
    row = await conn.fetchrow(
        f"INSERT INTO ipam_store.partitions (partition) VALUES ($1) ON CONFLICT (partition) "
        f"DO UPDATE SET partition = EXCLUDED.partition RETURNING {_COLUMNS}",
        partition,
    )
    return PartitionRow.of(row)


async def claim(conn: asyncpg.Connection, partition: int, owner: str) -> PartitionRow:
    """Take a partition: bump its epoch so every earlier owner's later writes are fenced off."""
    async with conn.transaction():
        row = await conn.fetchrow(
            f"INSERT INTO ipam_store.partitions (partition, epoch) VALUES ($1, 1) ON CONFLICT (partition) "
            f"DO UPDATE SET epoch = ipam_store.partitions.epoch + 1, updated_at = now() RETURNING {_COLUMNS}",
            partition,
        )
        await conn.execute(
            "INSERT INTO ipam_store.epochs (partition, epoch, generation, owner) VALUES ($1, $2, $3, $4)",
            partition,
            row["epoch"],
            row["generation"],
            owner,
        )
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


async def current_epochs(conn: asyncpg.Connection, partitions: list[int]) -> dict[int, tuple[int, str | None]]:
    """partition -> (current epoch, who claimed it)."""
    rows = await conn.fetch(
        "SELECT p.partition, p.epoch, e.owner FROM ipam_store.partitions p "
        "LEFT JOIN ipam_store.epochs e ON e.partition = p.partition AND e.epoch = p.epoch "
        "WHERE p.partition = ANY($1::int[])", partitions)
    return {r["partition"]: (r["epoch"], r["owner"]) for r in rows}


async def set_fence(conn: asyncpg.Connection, partition: int, epoch: int, fence_offset: int) -> bool:
    """Record where this epoch's writes begin.  False when a newer owner has claimed the partition."""
    async with conn.transaction():
        current = await conn.fetchval("SELECT epoch FROM ipam_store.partitions WHERE partition = $1 FOR UPDATE", partition)
        if current != epoch:
            return False
        await conn.execute(
            "UPDATE ipam_store.epochs SET fence_offset = $3 WHERE partition = $1 AND epoch = $2", partition, epoch, fence_offset
        )
        await conn.execute(
            "UPDATE ipam_store.partitions SET fence_offset = $2, updated_at = now() WHERE partition = $1", partition, fence_offset
        )
    return True


async def load_fences(conn: asyncpg.Connection, partition: int, generation: int) -> Fences:
    rows = await conn.fetch(
        "SELECT epoch, fence_offset FROM ipam_store.epochs WHERE partition = $1 AND generation = $2", partition, generation
    )
    return Fences({r["epoch"]: r["fence_offset"] for r in rows})


async def reset_log(
    conn: asyncpg.Connection,
    partition: int,
    seen: PartitionRow,
    *,
    events_start: int | None,
    commands_start: int | None,
    reason: str,
) -> PartitionRow | None:
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
               WHERE partition = $1 RETURNING {_COLUMNS}""",
            partition,
            events_start,
            commands_start,
        )
        # The current epoch carries on into the new generation.
        await conn.execute(
            "INSERT INTO ipam_store.epochs (partition, epoch, generation, fence_offset, owner) "
            "SELECT partition, epoch, $2, NULL, 'log-reset' FROM ipam_store.partitions WHERE partition = $1 "
            "ON CONFLICT (partition, epoch) DO UPDATE SET generation = EXCLUDED.generation, fence_offset = NULL",
            partition,
            new["generation"],
        )
        body = {
            "reason": reason,
            "previous_generation": seen.generation,
            "previous_events_offset": seen.events_offset,
            "previous_commands_offset": seen.commands_offset,
        }
        await conn.execute(
            "INSERT INTO ipam_store.ledger (generation, partition, \"offset\", epoch, seq, at, type, command_id, body) "
            "VALUES ($1, $2, NULL, $3, 0, now(), 'LogReset', $4, $5::jsonb)",
            new["generation"],
            partition,
            new["epoch"],
            f"log-reset:{partition}:{new['generation']}",
            msgspec.json.encode(body).decode(),
        )
    return PartitionRow.of(new)


def pool_of_row(r: asyncpg.Record) -> Pool:
    rng = None if r["external"] else MacRange(mac_of(r["first_mac"]), mac_of(r["last_mac"]))
    return Pool(name=r["name"], range=rng, namespaces=tuple(r["namespaces"]), default=r["is_default"], start=r["start_offset"])


async def load_pools(conn: asyncpg.Connection) -> dict[str, tuple[Pool, int, int]]:
    """All pool definitions with (pool, partition, cursor)."""
    rows = await conn.fetch(
        "SELECT name, first_mac::text, last_mac::text, external, namespaces, is_default, start_offset, partition, cursor "
        "FROM ipam_store.pools"
    )
    return {r["name"]: (pool_of_row(r), r["partition"], r["cursor"]) for r in rows}


async def load_state(conn: asyncpg.Connection, partition: int, *, quarantine_ms: int, recent_max: int) -> State:
    """The projected state of one partition: all pool definitions, this partition's books, recent ids."""
    state = State(quarantine_ms=quarantine_ms, recent_max=recent_max)
    pools = await load_pools(conn)
    mine = []
    for name, (pool, part, cursor) in pools.items():
        state.pools[name] = pool
        if part == partition:
            book = state.books[name] = PoolBook(pool)
            book.cursor = cursor
            mine.append(name)
    if mine:
        async with conn.transaction():
            # In chunks through a cursor: a million rows fetched at once leave their records' memory
            # behind in the allocator's heap.  Namespace and interface names repeat: one string each.
            intern, from_bytes = sys.intern, int.from_bytes
            for pool in mine:  # one pool at a time: no pool column to decode a million times
                hold = state.books[pool].hold
                cursor = await conn.cursor(
                    "SELECT macaddr_send(mac), namespace, vm, vm_uid, interface "  # the MAC as 6 raw bytes
                    "FROM ipam_store.mac_leases WHERE pool = $1", pool)
                while rows := await cursor.fetch(LOAD_CHUNK):
                    for mac, ns, vm, uid, iface in rows:
                        hold(from_bytes(mac, "big"), Owner(namespace=intern(ns), vm=vm, vm_uid=uid, interface=intern(iface)))
                    del rows
            for r in await conn.fetch(
                    "SELECT pool, macaddr_send(mac) AS mac, (extract(epoch FROM pending_until) * 1000)::bigint AS pending "
                    "FROM ipam_store.mac_leases WHERE pool = ANY($1::text[]) AND pending_until IS NOT NULL", mine):
                state.books[r["pool"]].pending[int.from_bytes(r["mac"], "big")] = r["pending"]
            now_ms = int(time.time() * 1000)
            for r in await conn.fetch(
                "SELECT pool, mac::text, (extract(epoch FROM until) * 1000)::bigint AS until FROM ipam_store.mac_quarantine "
                "WHERE pool = ANY($1::text[]) AND until > now()",
                mine,
            ):
                if r["until"] > now_ms:
                    state.books[r["pool"]].quarantine[mac_of(r["mac"])] = r["until"]
    await load_networks(conn, state, partition)
    # Only events that were applied: a command whose events were dropped (zombie epoch,
    # duplicate, poison) was not decided, and its next delivery must be decided.
    rows = await conn.fetch(
        "SELECT command_id FROM ipam_store.ledger WHERE partition = $1 AND \"offset\" IS NOT NULL "
        "AND type = ANY($3::text[]) ORDER BY id DESC LIMIT $2",
        partition,
        recent_max,
        list(EVENT_TAGS),
    )
    for r in reversed(rows):
        state.remember(r["command_id"])
    return state


async def load_networks(conn: asyncpg.Connection, state: State, partition: int) -> None:
    """The networks keyed to this partition, with their cursors, leases, pending leases and quarantine."""
    rows = await conn.fetch("SELECT name, definition::text FROM ipam_store.networks WHERE partition = $1", partition)
    if not rows:
        return
    for r in rows:
        ev = msgspec.json.decode(r["definition"], type=NetworkDefined)
        state.networks[r["name"]] = NetworkBook(network_from(ev), spec_of(ev))
    names = list(state.networks)
    async with conn.transaction():
        for r in await conn.fetch("SELECT network, cidr::text, cursor::text FROM ipam_store.network_subnets "
                                  "WHERE network = ANY($1::text[])", names):
            book = state.networks[r["network"]]
            for i, sn in enumerate(book.network.subnets):
                if str(sn.cidr) == r["cidr"]:
                    book.cursors[i] = int(r["cursor"])
        for r in await conn.fetch(
                "SELECT network, host(address) AS address, namespace, vm, vm_uid, interface, "
                "(extract(epoch FROM pending_until) * 1000)::bigint AS pending "
                "FROM ipam_store.ip_leases WHERE network = ANY($1::text[])", names):
            book = state.networks[r["network"]]
            key = parse_address(r["address"])
            book.hold(key, Owner(namespace=r["namespace"], vm=r["vm"], vm_uid=r["vm_uid"], interface=r["interface"]))
            if r["pending"] is not None:
                book.pending[key] = r["pending"]
        now_ms = int(time.time() * 1000)
        for r in await conn.fetch(
                "SELECT network, host(address) AS address, (extract(epoch FROM until) * 1000)::bigint AS until "
                "FROM ipam_store.ip_quarantine WHERE network = ANY($1::text[]) AND until > now()", names):
            if r["until"] > now_ms:
                state.networks[r["network"]].quarantine[parse_address(r["address"])] = r["until"]
