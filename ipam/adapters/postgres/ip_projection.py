"""The IP half of a projected batch: networks, their subnets and cursors, IP leases and quarantine.

Addresses go to Postgres as the domain's integer keys (the connection's inet codec writes them).

``IpChanges`` folds one batch's IP events into the last state of each row they touch, then
writes them with a few set-based statements inside the batch's transaction (the same
exactly-once transaction as the MAC tables and the partition offset).
"""

from __future__ import annotations

import datetime as dt
import ipaddress

import asyncpg
import msgspec

from ...domain.ip import Network, address_of, family_of
from ...domain.ip_allocation import network_from
from ...domain.messages import IpLeaseConfirmed, IpLeased, IpReleased, NetworkDefined, NetworkDeleted, encoder

IP_EVENTS = (IpLeased, IpReleased, IpLeaseConfirmed, NetworkDefined, NetworkDeleted)


def _ts(ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.timezone.utc)


class NetworkCache:
    """Built networks by name (cursor arithmetic needs the subnets).  Loaded whole on first use and
    after a partition was given up (another projector may have changed its networks meanwhile)."""

    def __init__(self) -> None:
        self.networks: dict[str, Network] = {}
        self.loaded = False

    def forget(self) -> None:
        self.networks.clear()
        self.loaded = False

    async def ensure(self, conn: asyncpg.Connection) -> None:
        if self.loaded:
            return
        self.networks = await network_definitions(conn)
        self.loaded = True


async def network_definitions(conn) -> dict[str, Network]:
    """Every network, built from its stored definition."""
    rows = await conn.fetch("SELECT definition::text FROM ipam_store.networks")
    return {n.name: n for n in (network_from(msgspec.json.decode(r[0], type=NetworkDefined)) for r in rows)}


