"""The watcher's IP half: NetworkAttachmentDefinitions become network definitions, VMs' address
annotations become ``ObserveVmIps``, and what running guests report becomes ``ObserveGuestIps``
(drift) and rows of ``ipam_store.vmi_addresses`` (the ``ipam.ip_drift`` view).

Driven by ``Watcher`` (same leader, same informers' lists and events).
"""

from __future__ import annotations

import hashlib
import time

import asyncpg
import msgspec
import structlog

from ..adapters.bus import CommandBus
from ..adapters.postgres.ip_projection import network_definitions
from ..domain.allocation import PROVISIONAL_UID_PREFIX
from ..domain.ip import AddressError, Network, canonical, format_address, parse_address
from ..domain.kubevirt import SpecError, annotated_addresses, multus_interfaces
from ..domain.messages import (DefineNetwork, DeleteNetwork, ExpirePendingIp, NetworkDefined, ObservedAddresses,
                               ObserveGuestIps, ObserveVmIps)
from ..domain.nad import NadNetwork, nad_network

log = structlog.get_logger("ipam.watcher")


def _now() -> int:
    return int(time.time() * 1000)


def _digest(*parts) -> str:
    return hashlib.blake2b(msgspec.json.encode(parts), digest_size=8).hexdigest()


class IpWatch:
    def __init__(self, db: asyncpg.Pool, bus: CommandBus, networks_changed=lambda: None) -> None:
        self.db = db
        self.bus = bus
        self.networks_changed = networks_changed  # VMs must be read again: which interfaces are addressed changed
        self.nads: dict[str, NadNetwork] = {}  # attachment -> what it defines
        self.networks: dict[str, Network] = {}
        self.by_attachment: dict[str, Network] = {}
        self._networks_at = 0.0
        self._guest_last: dict[tuple[str, str], frozenset] = {}  # (vmi uid, interface) -> addresses last sent

    # --- networks from NetworkAttachmentDefinitions ----------------------------------

    async def nads_listed(self, items: list[dict]) -> None:
        self.nads = {}
        for nad in items:
            self._read(nad)
        stored = await self._stored()
        for network in sorted({n.network for n in self.nads.values()}):
            await self._define(network, stored)
        for name, ev in stored.items():  # networks whose NADs are all gone
            if ev.source.startswith("nad:") and name not in {n.network for n in self.nads.values()}:
                await self._delete(name, ev)
        await self.refresh(force=True)

    async def nad_changed(self, kind: str, nad: dict) -> None:
        meta = nad.get("metadata") or {}
        attachment = f"{meta.get('namespace')}/{meta.get('name')}"
        before = self.nads.pop(attachment, None)
        if kind != "DELETED":
            self._read(nad)
        after = self.nads.get(attachment)
        stored = await self._stored()
        for network in sorted({n.network for n in (before, after) if n is not None}):
            if any(n.network == network for n in self.nads.values()):
                await self._define(network, stored, prefer=attachment if after and after.network == network else None)
            elif network in stored and stored[network].source.startswith("nad:"):
                await self._delete(network, stored[network])
        await self.refresh(force=True)

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

    async def _stored(self) -> dict[str, NetworkDefined]:
        async with self.db.acquire() as conn:
            rows = await conn.fetch("SELECT name, definition::text FROM ipam_store.networks")
        return {r["name"]: msgspec.json.decode(r["definition"], type=NetworkDefined) for r in rows}

    async def _define(self, network: str, stored: dict[str, NetworkDefined], prefer: str | None = None) -> None:
        """One definition per network: the NAD just changed (else the first by name) gives subnets and DNS,
        every NAD naming the network is an attachment."""
        members = sorted(a for a, n in self.nads.items() if n.network == network)
        source = self.nads[prefer if prefer in members else members[0]]
        current = stored.get(network)
        if current is not None and (current.subnets, current.dns, current.attachments) == (
                source.subnets, tuple(canonical(d) for d in source.dns), tuple(members)):
            return
        if current is not None and not current.source.startswith("nad:"):
            log.warning("NetworkAttachmentDefinition names a network made through the API; left alone",
                        attachment=source.attachment, network=network)
            return
        cmd = DefineNetwork(command_id=f"nad:{network}:{source.version}:{_digest(source.subnets, source.dns, members)}", at=_now(),
                            name=network, subnets=source.subnets, dns=source.dns, attachments=tuple(members),
                            source=f"nad:{source.attachment}")
        events = await self.bus.submit(cmd)
        for ev in events:
            if ev["type"] == "CommandRejected":
                log.warning("network from a NetworkAttachmentDefinition refused", network=network,
                            attachment=source.attachment, reason=ev["reason"])

    async def _delete(self, network: str, current: NetworkDefined) -> None:
        events = await self.bus.submit(DeleteNetwork(command_id=f"nad-gone:{network}:{_now() // 60000}", at=_now(),
                                                     name=network, source=current.source))
        for ev in events:
            if ev["type"] == "CommandRejected":
                log.info("network of a deleted NetworkAttachmentDefinition kept while it holds leases", network=network,
                         reason=ev["reason"])

    async def refresh(self, force: bool = False) -> None:
        if not force and time.monotonic() - self._networks_at < 0.5:
            return
        async with self.db.acquire() as conn:
            self.networks = await network_definitions(conn)
        before = set(self.by_attachment.items()) if self._networks_at else None
        self.by_attachment = {a: n for n in self.networks.values() for a in n.attachments}
        self._networks_at = time.monotonic()
        if before is not None and {(a, n.name) for a, n in before} != {(a, n.name) for a, n in self.by_attachment.items()}:
            self.networks_changed()

    # --- VMs: the address annotation ------------------------------------------------

    def seen(self, vm: dict) -> frozenset:
        """What of a VM matters for its IP leases (to skip status-only updates)."""
        namespace = (vm.get("metadata") or {}).get("namespace") or ""
        try:
            multus = multus_interfaces(vm, namespace)
            wanted = annotated_addresses(vm)
        except SpecError:
            return frozenset()
        return frozenset((m.name, m.attachment, tuple(wanted.get(m.name, ()))) for m in multus)

    async def observe_vm(self, vm: dict, deleted: bool, holding: set[str] | None = None) -> None:
        meta = vm.get("metadata") or {}
        uid, namespace, name, rv = meta.get("uid"), meta.get("namespace"), meta.get("name"), meta.get("resourceVersion")
        if not (uid and namespace and name):
            return
        by_network: dict[str, list[ObservedAddresses]] = {}
        if not deleted:
            try:
                multus = multus_interfaces(vm, namespace)
                wanted = annotated_addresses(vm)
            except SpecError as e:
                log.warning("VM spec or annotation unreadable; its IP leases are left as they are", namespace=namespace,
                            vm=name, field=e.field, reason=e.reason)
                return
            if any(m.attachment not in self.by_attachment for m in multus):
                await self.refresh()
            for m in multus:
                network = self.by_attachment.get(m.attachment)
                if network is not None:
                    by_network.setdefault(network.name, []).append(
                        ObservedAddresses(name=m.name, addresses=tuple(wanted.get(m.name, ()))))
        if holding is None:
            async with self.db.acquire() as conn:
                holding = {r["network"] for r in await conn.fetch(
                    "SELECT DISTINCT network FROM ipam_store.ip_leases WHERE namespace = $1 AND vm = $2 AND vm_uid = $3",
                    namespace, name, uid)}
        tag = "deleted" if deleted else rv
        for network in sorted(set(by_network) | holding):
            await self.bus.send(ObserveVmIps(command_id=f"watch-ip:{uid}:{tag}:{network}", at=_now(), network=network,
                                             namespace=namespace, vm=name, vm_uid=uid, deleted=deleted,
                                             interfaces=tuple(by_network.get(network, ()))))

    async def release_missing(self, listed: set[str]) -> int:
        """VMs holding IP leases that a fresh list no longer has: release everything they held."""
        async with self.db.acquire() as conn:
            rows = await conn.fetch(
                "SELECT DISTINCT network, namespace, vm, vm_uid FROM ipam_store.ip_leases WHERE left(vm_uid, $1) <> $2",
                len(PROVISIONAL_UID_PREFIX), PROVISIONAL_UID_PREFIX)
        gone = [r for r in rows if r["vm_uid"] not in listed]
        for r in gone:
            await self.bus.send(ObserveVmIps(command_id=f"watch-ip:{r['vm_uid']}:gone:{r['network']}", at=_now(),
                                             network=r["network"], namespace=r["namespace"], vm=r["vm"],
                                             vm_uid=r["vm_uid"], deleted=True))
        return len(gone)

    async def holding(self) -> dict[str, set[str]]:
        """vm uid -> networks where it holds IP leases (one query for a whole list)."""
        async with self.db.acquire() as conn:
            rows = await conn.fetch("SELECT DISTINCT network, vm_uid FROM ipam_store.ip_leases")
        out: dict[str, set[str]] = {}
        for r in rows:
            out.setdefault(r["vm_uid"], set()).add(r["network"])
        return out

    async def expire_pending(self) -> None:
        async with self.db.acquire() as conn:
            rows = await conn.fetch(
                "SELECT network, host(address) AS address, vm_uid, (extract(epoch FROM pending_until) * 1000)::bigint AS until "
                "FROM ipam_store.ip_leases WHERE pending_until < now() LIMIT 1000")
        for r in rows:
            await self.bus.send(ExpirePendingIp(command_id=f"expire-ip:{r['network']}:{r['address']}:{r['vm_uid']}:{r['until']}",
                                                at=_now(), network=r["network"], address=r["address"], vm_uid=r["vm_uid"]))

    # --- running instances: what the guest agent reports ------------------------------

    def guest_rows(self, vmi: dict) -> list[tuple]:
        """(vmi uid, namespace, name, interface, network, address) for each address a running guest reports."""
        meta = vmi.get("metadata") or {}
        status = vmi.get("status") or {}
        if status.get("phase") != "Running":
            return []
        try:
            multus = multus_interfaces({"spec": {"template": {"spec": vmi.get("spec") or {}}}}, meta.get("namespace") or "")
        except SpecError:
            multus = []
        networks = {m.name: self.by_attachment.get(m.attachment) for m in multus}
        rows = []
        for iface in status.get("interfaces") or []:
            if not isinstance(iface, dict) or not isinstance(iface.get("name"), str):
                continue
            texts = list(iface.get("ipAddresses") or []) + ([iface["ipAddress"]] if iface.get("ipAddress") else [])
            network = networks.get(iface["name"])
            for text in dict.fromkeys(texts):
                try:
                    address = format_address(parse_address(str(text).partition("/")[0]))
                except AddressError:
                    continue
                rows.append((meta.get("uid"), meta.get("namespace"), meta.get("name"), iface["name"],
                             None if network is None else network.name, address))
        return rows

    async def report_guest(self, vmi: dict, rows: list[tuple]) -> None:
        """One ObserveGuestIps per managed interface whose reported addresses changed."""
        meta = vmi.get("metadata") or {}
        owners = [r for r in meta.get("ownerReferences") or [] if isinstance(r, dict) and r.get("kind") == "VirtualMachine"]
        vm_uid = owners[0].get("uid") if owners else meta.get("uid")
        per_iface: dict[tuple[str, str], set[str]] = {}
        for _uid, _ns, _name, iface, network, address in rows:
            if network is not None:
                per_iface.setdefault((iface, network), set()).add(address)
        for (iface, network), addresses in sorted(per_iface.items()):
            key = (meta.get("uid"), iface)
            seen = frozenset(addresses)
            if self._guest_last.get(key) == seen:
                continue
            self._guest_last[key] = seen
            await self.bus.send(ObserveGuestIps(
                command_id=f"guest:{meta.get('uid')}:{meta.get('resourceVersion')}:{iface}", at=_now(), network=network,
                namespace=meta["namespace"], vm=meta["name"], vm_uid=vm_uid, interface=iface, addresses=tuple(sorted(addresses))))

    def forget_guest(self, vmi_uid: str | None = None) -> None:
        if vmi_uid is None:
            self._guest_last.clear()
        else:
            for key in [k for k in self._guest_last if k[0] == vmi_uid]:
                del self._guest_last[key]


async def insert_guest_rows(conn, rows: list[tuple]) -> None:
    if rows:
        await conn.executemany(
            "INSERT INTO ipam_store.vmi_addresses (vmi_uid, namespace, name, interface, network, address) "
            "VALUES ($1, $2, $3, $4, $5, $6::inet) ON CONFLICT (vmi_uid, interface, address) DO UPDATE "
            "SET network = EXCLUDED.network, seen_at = now()", rows)
