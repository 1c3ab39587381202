"""KubeVirt and Multus objects as ipam reads them: which interfaces get a MAC, which sit on ipam networks,
the JSONPatch that sets their MACs and addresses, and the networks NetworkAttachmentDefinitions define.

Pure functions over the objects as plain JSON (what an AdmissionReview or a watch carries).  The MAC
rule follows KubeMacPool, so a cluster can switch without surprises: an interface gets a MAC when its
network (matched by name in ``spec.template.spec.networks``) is a Multus network, whatever its binding;
or when it is on the pod network with the ``masquerade`` or ``slirp`` binding.  A ``bridge`` binding on
the pod network takes the pod's own MAC and is left alone, as are interfaces without a matching network
(the API server rejects those).

A NAD is managed when it has ``ipam.kubevirt.io/subnets``; its network is named ``<namespace>.<name>``
(unambiguous: namespaces have no dots) unless ``ipam.kubevirt.io/network`` names it, which lets NADs in
several namespaces share one address space.  Lists are comma-separated; each gateway and exclusion
belongs to the subnet that contains it.  A NAD whose CNI configuration delegates IPAM to ``ipam-cni``
is managed too: its network is the one the configuration names (``cniconf``), defined by the
configuration's Whereabouts-style range when it has one.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping
from dataclasses import dataclass

from ..commands import SubnetSpec
from . import cniconf

INTERFACES_PATH = "/spec/template/spec/domain/devices/interfaces"
INTERFACES_FIELD = "spec.template.spec.domain.devices.interfaces"

# Namespace labels: ipam's own, and KubeMacPool's, honoured so a cluster need not relabel.
IPAM_LABEL = "ipam.kubevirt.io/mac-allocation"
KUBEMACPOOL_LABEL = "mutatevirtualmachines.kubemacpool.io"
KUBEMACPOOL_POD_LABEL = "mutatepods.kubemacpool.io"


@dataclass(frozen=True)
class InterfaceNeed:
    index: int
    name: str
    network: str  # "pod" or "multus"
    requested_mac: str | None


class SpecError(ValueError):
    """The object is not shaped like a VirtualMachine; ``field`` is a JSON path."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field, self.reason = field, reason


def _get(obj: object, path: list[str], field: str) -> object:
    for key in path:
        if obj is None:
            return None
        if not isinstance(obj, Mapping):
            raise SpecError(field, "expected an object")
        obj = obj.get(key)
    return obj


def vm_interfaces(vm: Mapping) -> list:
    """``spec.template.spec.domain.devices.interfaces``, checked to be a list ([] when absent)."""
    interfaces = _get(vm, ["spec", "template", "spec", "domain", "devices", "interfaces"], INTERFACES_FIELD) or []
    if not isinstance(interfaces, list):
        raise SpecError(INTERFACES_FIELD, "expected a list")
    return interfaces


def spec_macs(vm: Mapping | None) -> dict[str, str]:
    """interface name -> ``macAddress`` as written in a VM's spec; malformed entries are skipped."""
    try:
        interfaces = vm_interfaces(vm or {})
    except SpecError:
        return {}
    return {i["name"]: i["macAddress"] for i in interfaces
            if isinstance(i, Mapping) and isinstance(i.get("name"), str) and isinstance(i.get("macAddress"), str)}


def interfaces_needing_macs(vm: Mapping) -> list[InterfaceNeed]:
    interfaces = vm_interfaces(vm)
    networks = _get(vm, ["spec", "template", "spec", "networks"], "spec.template.spec.networks") or []
    if not isinstance(networks, list):
        raise SpecError("spec.template.spec.networks", "expected a list")
    by_name = {n.get("name"): n for n in networks if isinstance(n, Mapping)}
    needs = []
    for index, iface in enumerate(interfaces):
        field = f"{INTERFACES_FIELD}[{index}]"
        if not isinstance(iface, Mapping) or not isinstance(iface.get("name"), str):
            raise SpecError(field, "an interface needs a name")
        network = by_name.get(iface["name"])
        if network is None:
            continue
        if "multus" in network:
            kind = "multus"
        elif "pod" in network and ("masquerade" in iface or "slirp" in iface):
            kind = "pod"
        else:
            continue
        mac = iface.get("macAddress")
        if mac is not None and not isinstance(mac, str):
            raise SpecError(f"{field}.macAddress", "expected a string")
        needs.append(InterfaceNeed(index=index, name=iface["name"], network=kind, requested_mac=mac or None))
    return needs


