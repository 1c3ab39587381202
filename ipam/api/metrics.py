"""Prometheus metrics served at /metrics: what the cluster and the webhook look like right now.

Gauges are read from Postgres at scrape time (the views are the truth, and any API replica
gives the same answer); counters count what this process did (``telemetry``).
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest

from .. import telemetry
from ..domain.kinds import KINDS


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.collisions = Gauge("ipam_mac_collisions", "MACs used by more than one running VirtualMachineInstance", registry=r)
        self.conflicts = Gauge("ipam_mac_conflicts", "VM interfaces whose spec carries a MAC another interface holds",
                               registry=r)
        self.leases = {kind: Gauge(f"ipam_{kind.name}_leases", f"Live {kind.word} leases", [kind.space, "state"], registry=r)
                       for kind in KINDS}
        self.ip_free = Gauge("ipam_ip_free", "Addresses that can be handed out now, per subnet", ["network", "cidr"], registry=r)
        self.ip_drift = Gauge("ipam_ip_drift", "Addresses running guests use that are not their lease (ipam.ip_drift)",
                              registry=r)
        self.pool_used = Gauge("ipam_pool_used_ratio", "Share of a MAC pool leased or quarantined (0-1)", ["pool"], registry=r)
        self.subnet_used = Gauge("ipam_subnet_used_ratio", "Share of a network's subnet leased or quarantined (0-1)",
                                 ["network", "cidr"], registry=r)
        self.pending = Gauge("ipam_pending_leases", "Leases made at admission still waiting for their VM", ["kind"], registry=r)

    async def refresh(self, read) -> None:
        gauges = await read.gauges()
        self.collisions.set(gauges["collisions"])
        self.conflicts.set(gauges["conflicts"])
        self.ip_drift.set(gauges["drift"])
        for kind, gauge in self.leases.items():
            gauge.clear()
            for space, state, n in await read.lease_counts(kind):
                gauge.labels(space, state).set(n)
            self.pending.labels(kind.name).set(await read.pending(kind))
        for gauge in (self.pool_used, self.ip_free, self.subnet_used):
            gauge.clear()
        for pool, ratio in gauges["pools"]:
            self.pool_used.labels(pool).set(ratio)
        for network, cidr, free, ratio in gauges["subnets"]:
            self.ip_free.labels(network, cidr).set(free)
            self.subnet_used.labels(network, cidr).set(ratio)

    def render(self) -> tuple[bytes, str]:
        return render(self.registry)


def render(*registries: CollectorRegistry) -> tuple[bytes, str]:
    """This process's counters and histograms, then the given registries, in the text format."""
    return b"".join(generate_latest(r) for r in (telemetry.REGISTRY, *registries)), CONTENT_TYPE_LATEST
