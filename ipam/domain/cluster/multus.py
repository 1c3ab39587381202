"""Pods as Multus and KubeVirt describe them: which secondary networks a pod asks for, and which
VM interface a virt-launcher pod's interface carries.

Read by the pod webhook (MACs for pods), the watcher (pods, IPAMClaims, Whereabouts' records) and
the CNI plugin on the node, which runs from a zipapp with nothing but the standard library: this
module imports nothing else (an import-linter contract keeps it so).

The network-selection annotation ``k8s.v1.cni.cncf.io/networks`` is a JSON list of elements
(``{"name", "namespace", "interface", "mac", "ips", "ipam-claim-reference", ...}``) or the short
form ``ns/name@ifname, other``.  Multus names an element's interface ``net<N>`` (N counting the
elements from 1) when it gives none.  KubeVirt names a VM's secondary pod interfaces after a hash
of the VM network's name (or ``net<N>`` in older releases): both are recognised.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

NETWORKS_ANNOTATION = "k8s.v1.cni.cncf.io/networks"
CLAIM_KEY = "ipam-claim-reference"
LAUNCHER_LABEL, LAUNCHER = "kubevirt.io", "virt-launcher"
FIELD = f"metadata.annotations[{NETWORKS_ANNOTATION}]"


class SelectionError(ValueError):
    """A network-selection annotation that cannot be read: names the field and the reason."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field, self.reason = field, reason


@dataclass(frozen=True)
class Selection:
    """One element of a pod's network-selection annotation."""

    index: int  # position in the annotation
    namespace: str  # of the NetworkAttachmentDefinition
    name: str
    interface: str  # the pod interface (CNI_IFNAME): given, else net<index + 1>
    mac: str | None = None
    claim: str | None = None  # ipam-claim-reference: the IPAMClaim whose addresses this interface takes
    element: Mapping = field(default_factory=dict, compare=False)  # as written (JSON form), to write back

    @property
    def attachment(self) -> str:
        return f"{self.namespace}/{self.name}"


SHORT_ELEMENT = re.compile(r"(?:([a-z0-9][a-z0-9.-]*)/)?([a-z0-9][a-z0-9.-]*)(?:@([A-Za-z0-9_.-]{1,15}))?")


def _short_form(text: str, namespace: str) -> list[dict]:
    elements = []
    for i, item in enumerate(p.strip() for p in text.split(",")):
        found = SHORT_ELEMENT.fullmatch(item)
        if found is None:
            raise SelectionError(FIELD, f"element {i} {item[:80]!r}: expected [<namespace>/]<name>[@<interface>]")
        ns, name, ifname = found.groups()
        elements.append({"name": name, "namespace": ns or namespace, **({"interface": ifname} if ifname else {})})
    return elements


def parse_selections(text: object, namespace: str) -> list[Selection]:
    """The elements of a network-selection annotation (JSON or short form); ``namespace`` is the pod's."""
    if text is None or (isinstance(text, str) and not text.strip()):
        return []
    if not isinstance(text, str):
        raise SelectionError(FIELD, "expected a string")
    if text.lstrip().startswith(("[", "{")):
        try:
            elements = json.loads(text)
        except ValueError as e:
            raise SelectionError(FIELD, f"not JSON: {e}") from None
        if not isinstance(elements, list):
            raise SelectionError(FIELD, "expected a JSON list of network selection elements")
    else:
        elements = _short_form(text, namespace)
    found = []
    for i, element in enumerate(elements):
        where = f"{FIELD}[{i}]"
        if not isinstance(element, Mapping) or not isinstance(element.get("name"), str) or not element["name"]:
            raise SelectionError(where, "expected an object with a name")
        for key in ("namespace", "interface", "mac", CLAIM_KEY):
            if element.get(key) is not None and not isinstance(element[key], str):
                raise SelectionError(f"{where}.{key}", "expected a string")
        found.append(Selection(index=i, namespace=element.get("namespace") or namespace, name=element["name"],
                               interface=element.get("interface") or f"net{i + 1}", mac=element.get("mac") or None,
                               claim=element.get(CLAIM_KEY) or None, element=dict(element)))
    return found


def selections_json(selections: list[Selection], macs: Mapping[int, str]) -> str:
    """The annotation in JSON form, each element as written, with ``macs`` (index -> MAC) set."""
    out = []
    for s in selections:
        element = {"name": s.name, "namespace": s.namespace, **s.element}
        if s.index in macs:
            element["mac"] = macs[s.index]
        out.append(element)
    return json.dumps(out, separators=(",", ":"))