def mac_patch(assigned: Mapping[int, str], needs: list[InterfaceNeed]) -> list[dict]:
    """JSONPatch ops setting ``macAddress`` on the interfaces that lacked one (RFC 6902 ``add``)."""
    return [
        {"op": "add", "path": f"{INTERFACES_PATH}/{need.index}/macAddress", "value": assigned[need.index]}
        for need in needs
        if need.requested_mac is None and need.index in assigned
    ]


def namespace_allows(labels: Mapping[str, str] | None, opt_in_required: bool, kubemacpool_label: str = KUBEMACPOOL_LABEL
                     ) -> bool:
    """Whether ipam assigns MACs in a namespace with these labels (to VMs; to pods with KubeMacPool's
    pod label, ``KUBEMACPOOL_POD_LABEL``).

    ``ignore`` under either label opts out; ``allocate`` under either opts in; with neither,
    the namespace is in unless ``opt_in_required``.
    """
    values = {(labels or {}).get(IPAM_LABEL), (labels or {}).get(kubemacpool_label)}
    if "ignore" in values:
        return False
    if "allocate" in values:
        return True
    return not opt_in_required


# --- IP addresses on secondary networks --------------------------------------------------

IP_ANNOTATION = "ipam.kubevirt.io/ip-addresses"  # {"<interface>": ["10.0.0.5", "fd00::5"]}: asked for, then as leased
NETWORKS_FIELD = "spec.template.spec.networks"


@dataclass(frozen=True)
class MultusInterface:
    index: int
    name: str
    attachment: str  # "namespace/name" of the NetworkAttachmentDefinition


def multus_interfaces(vm: Mapping, namespace: str) -> list[MultusInterface]:
    """Interfaces on Multus networks with the NetworkAttachmentDefinition each uses (a bare
    ``networkName`` is in the VM's own namespace)."""
    interfaces = vm_interfaces(vm)
    networks = _get(vm, ["spec", "template", "spec", "networks"], NETWORKS_FIELD) or []
    if not isinstance(networks, list):
        raise SpecError(NETWORKS_FIELD, "expected a list")
    by_name = {n.get("name"): n for n in networks if isinstance(n, Mapping)}
    found = []
    for index, iface in enumerate(interfaces):
        if not isinstance(iface, Mapping) or not isinstance(iface.get("name"), str):
            continue
        multus = (by_name.get(iface["name"]) or {}).get("multus")
        if not isinstance(multus, Mapping):
            continue
        ref = multus.get("networkName")
        if not isinstance(ref, str) or not ref:
            raise SpecError(f"{NETWORKS_FIELD}[{iface['name']}].multus.networkName", "expected a string")
        found.append(MultusInterface(index=index, name=iface["name"], attachment=ref if "/" in ref else f"{namespace}/{ref}"))
    return found


def annotated_addresses(vm: Mapping | None) -> dict[str, list[str]]:
    """The ``ipam.kubevirt.io/ip-addresses`` annotation: interface -> addresses (JSON)."""
    text = (metadata_of(vm).get("annotations") or {}).get(IP_ANNOTATION)
    if text is None:
        return {}
    field = f"metadata.annotations[{IP_ANNOTATION}]"
    try:
        value = json.loads(text) if isinstance(text, str) else None
    except ValueError as e:
        raise SpecError(field, f"not JSON: {e}") from None
    if not isinstance(value, Mapping) or not all(
            isinstance(k, str) and isinstance(v, list) and all(isinstance(a, str) for a in v) for k, v in value.items()):
        raise SpecError(field, 'expected {"<interface>": ["<address>", ...]}')
    return {k: list(v) for k, v in value.items()}


def metadata_of(vm: Mapping | None) -> Mapping:
    meta = (vm or {}).get("metadata")
    return meta if isinstance(meta, Mapping) else {}


def annotation_patch(vm: Mapping, addresses: Mapping[str, list[str]]) -> list[dict]:
    """JSONPatch setting the annotation to what is leased (RFC 6901 escapes '/' as '~1')."""
    value = json.dumps(dict(sorted(addresses.items())), separators=(",", ":"))
    if not isinstance(metadata_of(vm).get("annotations"), Mapping):
        return [{"op": "add", "path": "/metadata/annotations", "value": {IP_ANNOTATION: value}}]
    return [{"op": "add", "path": "/metadata/annotations/" + IP_ANNOTATION.replace("~", "~0").replace("/", "~1"), "value": value}]


