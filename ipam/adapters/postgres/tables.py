"""The lease tables of each kind of address, described as data, and a projected batch folded into them.

A kind has a table of live leases and one of quarantined addresses, keyed by the address (MAC: unique
in the cluster) or by the space and the address (IP: unique per network): the unique constraints of
migrations/ are the last guard.  Every statement the projection, the state loader, the rebuild and the
read model run against them is made here from the description.  A batch of thousands of events touches
each row once: the fold keeps only the last state of every row (a lease, a quarantined address, a
confirmed owner), for every kind alike, and ``write`` sends them as ``unnest`` arrays inside the batch's
transaction (the same exactly-once transaction as the ledger and the partition's offset).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ...domain.ip import V6, address_of, family_of
from ...domain.kinds import IP, MAC, Kind, Owner
from ...domain.mac import format_mac

OWNER_COLUMNS = ("namespace", "vm", "vm_uid", "interface", "workload", "cluster")


def owner_row(o: Owner) -> tuple[str, ...]:
    """An owner as the values of OWNER_COLUMNS."""
    return o.namespace, o.vm, o.vm_uid, o.interface, o.workload, o.cluster


def ts(ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC)


def _mac_of_bytes(raw: bytes) -> int:
    return int.from_bytes(raw, "big")


def _ip_of_bytes(raw: bytes) -> int:
    """An ``inet_send`` value (family, bits, is_cidr, length, address bytes) as a domain key."""
    return int.from_bytes(raw[4:], "big") | (V6 if raw[0] == 3 else 0)


@dataclass(frozen=True)
class LeaseTable:
    kind: Kind
    leases: str
    quarantine: str
    key: tuple[tuple[str, str], ...]  # (column, Postgres type) naming one row: the unique address
    extra: tuple[tuple[str, str], ...]  # lease columns that are neither the key nor the owner
    quarantine_extra: tuple[tuple[str, str], ...]
    key_send: str  # the key column as bytes, for loading millions of rows fast
    view: str  # the admin's view of the leases
    listed: str  # the view's address columns as REST lists them
    address_text: str  # the address column as canonical text
    address_type: str  # the view's address column type
    listed_order: str  # how one owner's addresses are listed (the view aliased ``l``): IPs in their subnets' order

    # the lease events and regions below are the kind's own (a MacLeased, an IpLeased; a pool, a subnet): Any here
    key_of: Callable[[Any], tuple]  # lease event -> row key (addresses as the connection's codecs take them)
    extra_of: Callable[[Any, tuple], tuple]  # lease event, row key -> the extra columns
    quarantine_extra_of: Callable[[Any], tuple]
    decode_key: Callable[[bytes], int]  # ``key_send`` -> domain key
    row_key: Callable[[str, int], tuple]  # space name, domain key -> row key
    cursors: str  # the table holding each region's next-fit cursor
    cursor_key: tuple[tuple[str, str], ...]  # its columns naming a region
    cursor_type: str
    cursor_of: Callable[[str, Any], tuple]  # space name, region -> cursor key
    cursor_filter: str  # which rows of ``cursors`` are regions (the external pool has none)

    @property
    def space_column(self) -> str:
        return self.kind.space

    # --- statements ------------------------------------------------------------------------

    def _match(self, table: str, alias: str, first: int) -> tuple[str, str]:
        """(FROM clause of an unnest of the key arrays from $first, the WHERE matching them)."""
        cols = [c for c, _ in self.key]
        arrays = ", ".join(f"${first + i}::{t}[]" for i, (_, t) in enumerate(self.key))
        where = " AND ".join(f"{table}.{c} = {alias}.{c}" for c in cols)
        return f"unnest({arrays}) AS {alias}({', '.join(cols)})", where

    def delete_sql(self, table: str) -> str:
        if len(self.key) == 1:
            column, kind = self.key[0]
            return f"DELETE FROM {table} WHERE {column} = ANY($1::{kind}[])"
        source, where = self._match("t", "d", 1)
        return f"DELETE FROM {table} t USING {source} WHERE {where}"

    def insert_sql(self, table: str, columns: tuple[tuple[str, str], ...]) -> str:
        names = ", ".join(c for c, _ in columns)
        arrays = ", ".join(f"${i}::{t}[]" for i, (_, t) in enumerate(columns, 1))
        return f"INSERT INTO {table} ({names}) SELECT * FROM unnest({arrays})"

    @property
    def lease_columns(self) -> tuple[tuple[str, str], ...]:
        return (*self.key, *self.extra, *((c, "text") for c in OWNER_COLUMNS), ("static", "boolean"),
                ("since", "timestamptz"), ("command_id", "text"), ("pending_until", "timestamptz"))

    @property
    def quarantine_columns(self) -> tuple[tuple[str, str], ...]:
        return (*self.key, *self.quarantine_extra, ("until", "timestamptz"), ("released_at", "timestamptz"),
                *((c, "text") for c in OWNER_COLUMNS))

    def confirm_sql(self) -> str:
        n = len(self.key)
        arrays = ", ".join([f"${i}::{t}[]" for i, (_, t) in enumerate(self.key, 1)]
                           + [f"${n + i}::text[]" for i in range(1, len(OWNER_COLUMNS) + 1)])
        cols = ", ".join([c for c, _ in self.key] + [f"new_{c}" for c in OWNER_COLUMNS])
        where = " AND ".join(f"l.{c} = c.{c}" for c, _ in self.key)
        sets = ", ".join(f"{c} = c.new_{c}" for c in OWNER_COLUMNS)
        return f"UPDATE {self.leases} l SET {sets}, pending_until = NULL FROM unnest({arrays}) AS c({cols}) WHERE {where}"

    def cursor_sql(self) -> str:
        cols = [c for c, _ in self.cursor_key]
        arrays = ", ".join([f"${i}::{t}[]" for i, (_, t) in enumerate(self.cursor_key, 1)]
                           + [f"${len(cols) + 1}::{self.cursor_type}[]"])
        where = " AND ".join(f"t.{c} = c.{c}" for c in cols)
        source = f"unnest({arrays}) AS c({', '.join(cols)}, cursor)"
        return f"UPDATE {self.cursors} t SET cursor = c.cursor FROM {source} WHERE {where}"

    @property
    def identity(self) -> tuple[str, ...]:
        """The columns that say which address of which space a row is about."""
        cols = [c for c, _ in self.key]
        return tuple(cols if self.space_column in cols else [*cols, self.space_column])


MAC_TABLE = LeaseTable(
    kind=MAC, leases="ipam_store.mac_leases", quarantine="ipam_store.mac_quarantine", key=(("mac", "macaddr"),),
    extra=(("pool", "text"),), quarantine_extra=(("pool", "text"),), key_send="macaddr_send(mac)", view="ipam.mac_leases",
    listed="mac::text AS mac", address_text="mac::text", address_type="macaddr", listed_order="l.mac",
    key_of=lambda ev: (ev.mac,), extra_of=lambda ev, key: (ev.pool,), quarantine_extra_of=lambda ev: (ev.pool,),
    decode_key=_mac_of_bytes, row_key=lambda space, key: (format_mac(key),),
    cursors="ipam_store.pools", cursor_key=(("name", "text"),), cursor_type="bigint", cursor_of=lambda space, region: (space,),
    cursor_filter="WHERE NOT external")
IP_TABLE = LeaseTable(
    kind=IP, leases="ipam_store.ip_leases", quarantine="ipam_store.ip_quarantine",
    key=(("network", "text"), ("address", "inet")), extra=(("family", "smallint"), ("prefix_length", "smallint")),
    quarantine_extra=(), key_send="inet_send(address)", view="ipam.ip_leases",
    listed="host(address) AS address, prefix_length", address_text="host(address)", address_type="inet",
    listed_order="(SELECT s.idx FROM ipam_store.network_subnets s WHERE s.network = l.network AND l.address << s.cidr), "
                 "l.address",
    key_of=lambda ev: (ev.network, address_of(ev.address)), extra_of=lambda ev, key: (family_of(key[1]), ev.prefix_length),
    quarantine_extra_of=lambda ev: (), decode_key=_ip_of_bytes, row_key=lambda space, key: (space, key),
    cursors="ipam_store.network_subnets", cursor_key=(("network", "text"), ("cidr", "cidr")), cursor_type="numeric",
    cursor_of=lambda space, region: (space, region.cidr), cursor_filter="")
TABLES = {MAC: MAC_TABLE, IP: IP_TABLE}


class LeaseChanges:
    """The last state, in this batch, of each lease and quarantine row of one kind that it touches."""

    def __init__(self, table: LeaseTable) -> None:
        self.table = table
        self.leases: dict[tuple, tuple | None] = {}  # row key -> row after the key columns, or None: deleted
        self.quarantine: dict[tuple, tuple[str, tuple | None]] = {}  # row key -> (space, row or None)
        self.confirms: dict[tuple, tuple] = {}  # provisional leases of earlier batches bound to their VM

    def leased(self, ev) -> None:
        t, o = self.table, ev.owner
        key = t.key_of(ev)
        self.leases[key] = (*t.extra_of(ev, key), *owner_row(o), ev.static, ts(ev.at),
                            ev.command_id, ts(ev.pending_until) if ev.pending_until else None)
        self.quarantine[key] = (getattr(ev, t.space_column), None)
        if self.confirms:
            self.confirms.pop(key, None)

    def released(self, ev) -> None:
        t, o = self.table, ev.owner
        key = t.key_of(ev)
        self.leases[key] = None
        if self.confirms:
            self.confirms.pop(key, None)
        held = ((*t.quarantine_extra_of(ev), ts(ev.quarantined_until), ts(ev.at), *owner_row(o))
                if ev.quarantined_until > ev.at else None)
        self.quarantine[key] = (getattr(ev, t.space_column), held)

    def confirmed(self, ev) -> None:
        key, o = self.table.key_of(ev), ev.owner
        current = self.leases.get(key)
        if current is not None:  # leased earlier in this batch: rewrite the row to insert
            n = len(self.table.extra)
            self.leases[key] = (*current[:n], *owner_row(o), *current[n + len(OWNER_COLUMNS):-1], None)
        else:
            self.confirms[key] = owner_row(o)

    def space_narrowed(self, name: str, holds: Callable[[tuple], bool]) -> None:
        """A space shrank: addresses of this batch's quarantine that it no longer ``holds`` (row key) are forgotten."""
        self.quarantine = {k: (v if v[0] != name or holds(k) else (name, None)) for k, v in self.quarantine.items()}

    def space_deleted(self, name: str) -> None:
        self.quarantine = {k: v for k, v in self.quarantine.items() if v[0] != name}

    async def write(self, conn) -> None:
        t = self.table
        if self.leases:
            await conn.execute(t.delete_sql(t.leases), *zip(*self.leases, strict=True))
            live = [(*k, *v) for k, v in self.leases.items() if v is not None]
            if live:
                await conn.execute(t.insert_sql(t.leases, t.lease_columns), *zip(*live, strict=True))
        if self.confirms:
            await conn.execute(t.confirm_sql(), *zip(*[(*k, *v) for k, v in self.confirms.items()], strict=True))
        if self.quarantine:
            await conn.execute(t.delete_sql(t.quarantine), *zip(*self.quarantine, strict=True))
            held = [(*k, *v) for k, (_, v) in self.quarantine.items() if v is not None]
            if held:
                await conn.execute(t.insert_sql(t.quarantine, t.quarantine_columns), *zip(*held, strict=True))
