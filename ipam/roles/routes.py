"""Where a VM's interfaces are, for each kind of address: what the watcher observes of a VM.

MAC: the MACs in the VM's spec, each routed to the pool that holds it (as the API routes a
static request); IP: the interfaces on NetworkAttachmentDefinitions an ipam network serves,
with the addresses the VM's ``ipam.kubevirt.io/ip-addresses`` annotation gives them.  Each
kind gives a fingerprint too: what of a VM matters to its leases, to skip status-only updates.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..domain.catalog import Catalog
from ..domain.kinds import IP, MAC, ObservedAddresses, ObservedInterface
from ..domain.kubevirt import SpecError, annotated_addresses, multus_interfaces, spec_macs, vm_interfaces
from ..domain.mac import MacFormatError, format_mac, parse_mac
from ..domain.pools import RoutingError, choose_pool


@dataclass
class Routed:
    by_space: dict[str, list] = field(default_factory=dict)  # space -> the kind's observed interfaces
    unplaced: list[tuple[str, str, str]] = field(default_factory=list)  # (interface, address, why) ipam cannot place
    stale: bool = False  # something was not found that a fresher catalog might know
    unreadable: SpecError | None = None  # the VM cannot be read for this kind: its leases are left as they are


def mac_routes(vm: dict, namespace: str, catalog: Catalog) -> Routed:
    try:
        vm_interfaces(vm)
    except SpecError as e:
        return Routed(unreadable=e)
    routed = Routed()
    for iface, text in sorted(spec_macs(vm).items()):
        try:
            mac = parse_mac(text)
            pool = choose_pool(catalog.pools, namespace, None, mac)
        except (MacFormatError, RoutingError) as e:
            routed.unplaced.append((iface, text, str(e)))
            continue
        routed.by_space.setdefault(pool.name, []).append(ObservedInterface(name=iface, mac=format_mac(mac)))
    routed.stale = bool(routed.unplaced)
    return routed


def ip_routes(vm: dict, namespace: str, catalog: Catalog) -> Routed:
    try:
        multus = multus_interfaces(vm, namespace)
        wanted = annotated_addresses(vm)
    except SpecError as e:
        return Routed(unreadable=e)
    routed = Routed()
    for m in multus:
        networks = catalog.by_attachment.get(m.attachment)
        if not networks:
            routed.stale = True  # a network defined for it since the catalog was read?
            continue
        routed.by_space.setdefault(networks[0].name, []).append(
            ObservedAddresses(name=m.name, addresses=tuple(wanted.get(m.name, ()))))
    return routed


def mac_fingerprint(vm: dict) -> frozenset:
    return frozenset(spec_macs(vm).items())


def ip_fingerprint(vm: dict) -> frozenset:
    namespace = (vm.get("metadata") or {}).get("namespace") or ""
    try:
        multus, wanted = multus_interfaces(vm, namespace), annotated_addresses(vm)
    except SpecError:
        return frozenset()
    return frozenset((m.name, m.attachment, tuple(wanted.get(m.name, ()))) for m in multus)


ROUTES = {MAC: mac_routes, IP: ip_routes}
FINGERPRINTS = {MAC: mac_fingerprint, IP: ip_fingerprint}
