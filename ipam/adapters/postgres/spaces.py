"""Address spaces in Postgres: MAC pools, IP networks and their subnets, next-fit cursors, and the lease
books of a partition.

Definitions are written from the events that make them (``PoolCreated``, ``NetworkDefined``,
``NetworkDeleted``) inside the projector's batch transaction, and read back as domain objects by the
allocator, the projector (cursor arithmetic), the API and the watcher.  ``load_state`` is what an
allocator decides a partition with: every pool definition (the registry), the spaces keyed to the
partition with their books (live, pending and quarantined addresses of every kind) and the ids of
recently decided commands.  A million leases load in seconds and little memory: rows stream through a
cursor in chunks, addresses arrive as raw bytes, and names that repeat are interned.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import sys

import asyncpg
import msgspec

from ...clock import now_ms
from ...domain.book import Space
from ...domain.decider import State
from ...domain.events import (
    EVENT_TYPES,
    NetworkDefined,
    PoolChanged,
    PoolCreated,
    PoolDeleted,
    PoolRangeSet,
    PoolRetired,
    encoder,
)
from ...domain.kinds import IP, MAC, Kind, Owner
from ...domain.mac import format_mac
from ...domain.networks import Network, network_from
from ...domain.pools import MacRange, Pool, parse_range, pool_from_event
from .tables import TABLES, LeaseTable, ts


def _pool_of_row(r: asyncpg.Record) -> Pool:
    rng = None if r["external"] else MacRange(int(r["range_lo"]), int(r["range_hi"]))
    claim = None if r["external"] else MacRange(int(r["claim_lo"]), int(r["claim_hi"]))
    return Pool(name=r["name"], range=rng, namespaces=tuple(r["namespaces"]), default=r["is_default"], start=r["start_offset"],
                claimed=None if claim == rng else claim, retired=r["retired"])


async def load_pools(conn, name: str | None = None) -> dict[str, tuple[Pool, int, int]]:
    """Every pool definition (or one) with (pool, partition, cursor)."""
    rows = await conn.fetch("SELECT name, range_lo, range_hi, claim_lo, claim_hi, retired, external, namespaces, is_default, "
                            "start_offset, partition, cursor FROM ipam_store.pools WHERE $1::text IS NULL OR name = $1", name)
    return {r["name"]: (_pool_of_row(r), r["partition"], r["cursor"]) for r in rows}


async def load_networks(conn, partition: int | None = None) -> dict[str, tuple[Network, dict[str, int]]]:
    """Network definitions (of one partition, or all) with their cursors by CIDR."""
    rows = await conn.fetch("SELECT name, definition::text FROM ipam_store.networks WHERE $1::int IS NULL OR partition = $1",
                            partition)
    cursors: dict[str, dict[str, int]] = {}
    for r in await conn.fetch("SELECT network, cidr::text, cursor::text FROM ipam_store.network_subnets "
                              "WHERE network = ANY($1::text[])", [r["name"] for r in rows]):
        cursors.setdefault(r["network"], {})[r["cidr"]] = int(r["cursor"])
    return {r["name"]: (network_from(msgspec.json.decode(r["definition"], type=NetworkDefined)), cursors.get(r["name"], {}))
            for r in rows}


async def load_spaces(conn) -> dict[Kind, dict[str, Space]]:
    """Every pool and network, built from its stored definition."""
    return {MAC: {n: p for n, (p, _, _) in (await load_pools(conn)).items()},
            IP: {n: net for n, (net, _) in (await load_networks(conn)).items()}}


async def stored_networks(conn) -> dict[str, NetworkDefined]:
    """Network definitions as they were defined (the watcher compares NADs with them)."""
    rows = await conn.fetch("SELECT name, definition::text FROM ipam_store.networks")
    return {r["name"]: msgspec.json.decode(r["definition"], type=NetworkDefined) for r in rows}


# In the batch's transaction: readers that see the new number see the new definitions (``catalog_version``).
BUMP_CATALOG = "UPDATE ipam_store.catalog_version SET version = version + 1"
CATALOG_VERSION = "SELECT version FROM ipam_store.catalog_version"


CREATE_POOL = """INSERT INTO ipam_store.pools (name, first_mac, last_mac, range_lo, range_hi, lo_ordinal, size, namespaces,
                       is_default, external, start_offset, cursor, partition, created_at, command_id, claim_lo, claim_hi)
                   VALUES ($1, $2::macaddr, $3::macaddr, $4, $5, $6, $7, $8, $9, $10, $11, $11, $12, $13, $14, $4, $5)
                   ON CONFLICT (name) DO NOTHING"""


class SpaceChanges:
    """The definitions one batch creates, changes or deletes, and where its leases leave next-fit."""

    def __init__(self, spaces: dict[Kind, dict[str, Space]], partition_of) -> None:
        self.spaces = spaces  # every definition, kept current through the batch (cursor arithmetic needs them)
        self.partition_of = partition_of  # space name -> partition
        self.pool_writes: list[tuple[str, tuple]] = []  # changes to existing pools, in order
        self.defined: dict[str, NetworkDefined | None] = {}  # None: deleted
        self.advances: list[tuple[Kind, str, str]] = []  # (kind, space, address) of each lease next-fit handed out

    def pool_created(self, ev: PoolCreated) -> None:
        self.spaces[MAC][ev.name] = pool_from_event(ev)
        self.pool_writes.append((CREATE_POOL, self._pool_row(ev)))

    def pool_changed(self, ev: PoolChanged) -> None:
        rng = None if ev.range is None else parse_range(ev.range)
        self.pool_writes.append(("UPDATE ipam_store.pools SET claim_lo = $2, claim_hi = $3, namespaces = $4, is_default = $5 "
                                 "WHERE name = $1", (ev.name, rng and rng.first, rng and rng.last, list(ev.namespaces),
                                                     ev.default)))

    def pool_range_set(self, ev: PoolRangeSet) -> None:
        rng = parse_range(ev.range)
        self.advances = [a for a in self.advances if a[0] is not MAC or a[1] != ev.pool]  # cursors of the old range
        pool = self.spaces[MAC].get(ev.pool)
        if isinstance(pool, Pool):
            self.spaces[MAC][ev.pool] = dataclasses.replace(pool, range=rng, start=ev.start)
        self.pool_writes.append((
            "UPDATE ipam_store.pools SET first_mac = $2::macaddr, last_mac = $3::macaddr, range_lo = $4, range_hi = $5, "
            "lo_ordinal = $6, size = $7, start_offset = $8, cursor = $8 WHERE name = $1",
            (ev.pool, format_mac(rng.first), format_mac(rng.last), rng.first, rng.last, rng.lo, rng.size, ev.start)))
        self.pool_writes.append(("DELETE FROM ipam_store.mac_quarantine WHERE pool = $1 AND NOT (mac BETWEEN $2 AND $3)",
                                 (ev.pool, format_mac(rng.first), format_mac(rng.last))))

    def pool_retired(self, ev: PoolRetired) -> None:
        self.pool_writes.append(("UPDATE ipam_store.pools SET retired = true WHERE name = $1", (ev.pool,)))
        self.pool_writes.append(("DELETE FROM ipam_store.mac_quarantine WHERE pool = $1", (ev.pool,)))

    def pool_deleted(self, ev: PoolDeleted) -> None:
        self.spaces[MAC].pop(ev.name, None)
        self.pool_writes.append(("DELETE FROM ipam_store.mac_quarantine WHERE pool = $1", (ev.name,)))
        self.pool_writes.append(("DELETE FROM ipam_store.pools WHERE name = $1", (ev.name,)))

    def network_defined(self, ev: NetworkDefined) -> None:
        if ev.created:  # a network defined afresh forgets the cursors of an earlier one of that name
            self._forget_advances(ev.name)
        self.defined[ev.name] = ev
        self.spaces[IP][ev.name] = network_from(ev)

    def network_deleted(self, ev) -> None:
        self._forget_advances(ev.name)
        self.defined[ev.name] = None
        self.spaces[IP].pop(ev.name, None)

    def _forget_advances(self, network: str) -> None:
        self.advances = [a for a in self.advances if a[0] is not IP or a[1] != network]

    def advance(self, kind: Kind, name: str, address: str) -> None:
        self.advances.append((kind, name, address))

    async def _cursors(self, conn) -> dict[Kind, dict[tuple, int]]:
        """The cursor of each region a lease was handed out from, the last one winning."""
        if any(name not in self.spaces[kind] for kind, name, _ in self.advances):  # defined by another projector
            for kind, stored in (await load_spaces(conn)).items():
                for name, definition in stored.items():
                    self.spaces[kind].setdefault(name, definition)
        cursors: dict[Kind, dict[tuple, int]] = {MAC: {}, IP: {}}
        for kind, name, address in self.advances:
            space = self.spaces[kind].get(name)
            if space is None:  # deleted later in the batch
                continue
            key = space.parse_own(address)
            i = space.region_of(key)
            if i is not None:
                region = space.regions[i]
                cursors[kind][TABLES[kind].cursor_of(name, region)] = (region.offset_of(key) + 1) % region.span
        return cursors

    async def write_definitions(self, conn) -> None:
        for sql, args in self.pool_writes:  # in the order decided: a pool deleted and made again stays made
            await conn.execute(sql, *args)
        for ev in self.defined.values():
            if ev is not None:
                await self._define(conn, ev)
        if self.pool_writes or self.defined:
            await conn.execute(BUMP_CATALOG)

    async def write_cursors(self, conn) -> None:
        for kind, cursors in (await self._cursors(conn)).items():
            if cursors:
                await conn.execute(TABLES[kind].cursor_sql(), *zip(*[(*k, v) for k, v in cursors.items()], strict=True))

    async def write_deletions(self, conn) -> None:
        for name, ev in self.defined.items():
            if ev is None:
                await conn.execute("DELETE FROM ipam_store.ip_quarantine WHERE network = $1", name)
                await conn.execute("DELETE FROM ipam_store.networks WHERE name = $1", name)

    def _pool_row(self, ev: PoolCreated) -> tuple:
        pool = self.spaces[MAC][ev.name]
        assert isinstance(pool, Pool), "pools are the MAC spaces"
        rng = pool.range
        common = (list(ev.namespaces), ev.default, rng is None, ev.start, self.partition_of(ev.name), ts(ev.at), ev.command_id)
        if rng is None:
            return (ev.name, None, None, None, None, None, 0, *common)
        return (ev.name, format_mac(rng.first), format_mac(rng.last), rng.first, rng.last, rng.lo, rng.size, *common)

    async def _define(self, conn, ev: NetworkDefined) -> None:
        known = self.spaces[IP].get(ev.name)
        network = known if isinstance(known, Network) else network_from(ev)
        old = {} if ev.created else {str(r["cidr"]): r["cursor"] for r in await conn.fetch(
            "SELECT cidr, cursor FROM ipam_store.network_subnets WHERE network = $1", ev.name)}
        if ev.created:
            await conn.execute("DELETE FROM ipam_store.ip_quarantine WHERE network = $1", ev.name)
        await conn.execute(
            """INSERT INTO ipam_store.networks (name, definition, dns, attachments, source, partition, created_at, updated_at,
                                               command_id)
               VALUES ($1, $2::jsonb, $3::inet[], $4, $5, $6, $7, $7, $8)
               ON CONFLICT (name) DO UPDATE SET definition = EXCLUDED.definition, dns = EXCLUDED.dns,
                   attachments = EXCLUDED.attachments, source = EXCLUDED.source, updated_at = EXCLUDED.updated_at,
                   command_id = EXCLUDED.command_id""",
            ev.name, encoder.encode(ev).decode(), [ipaddress.ip_address(d) for d in ev.dns], list(ev.attachments), ev.source,
            self.partition_of(ev.name), ts(ev.at), ev.command_id)
        await conn.execute("DELETE FROM ipam_store.network_subnets WHERE network = $1", ev.name)
        await conn.executemany(
            "INSERT INTO ipam_store.network_subnets (network, idx, cidr, gateway, exclude, size, cursor) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7)",
            [(ev.name, i, sn.cidr, sn.gateway, list(spec.exclude), sn.size, old.get(sn.cidr_text, sn.start))
             for i, (spec, sn) in enumerate(zip(ev.subnets, network.subnets, strict=True))])


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
        cursor = await conn.cursor(f"SELECT {t.key_send}, namespace, vm, vm_uid, interface, workload, cluster FROM {t.leases} "
                                   f"WHERE {t.space_column} = $1", name)
        # In chunks: a million rows fetched at once leave their records' memory behind in the heap.
        while rows := await cursor.fetch(LOAD_CHUNK):
            for raw, ns, vm, uid, iface, workload, cluster in rows:
                hold(decode(raw), Owner(namespace=intern(ns), vm=vm, vm_uid=uid, interface=intern(iface),
                                        workload=intern(workload), cluster=intern(cluster)))
            del rows
    for space, raw, pending in await conn.fetch(
            f"SELECT {t.space_column}, {t.key_send}, (extract(epoch FROM pending_until) * 1000)::bigint FROM {t.leases} "
            f"WHERE {t.space_column} = ANY($1::text[]) AND pending_until IS NOT NULL", names):
        books[space].pending[decode(raw)] = pending
    now = now_ms()
    for space, raw, until in await conn.fetch(
            f"SELECT {t.space_column}, {t.key_send}, (extract(epoch FROM until) * 1000)::bigint FROM {t.quarantine} "
            f"WHERE {t.space_column} = ANY($1::text[]) AND until > now() ORDER BY until", names):
        if until > now:
            books[space].quarantine_until(decode(raw), until, now)
