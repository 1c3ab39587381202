"""Prometheus metrics served at /metrics: what the cluster and the webhook look like right now.

Gauges are read from Postgres at scrape time (the views are the truth, and any API replica
gives the same answer); counters count what this process did.
"""

from __future__ import annotations

import asyncpg
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest

from .. import telemetry


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.collisions = Gauge("ipam_mac_collisions", "MACs used by more than one running VirtualMachineInstance",
                                registry=self.registry)
        self.conflicts = Gauge("ipam_mac_conflicts", "VM interfaces whose spec carries a MAC another interface holds",
                               registry=self.registry)
        self.leases = Gauge("ipam_mac_leases", "Live MAC leases", ["pool", "state"], registry=self.registry)
        self.ip_leases = Gauge("ipam_ip_leases", "Live IP leases", ["network", "state"], registry=self.registry)
        self.ip_free = Gauge("ipam_ip_free", "Addresses that can be handed out now, per subnet", ["network", "cidr"],
                             registry=self.registry)
        self.ip_drift = Gauge("ipam_ip_drift", "Addresses running guests use that are not their lease (ipam.ip_drift)",
                              registry=self.registry)
        self.pool_used = Gauge("ipam_pool_used_ratio", "Share of a MAC pool leased or quarantined (0-1)", ["pool"],
                               registry=self.registry)
        self.subnet_used = Gauge("ipam_subnet_used_ratio", "Share of a network's subnet leased or quarantined (0-1)",
                                 ["network", "cidr"], registry=self.registry)
        self.pending = Gauge("ipam_pending_leases", "Leases made at admission still waiting for their VM", ["kind"],
                             registry=self.registry)

    async def refresh(self, conn: asyncpg.Connection) -> None:
        self.collisions.set(await conn.fetchval("SELECT count(*) FROM ipam.mac_collisions"))
        self.conflicts.set(await conn.fetchval("SELECT count(*) FROM ipam.mac_conflicts"))
        self.leases.clear()
        for r in await conn.fetch("SELECT pool, state, count(*) AS n FROM ipam.mac_leases GROUP BY pool, state"):
            self.leases.labels(r["pool"], r["state"]).set(r["n"])
        self.ip_leases.clear()
        for r in await conn.fetch("SELECT network, state, count(*) AS n FROM ipam.ip_leases GROUP BY network, state"):
            self.ip_leases.labels(r["network"], r["state"]).set(r["n"])
        self.ip_free.clear()
        for r in await conn.fetch("SELECT network, cidr::text, free::float8 AS free FROM ipam.network_usage"):
            self.ip_free.labels(r["network"], r["cidr"]).set(r["free"])
        self.ip_drift.set(await conn.fetchval("SELECT count(*) FROM ipam.ip_drift"))
        self.pool_used.clear()
        for r in await conn.fetch("SELECT pool, percent::float8 AS percent FROM ipam.pool_usage WHERE percent IS NOT NULL"):
            self.pool_used.labels(r["pool"]).set(r["percent"] / 100)
        self.subnet_used.clear()
        for r in await conn.fetch("SELECT network, cidr::text, percent::float8 AS percent FROM ipam.network_usage"):
            self.subnet_used.labels(r["network"], r["cidr"]).set(r["percent"] / 100)
        self.pending.labels("mac").set(await conn.fetchval("SELECT count(*) FROM ipam.mac_leases WHERE state = 'pending'"))
        self.pending.labels("ip").set(await conn.fetchval("SELECT count(*) FROM ipam.ip_leases WHERE state = 'pending'"))

    def render(self) -> tuple[bytes, str]:
        return render(self.registry)


def render(*registries: CollectorRegistry) -> tuple[bytes, str]:
    """This process's counters and histograms, then the given registries, in the text format."""
    return b"".join(generate_latest(r) for r in (telemetry.REGISTRY, *registries)), CONTENT_TYPE_LATEST
