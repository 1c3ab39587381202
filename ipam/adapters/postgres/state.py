"""The state an allocator decides a partition with, loaded from what Postgres has projected.

Every pool definition (the registry), the spaces keyed to the partition with their cursors and
lease books (live, pending and quarantined addresses of every kind), and the ids of recently
decided commands.  A million leases load in seconds and little memory: rows stream through a
cursor in chunks, addresses arrive as raw bytes, and names that repeat are interned.
"""

from __future__ import annotations

import sys
import time

import asyncpg

from ...domain.decider import State
from ...domain.events import EVENT_TYPES
from ...domain.kinds import IP, MAC, Kind
from ...domain.owners import Owner
from .spaces import load_networks, load_pools
from .tables import TABLES, LeaseTable

LOAD_CHUNK = 20_000  # lease rows per fetch when loading a partition
EVENT_TAGS = tuple(t.__struct_config__.tag for t in EVENT_TYPES)


async def load_state(conn: asyncpg.Connection, partition: int, *, quarantine_ms: int, recent_max: int) -> State:
    state = State(quarantine_ms=quarantine_ms, recent_max=recent_max)
    mine: dict[Kind, list[str]] = {MAC: [], IP: []}
    for name, (pool, part, cursor) in (await load_pools(conn)).items():
        state.spaces[MAC][name] = pool
        if part == partition:
            state.book(MAC, name).cursors = [cursor] if pool.range is not None else []
            mine[MAC].append(name)
    for name, (network, cursors) in (await load_networks(conn, partition)).items():
        state.spaces[IP][name] = network
        state.book(IP, name).cursors = [cursors.get(s.cidr_text, s.start) for s in network.subnets]
        mine[IP].append(name)
    async with conn.transaction():
        for kind, names in mine.items():
            if names:
                await _load_books(conn, state, TABLES[kind], names)
    # Only events that were applied: a command whose events were dropped (zombie epoch,
    # duplicate, poison) was not decided, and its next delivery must be decided.
    rows = await conn.fetch(
        "SELECT command_id FROM ipam_store.ledger WHERE partition = $1 AND \"offset\" IS NOT NULL "
        "AND type = ANY($3::text[]) ORDER BY id DESC LIMIT $2", partition, recent_max, list(EVENT_TAGS))
    for r in reversed(rows):
        state.remember(r["command_id"])
    return state


async def _load_books(conn: asyncpg.Connection, state: State, t: LeaseTable, names: list[str]) -> None:
    books, decode, intern = state.books[t.kind], t.decode_key, sys.intern
    for name in names:  # one space at a time: no space column to decode a million times
        hold = books[name].hold
        cursor = await conn.cursor(f"SELECT {t.key_send}, namespace, vm, vm_uid, interface FROM {t.leases} "
                                   f"WHERE {t.space_column} = $1", name)
        # In chunks: a million rows fetched at once leave their records' memory behind in the heap.
        while rows := await cursor.fetch(LOAD_CHUNK):
            for raw, ns, vm, uid, iface in rows:
                hold(decode(raw), Owner(namespace=intern(ns), vm=vm, vm_uid=uid, interface=intern(iface)))
            del rows
    for space, raw, pending in await conn.fetch(
            f"SELECT {t.space_column}, {t.key_send}, (extract(epoch FROM pending_until) * 1000)::bigint FROM {t.leases} "
            f"WHERE {t.space_column} = ANY($1::text[]) AND pending_until IS NOT NULL", names):
        books[space].pending[decode(raw)] = pending
    now_ms = int(time.time() * 1000)
    for space, raw, until in await conn.fetch(
            f"SELECT {t.space_column}, {t.key_send}, (extract(epoch FROM until) * 1000)::bigint FROM {t.quarantine} "
            f"WHERE {t.space_column} = ANY($1::text[]) AND until > now()", names):
        if until > now_ms:
            books[space].quarantine[decode(raw)] = until
