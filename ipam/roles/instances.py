"""What running VirtualMachineInstances report: the MACs on their interfaces (collisions on the wire)
and the addresses their guests use (drift from their leases).

These are observations of the cluster, not address state: they are kept in
``ipam_store.vmi_interfaces`` and ``vmi_addresses`` (replaced on every list) for the views
``ipam.mac_collisions`` and ``ipam.ip_drift``; a guest using an address of a managed network
that is not its lease also becomes an ``ObserveGuestIps`` command (an ``IpDrift`` event).
"""

from __future__ import annotations

from ..adapters.bus import CommandBus
from ..adapters.postgres import observations
from ..adapters.postgres.read_model import ReadModel
from ..clock import now_ms
from ..domain.catalog import Catalog
from ..domain.cluster.kubevirt import SpecError, multus_interfaces
from ..domain.commands import ObserveGuestIps
from ..domain.ip import AddressError, format_address, parse_address
from ..domain.mac import MacFormatError, format_mac, parse_mac


def interface_rows(vmi: dict) -> list[tuple]:
    """(uid, namespace, name, interface, mac, phase) for each interface of a VMI: the MAC the guest
    reports in status.interfaces, else the one in its spec."""
    meta, status = vmi.get("metadata") or {}, vmi.get("status") or {}
    macs = {}
    try:
        for iface in vmi["spec"]["domain"]["devices"]["interfaces"] or []:
            if isinstance(iface, dict) and iface.get("macAddress") and iface.get("name"):
                macs[iface["name"]] = iface["macAddress"]
    except (KeyError, TypeError):
        pass
    for iface in status.get("interfaces") or []:
        if isinstance(iface, dict) and iface.get("mac") and iface.get("name"):
            macs[iface["name"]] = iface["mac"]
    rows = []
    for name, text in sorted(macs.items()):
        try:
            mac = format_mac(parse_mac(text))
        except MacFormatError:
            continue
        rows.append((meta.get("uid"), meta.get("namespace"), meta.get("name"), name, mac, status.get("phase") or "Unknown"))
    return rows


def address_rows(vmi: dict, catalog: Catalog) -> list[tuple]:
    """(vmi uid, namespace, name, interface, network, address) for each address a running guest reports."""
    meta, status = vmi.get("metadata") or {}, vmi.get("status") or {}
    if status.get("phase") != "Running":
        return []
    try:
        multus = multus_interfaces({"spec": {"template": {"spec": vmi.get("spec") or {}}}}, meta.get("namespace") or "")
    except SpecError:
        multus = []
    networks = {m.name: served[0] for m in multus if (served := catalog.by_attachment.get(m.attachment))}
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


class Instances:
    def __init__(self, read: ReadModel, bus: CommandBus, cluster: str) -> None:
        self.cluster = cluster
        self.read, self.bus = read, bus
        self._reported: dict[tuple[str, str], frozenset] = {}  # (vmi uid, interface) -> addresses last sent

    async def listed(self, items: list[dict]) -> None:
        catalog = await self.read.catalog()
        guests = [(vmi, address_rows(vmi, catalog)) for vmi in items]
        await observations.replace_instances(self.read.db, [r for vmi in items for r in interface_rows(vmi)],
                                             [r for _, g in guests for r in g])
        self._reported.clear()
        for vmi, rows in guests:
            await self._report(vmi, rows)

    async def event(self, kind: str, vmi: dict) -> None:
        uid = (vmi.get("metadata") or {}).get("uid")
        if not uid:
            return
        deleted = kind == "DELETED"
        rows = [] if deleted else address_rows(vmi, await self.read.catalog())
        await observations.replace_instances(self.read.db, [] if deleted else interface_rows(vmi), rows, uid=uid)
        if deleted:
            self.forget(uid)
        else:
            await self._report(vmi, rows)

    def forget(self, vmi_uid: str | None = None) -> None:
        for key in [k for k in self._reported if vmi_uid is None or k[0] == vmi_uid]:
            del self._reported[key]

    async def _report(self, vmi: dict, rows: list[tuple]) -> None:
        """One ObserveGuestIps per managed interface whose reported addresses changed."""
        meta = vmi.get("metadata") or {}
        owners = [r for r in meta.get("ownerReferences") or [] if isinstance(r, dict) and r.get("kind") == "VirtualMachine"]
        vm_uid = str((owners[0].get("uid") if owners else meta.get("uid")) or "")
        per_iface: dict[tuple[str, str], set[str]] = {}
        for _uid, _ns, _name, iface, network, address in rows:
            if network is not None:
                per_iface.setdefault((iface, network), set()).add(address)
        for (iface, network), addresses in sorted(per_iface.items()):
            key, seen = (meta.get("uid") or "", iface), frozenset(addresses)
            if self._reported.get(key) == seen:
                continue
            self._reported[key] = seen
            await self.bus.send(ObserveGuestIps(
                command_id=f"guest:{meta.get('uid')}:{meta.get('resourceVersion')}:{iface}", at=now_ms(),
                network=network, namespace=meta["namespace"], vm=meta["name"], vm_uid=vm_uid, interface=iface,
                addresses=tuple(sorted(addresses)), cluster=self.cluster))
