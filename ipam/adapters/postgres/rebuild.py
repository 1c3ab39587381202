"""Replay the ledger into fresh tables and compare them with the live ones.

The ledger is the history; the lease tables are a projection of it. ``rebuild`` folds the
ledger's events (in projection order, notes skipped) through the domain's ``evolve`` into
the schema ``ipam_rebuild``, then diffs it against ``ipam_store`` with SQL. Equal means
the projection never lost, duplicated or invented a lease.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass

import asyncpg
import msgspec

from ...domain.allocation import State, evolve
from ...domain.mac import format_mac
from ...domain.messages import AnyEvent

_decoder = msgspec.json.Decoder(AnyEvent)

EVENT_TYPES = ("PoolCreated", "MacLeased", "MacReleased", "MacLeaseConfirmed",  # the events that change state
               "NetworkDefined", "NetworkDeleted", "IpLeased", "IpReleased", "IpLeaseConfirmed")
CHUNK = 20000


@dataclass
class RebuildReport:
    events: int
    seconds: float
    leases: int
    quarantined: int
    differences: dict[str, int]

    @property
    def equal(self) -> bool:
        return not any(self.differences.values())


async def rebuild(conn: asyncpg.Connection, progress: Callable[[int, int], None] | None = None) -> RebuildReport:
    started = time.perf_counter()
    total = await conn.fetchval(
        "SELECT count(*) FROM ipam_store.ledger WHERE \"offset\" IS NOT NULL AND type = ANY($1::text[])", list(EVENT_TYPES))
    state = State(recent_max=1)
    done = 0
    last_id = 0
    while True:
        rows = await conn.fetch(
            "SELECT id, body::text FROM ipam_store.ledger WHERE id > $1 AND \"offset\" IS NOT NULL AND type = ANY($2::text[]) "
            "ORDER BY id LIMIT $3", last_id, list(EVENT_TYPES), CHUNK)
        if not rows:
            break
        for row in rows:
            evolve(state, _decoder.decode(row["body"]))
        last_id = rows[-1]["id"]
        done += len(rows)
        if progress:
            progress(done, total)
    async with conn.transaction():
        await conn.execute("""DROP SCHEMA IF EXISTS ipam_rebuild CASCADE; CREATE SCHEMA ipam_rebuild;
            CREATE TABLE ipam_rebuild.mac_leases (mac macaddr PRIMARY KEY, pool text, namespace text, vm text, vm_uid text,
                                                  interface text, pending boolean);
            CREATE TABLE ipam_rebuild.mac_quarantine (mac macaddr PRIMARY KEY, pool text, until timestamptz);
            CREATE TABLE ipam_rebuild.pools (name text PRIMARY KEY, cursor bigint);
            CREATE TABLE ipam_rebuild.ip_leases (network text, address inet, namespace text, vm text, vm_uid text,
                                                 interface text, pending boolean, PRIMARY KEY (network, address));
            CREATE TABLE ipam_rebuild.ip_quarantine (network text, address inet, until timestamptz, PRIMARY KEY (network, address));
            CREATE TABLE ipam_rebuild.network_subnets (network text, cidr cidr, cursor numeric);""")
        ip_leases = [(name, k, o.namespace, o.vm, o.vm_uid, o.interface, k in book.pending)
                     for name, book in state.networks.items() for k, o in book.by_key.items()]
        await conn.copy_records_to_table("ip_leases", schema_name="ipam_rebuild", records=ip_leases)
        await conn.copy_records_to_table("ip_quarantine", schema_name="ipam_rebuild", records=[
            (name, k, dt.datetime.fromtimestamp(until / 1000, dt.timezone.utc))
            for name, book in state.networks.items() for k, until in book.quarantine.items()])
        await conn.copy_records_to_table("network_subnets", schema_name="ipam_rebuild", records=[
            (name, sn.cidr, c) for name, book in state.networks.items() for sn, c in zip(book.network.subnets, book.cursors)])
        leases = [(format_mac(m), name, o.namespace, o.vm, o.vm_uid, o.interface, m in book.pending)
                  for name, book in state.books.items() for m, o in book.by_mac.items()]
        await conn.copy_records_to_table("mac_leases", schema_name="ipam_rebuild", records=leases)
        quarantine = [(format_mac(m), name, dt.datetime.fromtimestamp(until / 1000, dt.timezone.utc))
                      for name, book in state.books.items() for m, until in book.quarantine.items()]
        await conn.copy_records_to_table("mac_quarantine", schema_name="ipam_rebuild", records=quarantine)
        await conn.copy_records_to_table("pools", schema_name="ipam_rebuild",
                                         records=[(n, state.books[n].cursor if n in state.books else p.start)
                                                  for n, p in state.pools.items()])
    diffs = {}
    for name, live, rebuilt in (
        ("mac_leases", "SELECT mac, pool, namespace, vm, vm_uid, interface, pending_until IS NOT NULL FROM ipam_store.mac_leases",
         "SELECT mac, pool, namespace, vm, vm_uid, interface, pending FROM ipam_rebuild.mac_leases"),
        ("mac_quarantine", "SELECT mac, pool, until FROM ipam_store.mac_quarantine",
         "SELECT mac, pool, until FROM ipam_rebuild.mac_quarantine"),
        ("pools", "SELECT name, cursor FROM ipam_store.pools", "SELECT name, cursor FROM ipam_rebuild.pools"),
        ("ip_leases", "SELECT network, address, namespace, vm, vm_uid, interface, pending_until IS NOT NULL FROM ipam_store.ip_leases",
         "SELECT network, address, namespace, vm, vm_uid, interface, pending FROM ipam_rebuild.ip_leases"),
        ("ip_quarantine", "SELECT network, address, until FROM ipam_store.ip_quarantine",
         "SELECT network, address, until FROM ipam_rebuild.ip_quarantine"),
        ("network_subnets", "SELECT network, cidr, cursor FROM ipam_store.network_subnets",
         "SELECT network, cidr, cursor FROM ipam_rebuild.network_subnets"),
    ):
        diffs[name] = await conn.fetchval(f"SELECT count(*) FROM (({live} EXCEPT {rebuilt}) UNION ALL ({rebuilt} EXCEPT {live})) d")
    return RebuildReport(events=done, seconds=time.perf_counter() - started, leases=len(leases) + len(ip_leases),
                         quarantined=len(quarantine), differences=diffs)
