"""NetworkAttachmentDefinitions that carry ipam's annotations become network definitions.

The watcher feeds every NAD it lists or sees change; a network whose NADs are all gone is
deleted (refused, and kept, while it holds leases).  Networks made through the API are never
touched from here.
"""

from __future__ import annotations

import hashlib

import msgspec
import structlog

from ..adapters.bus import CommandBus
from ..adapters.postgres.read_model import ReadModel
from ..clock import now_ms
from ..domain.cluster.kubevirt import NadNetwork, SpecError, nad_network
from ..domain.commands import DefineNetwork, DeleteNetwork
from ..domain.events import CommandRejected, NetworkDefined
from ..domain.ip import canonical

log = structlog.get_logger("ipam.watcher")


def _digest(*parts) -> str:
    return hashlib.blake2b(msgspec.json.encode(parts), digest_size=8).hexdigest()


class NadNetworks:
    def __init__(self, read: ReadModel, bus: CommandBus, changed) -> None:
        self.read, self.bus = read, bus
        self.changed = changed  # awaited after networks may have changed
        self.nads: dict[str, NadNetwork] = {}  # attachment -> what it defines

    async def listed(self, items: list[dict]) -> None:
        self.nads = {}
        for nad in items:
            self._read(nad)
        stored = await self.read.stored_networks()
        wanted = {n.network for n in self.nads.values()}
        for network in sorted(wanted):
            await self._define(network, stored)
        for name, ev in stored.items():  # networks whose NADs are all gone
            if ev.source.startswith("nad:") and name not in wanted:
                await self._delete(name, ev)
        await self.changed()

    async def event(self, kind: str, nad: dict) -> None:
        meta = nad.get("metadata") or {}
        attachment = f"{meta.get('namespace')}/{meta.get('name')}"
        before = self.nads.pop(attachment, None)
        if kind != "DELETED":
            self._read(nad)
        after = self.nads.get(attachment)
        stored = await self.read.stored_networks()
        for network in sorted({n.network for n in (before, after) if n is not None}):
            if any(n.network == network for n in self.nads.values()):
                await self._define(network, stored, prefer=attachment if after and after.network == network else None)
            elif network in stored and stored[network].source.startswith("nad:"):
                await self._delete(network, stored[network])
        await self.changed()

    def _read(self, nad: dict) -> None:
        meta = nad.get("metadata") or {}
        try:
            found = nad_network(nad)
        except SpecError as e:
            log.warning("NetworkAttachmentDefinition annotation is invalid; ignored", namespace=meta.get("namespace"),
                        name=meta.get("name"), field=e.field, reason=e.reason)
            return
        if found is not None:
            self.nads[found.attachment] = found

    def network_of_config(self, namespace: str, config_name: str) -> str | None:
        """The ipam network of the NAD whose CNI configuration is named so (in that namespace, else any)."""
        named = [n for n in self.nads.values() if n.config_name and n.config_name == config_name]
        local = [n for n in named if n.attachment.startswith(f"{namespace}/")]
        return (local or named)[0].network if (local or named) else None

    async def _define(self, network: str, stored: dict[str, NetworkDefined], prefer: str | None = None) -> None:
        """One definition per network: the NAD just changed (else the first by name) gives subnets and DNS,
        every NAD naming the network is an attachment.  NADs that only name it (ipam-cni without a range)
        add themselves to a definition made by another NAD or by the CNI plugin."""
        members = sorted(a for a, n in self.nads.items() if n.network == network)
        definers = [a for a in members if self.nads[a].subnets]
        current = stored.get(network)
        if not definers and (current is None or current.source == "api"):
            if current is None or set(members) - set(current.attachments):
                log.warning("NetworkAttachmentDefinition names a network that is not defined from a NAD; list it in "
                            "the network's attachments (ipam network update) so VMs on it get addresses",
                            network=network, attachments=members)
            return
        source = self.nads[prefer if prefer in definers else definers[0]] if definers else None
        if source is not None:
            subnets, dns = source.subnets, source.dns
        elif current is not None:
            subnets, dns = current.subnets, current.dns
        else:  # nothing defines it and it is not stored: returned above
            return
        if current is not None and (current.subnets, current.dns, current.attachments) == (
                subnets, tuple(canonical(d) for d in dns), tuple(members)):
            return
        if current is not None and current.source == "api":  # (a network the CNI plugin defined is taken over)
            log.warning("NetworkAttachmentDefinition names a network made through the API; left alone",
                        attachment=members[0], network=network)
            return
        source = source or self.nads[members[0]]
        cmd = DefineNetwork(command_id=f"nad:{network}:{source.version}:{_digest(subnets, dns, members)}",
                            at=now_ms(), name=network, subnets=subnets, dns=dns, attachments=tuple(members),
                            source=f"nad:{source.attachment}")
        for ev in await self.bus.submit(cmd):
            if isinstance(ev, CommandRejected):
                log.warning("network from a NetworkAttachmentDefinition refused", network=network,
                            attachment=source.attachment, reason=ev.reason)

    async def _delete(self, network: str, current: NetworkDefined) -> None:
        events = await self.bus.submit(DeleteNetwork(command_id=f"nad-gone:{network}:{now_ms() // 60000}", at=now_ms(),
                                                     name=network, source=current.source))
        for ev in events:
            if isinstance(ev, CommandRejected):
                log.info("network of a deleted NetworkAttachmentDefinition kept while it holds leases", network=network,
                         reason=ev.reason)
