"""Every address space ipam knows, as one read of Postgres: what requests are routed by.

MAC requests go to a pool (``pools.choose_pool``); an interface on a Multus network gets IP
addresses from the network that serves its NetworkAttachmentDefinition.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import cast

from .book import Space
from .kinds import IP, MAC, Kind
from .networks import Network


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

    def routing(self) -> tuple:
        """What routing depends on: a change means VMs seen before may now be placed differently."""
        return frozenset(self.pools), frozenset((a, tuple(n.name for n in ns)) for a, ns in self.by_attachment.items())