def pod_selections(pod: Mapping) -> list[Selection]:
    meta = pod.get("metadata") or {}
    return parse_selections((meta.get("annotations") or {}).get(NETWORKS_ANNOTATION), meta.get("namespace") or "")


# --- virt-launcher pods ---------------------------------------------------------------------------


def is_launcher(pod: Mapping) -> bool:
    return ((pod.get("metadata") or {}).get("labels") or {}).get(LAUNCHER_LABEL) == LAUNCHER


def owner_of(obj: Mapping, kind: str) -> tuple[str, str] | None:
    """(name, uid) of the controlling owner of that kind (a launcher pod's VMI, a VMI's VM)."""
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if isinstance(ref, Mapping) and ref.get("kind") == kind and ref.get("name") and ref.get("uid"):
            return ref["name"], ref["uid"]
    return None


def launcher_vmi(pod: Mapping) -> str | None:
    """The name of the VMI a virt-launcher pod runs."""
    owner = owner_of(pod, "VirtualMachineInstance")
    if owner is not None:
        return owner[0]
    labels = (pod.get("metadata") or {}).get("labels") or {}
    return labels.get("vm.kubevirt.io/name") or labels.get("kubevirt.io/domain")


def _secondary_networks(vmi: Mapping) -> list[tuple[str, str]]:
    """(network name, NAD "namespace/name") of the VMI's Multus networks that are not the default one."""
    namespace = (vmi.get("metadata") or {}).get("namespace") or ""
    found = []
    for n in (vmi.get("spec") or {}).get("networks") or []:
        multus = n.get("multus") if isinstance(n, Mapping) else None
        if isinstance(multus, Mapping) and not multus.get("default") and isinstance(multus.get("networkName"), str):
            ref = multus["networkName"]
            found.append((n.get("name"), ref if "/" in ref else f"{namespace}/{ref}"))
    return found


def launcher_interface(vmi: Mapping, selections: list[Selection], ifname: str) -> str | None:
    """The VM interface (= its network's name) that pod interface ``ifname`` of a virt-launcher pod
    carries, or None when it carries none of the VMI's secondary networks."""
    networks = _secondary_networks(vmi)
    for name, _ in networks:  # hashed names: sha256(network name) in hex, cut to 11 (older: "pod" + hash)
        digest = hashlib.sha256(str(name).encode()).hexdigest()
        short = ifname.removeprefix("pod")
        if len(short) >= 7 and digest.startswith(short):
            return name
    chosen = next((s for s in selections if s.interface == ifname), None)
    if chosen is None:
        return None
    secondary = [s for s in selections if s.interface != "eth0"]
    position = secondary.index(chosen)
    if position < len(networks) and networks[position][1] == chosen.attachment:
        return networks[position][0]  # the annotation lists the networks in the VMI's order
    same = [name for name, attachment in networks if attachment == chosen.attachment]
    return same[0] if len(same) == 1 else None


def launcher_holder(vmi: Mapping | None, selections: list[Selection], ifname: str) -> tuple[str, str, str] | None:
    """(VM name, VM uid, VM interface) that pod interface ``ifname`` of a virt-launcher pod carries: the
    VM it runs holds that address, not the pod (it must stay across migrations).  None when the VMI is not
    known, has no VM or the interface carries none of its secondary networks: then the pod holds it.
    One answer for the CNI plugin and the Whereabouts import."""
    vm = owner_of(vmi, "VirtualMachine") if vmi else None
    if not vmi or vm is None:
        return None
    interface = launcher_interface(vmi, selections, ifname)
    return None if interface is None else (vm[0], vm[1], interface)


# --- IPAMClaims (k8s.cni.cncf.io/v1alpha1, kubevirt/ipam-extensions) -----------------------------


def claim_holder(claim: Mapping) -> tuple[str, str, str, str]:
    """(namespace, name, uid, interface) of the owner an IPAMClaim's leases have: the interface its
    spec names, else its network (the plugin and the watcher derive the same one)."""
    meta, spec = claim.get("metadata") or {}, claim.get("spec") or {}
    return meta["namespace"], meta["name"], meta["uid"], spec.get("interface") or spec.get("network") or "claim"


def claim_requests(claim: Mapping) -> tuple[str, ...]:
    """The addresses an IPAMClaim asks for (``spec.ipRequests``, CIDRs), without their prefix."""
    return tuple(str(r).partition("/")[0] for r in (claim.get("spec") or {}).get("ipRequests") or [])