PREFIX = "ipam.kubevirt.io/"
SUBNETS = PREFIX + "subnets"
GATEWAYS = PREFIX + "gateways"
EXCLUDE = PREFIX + "exclude"
DNS = PREFIX + "dns"
NETWORK = PREFIX + "network"


@dataclass(frozen=True)
class NadNetwork:
    attachment: str  # "namespace/name"
    network: str
    subnets: tuple[SubnetSpec, ...]  # empty: the NAD only names a network defined elsewhere
    dns: tuple[str, ...]
    version: str = ""  # the NAD's resourceVersion: a definition changed back and forth is still a new command
    config_name: str = ""  # the CNI configuration's name (what an IPAMClaim's spec.network names)


def _items(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _field(key: str) -> str:
    return f"metadata.annotations[{key}]"


def nad_network(nad: Mapping) -> NadNetwork | None:
    """The network a NAD defines, or None when it carries no ``ipam.kubevirt.io/subnets``.  Raises SpecError."""
    meta = nad.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    if not isinstance(annotations, Mapping) or SUBNETS not in annotations:
        return cni_network(nad)
    namespace, name = meta.get("namespace"), meta.get("name")
    texts = {k: annotations.get(k) for k in (SUBNETS, GATEWAYS, EXCLUDE, DNS, NETWORK)}
    for key, value in texts.items():
        if value is not None and not isinstance(value, str):
            raise SpecError(_field(key), "expected a string")
    subnets = subnet_specs(_items(texts[SUBNETS] or ""), _items(texts[GATEWAYS] or ""), _items(texts[EXCLUDE] or ""),
                           (_field(SUBNETS), _field(GATEWAYS), _field(EXCLUDE)))
    network = (texts[NETWORK] or "").strip() or f"{namespace}.{name}"
    return NadNetwork(attachment=f"{namespace}/{name}", network=network, subnets=subnets, dns=tuple(_items(texts[DNS] or "")),
                      version=str(meta.get("resourceVersion") or ""))


def cni_network(nad: Mapping) -> NadNetwork | None:
    """The network of a NAD whose configuration delegates IPAM to ipam-cni, or None.  Raises SpecError."""
    meta = nad.get("metadata") or {}
    try:
        found = cniconf.nad_config(nad)
        if found is None:
            return None
        conf, section = found
        network = cniconf.network_name(conf, section)
        subnets = cniconf.whereabouts_subnets(section)
    except cniconf.ConfigError as e:
        raise SpecError(f"spec.config {e.field}", e.reason) from None
    dns = (section.get("dns") or {}).get("nameservers") or [] if isinstance(section.get("dns"), Mapping) else []
    return NadNetwork(attachment=f"{meta.get('namespace')}/{meta.get('name')}", network=network,
                      subnets=tuple(SubnetSpec(cidr=s["cidr"], gateway=s.get("gateway"), exclude=tuple(s["exclude"]))
                                    for s in subnets),
                      dns=tuple(str(d) for d in dns), version=str(meta.get("resourceVersion") or ""),
                      config_name=str(conf.get("name") or ""))


def subnet_specs(cidrs: list[str], gateways: list[str], excludes: list[str],
                 fields: tuple[str, str, str] = ("subnets", "gateways", "exclude")) -> tuple[SubnetSpec, ...]:
    """Subnets from flat lists, each gateway and exclusion given to the subnet that contains it."""
    if not cidrs:
        raise SpecError(fields[0], "lists no subnet")
    nets = []
    for c in cidrs:
        try:
            nets.append(ipaddress.ip_network(c, strict=False))
        except ValueError:
            raise SpecError(fields[0], f"{c[:80]!r} is not a CIDR") from None
    by_subnet: dict[int, str] = {}
    for gw in gateways:
        i = _containing(nets, gw, fields[1])
        if i in by_subnet:
            raise SpecError(fields[1], f"two gateways for subnet {cidrs[i]}")
        by_subnet[i] = gw
    excluded: dict[int, list[str]] = {}
    for x in excludes:
        excluded.setdefault(_containing(nets, x.partition("-")[0].partition("/")[0], fields[2]), []).append(x)
    return tuple(SubnetSpec(cidr=c, gateway=by_subnet.get(i), exclude=tuple(excluded.get(i, ()))) for i, c in enumerate(cidrs))


def _containing(nets: list, text: str, field: str) -> int:
    try:
        addr = ipaddress.ip_address(text.strip())
    except ValueError:
        raise SpecError(field, f"{text[:80]!r} is not an address") from None
    for i, n in enumerate(nets):
        if addr.version == n.version and addr in n:
            return i
    raise SpecError(field, f"{text} is in none of the subnets")
