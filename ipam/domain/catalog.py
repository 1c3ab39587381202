"""Every address space ipam knows, as one read of Postgres: what requests are routed by.

MAC requests go to a pool (``pools.choose_pool``); an interface on a Multus network gets IP
addresses from the network that serves its NetworkAttachmentDefinition.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import cast

from .book import Space
from .kinds import IP, MAC, Kind, ObservedInterface
from .mac import MacFormatError, format_mac, parse_mac
from .networks import Network
from .pools import RoutingError, choose_pool


@dataclass(frozen=True)
class Catalog:
    spaces: dict[Kind, dict[str, Space]]

    @property
    def pools(self) -> dict:
        return self.spaces[MAC]

    @property
    def networks(self) -> dict[str, Network]:
        return cast("dict[str, Network]", self.spaces[IP])  # the IP kind's spaces are networks

    @cached_property
    def by_attachment(self) -> dict[str, list[Network]]:
        """NetworkAttachmentDefinition ("namespace/name") -> the networks serving it (one, normally)."""
        served: dict[str, list] = {}
        for network in self.networks.values():
            for attachment in network.attachments:
                served.setdefault(attachment, []).append(network)
        return served

    def route_macs(self, namespace: str, macs: dict[str, str]) -> tuple[dict[str, list[ObservedInterface]],
                                                                        list[tuple[str, str, str]]]:
        """Where the MACs seen on a workload's interfaces (interface -> MAC) belong: pool -> the interfaces
        observed in it, and (interface, MAC, why) for those ipam cannot place (not a MAC, or in no pool the
        namespace may use).  The watcher (VMs) and the pods' observer route what they see alike."""
        by_pool: dict[str, list[ObservedInterface]] = {}
        unplaced: list[tuple[str, str, str]] = []
        for iface, text in sorted(macs.items()):
            try:
                mac = parse_mac(text)
                pool = choose_pool(self.pools, namespace, None, mac)
            except (MacFormatError, RoutingError) as e:
                unplaced.append((iface, text, str(e)))
                continue
            by_pool.setdefault(pool.name, []).append(ObservedInterface(name=iface, mac=format_mac(mac)))
        return by_pool, unplaced

    def routing(self) -> tuple:
        """What routing depends on: a change means VMs seen before may now be placed differently."""
        return frozenset(self.pools), frozenset((a, tuple(n.name for n in ns)) for a, ns in self.by_attachment.items())