class IpChanges:
    def __init__(self, cache: NetworkCache, partition_of) -> None:
        self.cache = cache
        self.partition_of = partition_of
        self.defined: dict[str, NetworkDefined | None] = {}  # None: deleted
        self.leases: dict[tuple[str, int], tuple | None] = {}
        self.quarantine: dict[tuple[str, int], tuple | None] = {}
        self.confirms: dict[tuple[str, int], tuple] = {}
        self.cursors: dict[tuple[str, str], int] = {}  # (network, cidr) -> next-fit cursor

    def __bool__(self) -> bool:
        return bool(self.defined or self.leases or self.quarantine or self.confirms or self.cursors)

    def add(self, ev) -> None:
        kind = type(ev)
        if kind is IpLeased:
            key = address_of(ev.address)
            o = ev.owner
            self.leases[(ev.network, key)] = (family_of(key), ev.prefix_length, o.namespace, o.vm, o.vm_uid, o.interface,
                                              ev.static, _ts(ev.at), _ts(ev.pending_until) if ev.pending_until else None,
                                              ev.command_id)
            self.quarantine[(ev.network, key)] = None
            self.confirms.pop((ev.network, key), None)
            network = self.cache.networks.get(ev.network)
            i = None if ev.static or network is None else network.subnet_of(key)
            if i is not None:
                sn = network.subnets[i]
                self.cursors[(ev.network, sn.cidr_text)] = sn.cursor_after(key)
        elif kind is IpReleased:
            key = address_of(ev.address)
            o = ev.owner
            self.leases[(ev.network, key)] = None
            self.confirms.pop((ev.network, key), None)
            self.quarantine[(ev.network, key)] = (
                (_ts(ev.quarantined_until), _ts(ev.at), o.namespace, o.vm, o.vm_uid, o.interface)
                if ev.quarantined_until > ev.at else None)
        elif kind is IpLeaseConfirmed:
            key = address_of(ev.address)
            o = ev.owner
            current = self.leases.get((ev.network, key))
            if current is not None:  # leased earlier in this batch: rewrite the row to insert
                self.leases[(ev.network, key)] = (*current[:2], o.namespace, o.vm, o.vm_uid, o.interface, *current[6:8], None,
                                                  current[9])
            else:
                self.confirms[(ev.network, key)] = (o.namespace, o.vm, o.vm_uid, o.interface)
        elif kind is NetworkDefined:
            if ev.created:  # a network defined afresh forgets cursors of an earlier one of that name
                self.cursors = {k: v for k, v in self.cursors.items() if k[0] != ev.name}
            self.defined[ev.name] = ev
            self.cache.networks[ev.name] = network_from(ev)
        elif kind is NetworkDeleted:
            self.cursors = {k: v for k, v in self.cursors.items() if k[0] != ev.name}
            self.quarantine = {k: v for k, v in self.quarantine.items() if k[0] != ev.name}
            self.defined[ev.name] = None
            self.cache.networks.pop(ev.name, None)

    async def write(self, conn: asyncpg.Connection) -> None:
        for name, ev in self.defined.items():
            if ev is not None:
                await self._define(conn, ev)
        if self.leases:
            touched = list(self.leases)
            await conn.execute(
                "DELETE FROM ipam_store.ip_leases l USING unnest($1::text[], $2::inet[]) AS t(network, address) "
                "WHERE l.network = t.network AND l.address = t.address",
                [n for n, _ in touched], [k for _, k in touched])
            live = [(n, k, *v) for (n, k), v in self.leases.items() if v is not None]
            if live:
                await conn.execute(
                    """INSERT INTO ipam_store.ip_leases (network, address, family, prefix_length, namespace, vm, vm_uid,
                                                        interface, static, since, pending_until, command_id)
                       SELECT * FROM unnest($1::text[], $2::inet[], $3::smallint[], $4::smallint[], $5::text[], $6::text[],
                                            $7::text[], $8::text[], $9::boolean[], $10::timestamptz[], $11::timestamptz[],
                                            $12::text[])""",
                    *zip(*live))
        if self.confirms:
            rows = [(n, k, *v) for (n, k), v in self.confirms.items()]
            await conn.execute(
                """UPDATE ipam_store.ip_leases l SET namespace = c.ns, vm = c.vm, vm_uid = c.uid, interface = c.iface,
                          pending_until = NULL
                   FROM unnest($1::text[], $2::inet[], $3::text[], $4::text[], $5::text[], $6::text[])
                        AS c(network, address, ns, vm, uid, iface)
                   WHERE l.network = c.network AND l.address = c.address""",
                *zip(*rows))
        if self.quarantine:
            touched = list(self.quarantine)
            await conn.execute(
                "DELETE FROM ipam_store.ip_quarantine q USING unnest($1::text[], $2::inet[]) AS t(network, address) "
                "WHERE q.network = t.network AND q.address = t.address",
                [n for n, _ in touched], [k for _, k in touched])
            held = [(n, k, *v) for (n, k), v in self.quarantine.items() if v is not None]
            if held:
                await conn.execute(
                    """INSERT INTO ipam_store.ip_quarantine (network, address, until, released_at, namespace, vm, vm_uid, interface)
                       SELECT * FROM unnest($1::text[], $2::inet[], $3::timestamptz[], $4::timestamptz[], $5::text[],
                                            $6::text[], $7::text[], $8::text[])""",
                    *zip(*held))
        await self._write_cursors(conn)
        for name, ev in self.defined.items():
            if ev is None:
                await conn.execute("DELETE FROM ipam_store.ip_quarantine WHERE network = $1", name)
                await conn.execute("DELETE FROM ipam_store.networks WHERE name = $1", name)

    async def _write_cursors(self, conn: asyncpg.Connection) -> None:
        if self.cursors:
            await conn.execute(
                """UPDATE ipam_store.network_subnets s SET cursor = c.cursor
                   FROM unnest($1::text[], $2::cidr[], $3::numeric[]) AS c(network, cidr, cursor)
                   WHERE s.network = c.network AND s.cidr = c.cidr""",
                [n for n, _ in self.cursors], [ipaddress.ip_network(c) for _, c in self.cursors], list(self.cursors.values()))

    async def _define(self, conn: asyncpg.Connection, ev: NetworkDefined) -> None:
        network = network_from(ev)
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
            self.partition_of(ev.name), _ts(ev.at), ev.command_id)
        await conn.execute("DELETE FROM ipam_store.network_subnets WHERE network = $1", ev.name)
        rows = []
        for i, (spec, sn) in enumerate(zip(ev.subnets, network.subnets)):
            rows.append((ev.name, i, sn.cidr, sn.gateway, list(spec.exclude), sn.size,
                         old.get(str(sn.cidr), sn.start)))
        await conn.executemany(
            "INSERT INTO ipam_store.network_subnets (network, idx, cidr, gateway, exclude, size, cursor) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7)", rows)
