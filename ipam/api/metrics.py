"""Prometheus metrics served at /metrics: what the cluster and the webhook look like right now.

Gauges are read from Postgres at scrape time (the views are the truth, and any API replica
gives the same answer); counters count what this process did.
"""

from __future__ import annotations

import asyncpg
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.collisions = Gauge("ipam_mac_collisions", "MACs used by more than one running VirtualMachineInstance",
                                registry=self.registry)
        self.conflicts = Gauge("ipam_mac_conflicts", "VM interfaces whose spec carries a MAC another interface holds",
                               registry=self.registry)
        self.leases = Gauge("ipam_mac_leases", "Live MAC leases", ["pool", "state"], registry=self.registry)
        self.reviews = Counter("ipam_webhook_reviews", "AdmissionReviews answered", ["result"], registry=self.registry)

    async def refresh(self, conn: asyncpg.Connection) -> None:
        self.collisions.set(await conn.fetchval("SELECT count(*) FROM ipam.mac_collisions"))
        self.conflicts.set(await conn.fetchval("SELECT count(*) FROM ipam.mac_conflicts"))
        self.leases.clear()
        for r in await conn.fetch("SELECT pool, state, count(*) AS n FROM ipam.mac_leases GROUP BY pool, state"):
            self.leases.labels(r["pool"], r["state"]).set(r["n"])

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
