"""Folding one projected batch into the rows it changes, then writing them with a few set-based statements.

A batch of thousands of events touches each lease row once in Postgres: the fold keeps only
the last state of every row (a lease, a quarantined address, a confirmed owner), for every kind
of address alike, and ``write`` sends them as ``unnest`` arrays inside the batch's transaction
(the same exactly-once transaction as the ledger and the partition's offset).
"""

from __future__ import annotations

from collections.abc import Callable

from ...domain.events import LEASE_EVENTS, NetworkDefined, NetworkDeleted, PoolCreated
from ...domain.kinds import IP, KINDS, Kind
from .spaces import SpaceChanges
from .tables import TABLES, LeaseTable, ts


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
        self.leases[key] = (*t.extra_of(ev, key), o.namespace, o.vm, o.vm_uid, o.interface, ev.static, ts(ev.at),
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
        held = ((*t.quarantine_extra_of(ev), ts(ev.quarantined_until), ts(ev.at), o.namespace, o.vm, o.vm_uid, o.interface)
                if ev.quarantined_until > ev.at else None)
        self.quarantine[key] = (getattr(ev, t.space_column), held)

    def confirmed(self, ev) -> None:
        key, o = self.table.key_of(ev), ev.owner
        current = self.leases.get(key)
        if current is not None:  # leased earlier in this batch: rewrite the row to insert
            n = len(self.table.extra)
            self.leases[key] = (*current[:n], o.namespace, o.vm, o.vm_uid, o.interface, *current[n + 4:-1], None)
        else:
            self.confirms[key] = (o.namespace, o.vm, o.vm_uid, o.interface)

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


class BatchChanges:
    """Everything one batch changes outside the ledger: spaces, leases and quarantine of every kind, cursors."""

    def __init__(self, spaces: SpaceChanges) -> None:
        self.spaces = spaces
        self.leases = {kind: LeaseChanges(TABLES[kind]) for kind in KINDS}

    def add(self, ev) -> None:
        fold = FOLDS.get(type(ev))
        if fold is not None:
            fold(self, ev)

    async def write(self, conn) -> None:
        await self.spaces.write_definitions(conn)
        for changes in self.leases.values():
            await changes.write(conn)
        await self.spaces.write_cursors(conn)
        await self.spaces.write_deletions(conn)


def _lease_fold(kind: Kind, role: str) -> Callable[[BatchChanges, object], None]:
    def fold(changes: BatchChanges, ev) -> None:
        getattr(changes.leases[kind], role)(ev)
        if role == "leased" and not ev.static:
            changes.spaces.advance(kind, getattr(ev, kind.space), getattr(ev, kind.address))
    return fold


def _network_deleted(changes: BatchChanges, ev: NetworkDeleted) -> None:
    changes.spaces.network_deleted(ev)
    changes.leases[IP].space_deleted(ev.name)


FOLDS: dict[type, Callable[[BatchChanges, object], None]] = {
    PoolCreated: lambda changes, ev: changes.spaces.pool_created(ev),
    NetworkDefined: lambda changes, ev: changes.spaces.network_defined(ev),
    NetworkDeleted: _network_deleted,
}
for _kind in KINDS:
    for _role in ("leased", "released", "confirmed"):
        FOLDS[getattr(LEASE_EVENTS[_kind], _role)] = _lease_fold(_kind, _role)
