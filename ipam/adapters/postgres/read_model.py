"""What the API, the webhook and the watcher read from Postgres (what the watcher writes of the cluster: observations.py).

Every query outside the pipeline's own transactions is here, so the roles and the API hold no
SQL: they call a ``ReadModel`` over the connection pool.  Lease queries are written once for
every kind of address, from the kind's table description (``tables``).
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from dataclasses import dataclass

import asyncpg

from ...domain.catalog import Catalog
from ...domain.kinds import DEFAULT_CLUSTER, PROVISIONAL_UID_PREFIX, VM_WORKLOAD, Kind
from .spaces import CATALOG_VERSION, load_spaces, stored_networks
from .tables import TABLES


@dataclass(frozen=True)
class Holding:
    """A VM, pod or claim (one incarnation) holding leases in a space."""

    space: str
    namespace: str
    vm: str
    vm_uid: str


def _listed(kind: Kind) -> str:
    """A lease's columns as REST lists them (``leases``, and the VM's rows a repeat answers from)."""
    return (f"{TABLES[kind].listed}, {kind.space}, namespace, vm, vm_uid, interface, static, since, state, pending_until, "
            "workload, cluster")


class ReadModel:
    def __init__(self, db: asyncpg.Pool) -> None:
        self.db = db
        self._catalog: Catalog | None = None
        self._catalog_version = -1

    # --- spaces -------------------------------------------------------------------------------

    @property
    def catalog_version(self) -> int:
        """The definitions' version of the last catalogue read (``catalog_version`` in migrations/003)."""
        return self._catalog_version

    async def catalog(self, version: int | None = None) -> Catalog:
        """Every pool and network as Postgres has them now: read-your-writes across replicas.

        The cached catalogue is checked against the definitions' version (one row) and read again only
        when a definition changed.  ``version``: the version a query of this request already read with its
        rows (``vm_leases``), saving the round trip when the cache is current.  The version is read before
        the definitions, so a catalogue is never kept under a version newer than what it holds."""
        if version is not None and self._catalog is not None and version == self._catalog_version:
            return self._catalog
        async with self.db.acquire() as conn:
            version = await conn.fetchval(CATALOG_VERSION)
            if self._catalog is None or version != self._catalog_version:
                catalog = Catalog(await load_spaces(conn))
                if version >= self._catalog_version:  # a slower concurrent read must not replace a newer one
                    self._catalog, self._catalog_version = catalog, version
                return catalog
        return self._catalog

    @asynccontextmanager
    async def pool_change(self, name: str):
        """One change of a pool at a time, across API replicas (a session advisory lock): the steps of two
        changes must not interleave (``domain/pool_changes``).  Released with the connection if we die, and the
        connection is closed when the unlock fails (the pool does not reset sessions: ``codecs._keep_session``)."""
        async with self.db.acquire() as conn:
            try:  # a lock taken as its wait was cancelled would otherwise go back into the pool
                await conn.execute("SELECT pg_advisory_lock(hashtext('ipam-pool:' || $1))", name)
            except BaseException:
                conn.terminate()
                raise
            try:
                yield
            finally:
                try:
                    await conn.execute("SELECT pg_advisory_unlock(hashtext('ipam-pool:' || $1))", name)
                except BaseException:
                    conn.terminate()  # the lock goes with the session, never back into the pool
                    raise

    async def stored_networks(self):
        async with self.db.acquire() as conn:
            return await stored_networks(conn)

    async def pools(self, name: str | None = None) -> list[asyncpg.Record]:
        return await self.db.fetch(
            "SELECT pool, range, size, used, quarantined, free, percent::float8 AS percent, namespaces, is_default "
            "FROM ipam.pool_usage WHERE $1::text IS NULL OR pool = $1 ORDER BY pool", name)

    async def networks(self, name: str | None = None) -> tuple[list[asyncpg.Record], list[asyncpg.Record]]:
        """(networks, their subnets with usage in definition order)."""
        nets = await self.db.fetch(
            "SELECT name, array(SELECT host(d) FROM unnest(dns) d) AS dns, attachments, source FROM ipam_store.networks "
            "WHERE $1::text IS NULL OR name = $1 ORDER BY name", name)
        subnets = await self.db.fetch(
            "SELECT u.network, u.cidr::text, u.family, host(u.gateway) AS gateway, s.exclude, u.size, u.used, u.quarantined, "
            "u.free, u.percent::float8 AS percent FROM ipam.network_usage u "
            "JOIN ipam_store.network_subnets s ON s.network = u.network AND s.cidr = u.cidr "
            "WHERE $1::text IS NULL OR u.network = $1 ORDER BY u.network, s.idx", name)
        return nets, subnets

    # --- leases -------------------------------------------------------------------------------

    async def leases(self, kind: Kind, *, namespace=None, vm=None, space=None, address=None, workload=None, vm_uid=None,
                     cluster=None, state=None, limit=1000):
        t = TABLES[kind]
        return await self.db.fetch(
            f"""SELECT {_listed(kind)} FROM {t.view} l
                WHERE ($1::text IS NULL OR namespace = $1) AND ($2::text IS NULL OR vm = $2)
                  AND ($3::text IS NULL OR {kind.space} = $3) AND ($4::{t.address_type} IS NULL OR {kind.address} = $4)
                  AND ($6::text IS NULL OR workload = $6) AND ($7::text IS NULL OR vm_uid = $7)
                  AND ($8::text IS NULL OR cluster = $8) AND ($9::text IS NULL OR state = $9)
                ORDER BY namespace, vm, interface, {kind.space}, {t.listed_order} LIMIT $5""",
            namespace, vm, space, address, limit, workload, vm_uid, cluster, state)

    async def vm_leases(self, kind: Kind, namespace: str, vm: str, workload: str, cluster: str) -> tuple[list, int]:
        """(the leases of one VM (every incarnation, interface and space), the catalogue version) in one round
        trip: what REST checks before a lease, what its routing is checked against, and what a repeat answers
        with (the rows as ``leases`` lists them)."""
        t = TABLES[kind]
        rows = await self.db.fetch(
            f"""SELECT c.version AS catalog_version, l.* FROM ipam_store.catalog_version c LEFT JOIN LATERAL (
                    SELECT {_listed(kind)} FROM {t.view} l
                    WHERE namespace = $1 AND vm = $2 AND workload = $3 AND cluster = $4) l ON true""",
            namespace, vm, workload, cluster)
        return [r for r in rows if r["interface"] is not None], rows[0]["catalog_version"]

    async def holdings(self, kind: Kind, workload: str = VM_WORKLOAD, cluster: str = DEFAULT_CLUSTER) -> list[Holding]:
        """Every VM (pod, claim: ``workload``) of one cluster holding leases of this kind, per space (those
        admitted but not seen yet left out): what that cluster's watcher may release when it lists."""
        t = TABLES[kind]
        rows = await self.db.fetch(f"SELECT DISTINCT {kind.space}, namespace, vm, vm_uid FROM {t.leases} "
                                   "WHERE workload = $3 AND cluster = $4 AND left(vm_uid, $1) <> $2",
                                   len(PROVISIONAL_UID_PREFIX), PROVISIONAL_UID_PREFIX, workload, cluster)
        return [Holding(*r) for r in rows]

    async def spaces_held(self, kind: Kind, namespace: str, vm: str, *, vm_uid: str | None = None,
                          interface: str | None = None, workload: str | None = None, cluster: str | None = None) -> set[str]:
        """Spaces where a VM (or one incarnation, or one interface; or a pod or claim; of one cluster) holds leases."""
        rows = await self.db.fetch(
            f"SELECT DISTINCT {kind.space} FROM {TABLES[kind].leases} WHERE namespace = $1 AND vm = $2 "
            "AND ($3::text IS NULL OR vm_uid = $3) AND ($4::text IS NULL OR interface = $4) "
            "AND ($5::text IS NULL OR workload = $5) AND ($6::text IS NULL OR cluster = $6)",
            namespace, vm, vm_uid, interface, workload, cluster)
        return {r[0] for r in rows}

    async def external_leases(self, first: str, last: str, limit: int = 5) -> list[asyncpg.Record]:
        """Leases of the external pool (static MACs outside every ranged pool) between two MACs."""
        return await self.db.fetch(
            "SELECT l.mac::text AS mac, l.namespace, l.vm, l.interface FROM ipam_store.mac_leases l "
            "JOIN ipam_store.pools p ON p.name = l.pool WHERE p.external AND l.mac BETWEEN $1::macaddr AND $2::macaddr "
            "ORDER BY l.mac LIMIT $3", first, last, limit)

    async def space_holding(self, kind: Kind, address: str) -> str | None:
        """The space whose lease holds this address (an address unique in the cluster: a MAC)."""
        t = TABLES[kind]
        return await self.db.fetchval(f"SELECT {kind.space} FROM {t.leases} WHERE {kind.address} = $1::{t.address_type}",
                                      address)

    async def lapsed(self, kind: Kind, limit: int = 1000) -> list[tuple[str, str, str, int]]:
        """Pending leases past their time: (space, address, vm uid, until ms)."""
        t = TABLES[kind]
        rows = await self.db.fetch(
            f"SELECT {kind.space}, {t.address_text}, vm_uid, (extract(epoch FROM pending_until) * 1000)::bigint "
            f"FROM {t.leases} WHERE pending_until < now() LIMIT $1", limit)
        return [tuple(r) for r in rows]

    async def pending(self, kind: Kind) -> int:
        return await self.db.fetchval(f"SELECT count(*) FROM {TABLES[kind].view} WHERE state = 'pending'")

    async def lease_counts(self, kind: Kind) -> list[asyncpg.Record]:
        return await self.db.fetch(f"SELECT {kind.space}, state, count(*) FROM {TABLES[kind].view} GROUP BY 1, 2")

    # --- status and metrics ---------------------------------------------------------------------

    async def partitions(self) -> list[asyncpg.Record]:
        return await self.db.fetch("SELECT * FROM ipam.partitions ORDER BY partition")

    async def ping(self) -> None:
        await self.db.fetchval("SELECT 1")

    async def gauges(self) -> dict[str, object]:
        """What /metrics reads at scrape time."""
        async with self.db.acquire() as conn:
            return {
                "collisions": await conn.fetchval("SELECT count(*) FROM ipam.mac_collisions"),
                "conflicts": await conn.fetchval("SELECT count(*) FROM ipam.mac_conflicts"),
                "drift": await conn.fetchval("SELECT count(*) FROM ipam.ip_drift"),
                "pools": await conn.fetch("SELECT pool, percent::float8 / 100 FROM ipam.pool_usage WHERE percent IS NOT NULL"),
                "subnets": await conn.fetch("SELECT network, cidr::text, free::float8, percent::float8 / 100 "
                                            "FROM ipam.network_usage"),
            }
