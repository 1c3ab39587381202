"""``ipam-cni``: the CNI IPAM plugin.  ADD leases the interface its addresses from ipam, DEL
releases them, CHECK compares, STATUS says whether ipam answers, VERSION and GC as the spec asks.

Who holds the addresses (``identify``):
- a plain pod: the pod (namespace, name, K8S_POD_UID, else its infra container id) and CNI_IFNAME.
  ADD again for it returns the same addresses; DEL releases them, and succeeds for anything.
- a KubeVirt virt-launcher pod (seen when the node has a kubeconfig): the VM and the VM's
  interface, as the admission webhook leases them.  The migration target's ADD gets what the
  source holds; DEL of either releases nothing; the watcher releases them when the VM is deleted.
- an interface whose network-selection element names an IPAMClaim: the claim; deleting the
  claim releases them.
"""

from __future__ import annotations

import ipaddress
import json
import os
import sys
import urllib.parse
from dataclasses import dataclass

from ..domain.cluster import cniconf, multus
from . import config
from .clients import Ipam, Kube
from .protocol import (
    ADDRESS_HELD,
    EXHAUSTED,
    INVALID_CONFIG,
    INVALID_ENVIRONMENT,
    NOT_AVAILABLE,
    REFUSED,
    UNKNOWN_CONTAINER,
    CniError,
    cni_args,
    read_config,
    result,
    result_addresses,
    version_answer,
)

POD, VM, CLAIM = "Pod", "VirtualMachine", "IPAMClaim"


@dataclass(frozen=True)
class Holder:
    namespace: str
    name: str
    uid: str
    interface: str
    workload: str = POD
    requested: tuple[str, ...] = ()  # addresses asked for by name (IPAMClaim ipRequests, runtimeConfig ips)

    def owner(self) -> dict:
        return {"namespace": self.namespace, "vm": self.name, "vm_uid": self.uid, "interface": self.interface,
                "workload": self.workload}


def _env(name: str) -> str:
    value = os.environ.get(name, "")
    if not value:
        raise CniError(INVALID_ENVIRONMENT, f"{name} is not set")
    return value


def pod_holder(args: dict[str, str], ifname: str, requested: tuple[str, ...]) -> Holder:
    container = os.environ.get("CNI_CONTAINERID", "")
    namespace, name = args.get("K8S_POD_NAMESPACE"), args.get("K8S_POD_NAME")
    uid = args.get("K8S_POD_UID") or f"container:{args.get('K8S_POD_INFRA_CONTAINER_ID') or container}"
    if not (namespace and name):  # not run by Kubernetes: the container is the holder
        namespace, name = "cni", container
    return Holder(namespace, name, uid, ifname, POD, requested)


def _launcher_holder(kube: Kube, pod: dict, selections: list, ifname: str) -> Holder | None:
    namespace = pod["metadata"]["namespace"]
    vmi_name = multus.launcher_vmi(pod)
    vmi = kube.vmi(namespace, vmi_name) if vmi_name else None
    held = multus.launcher_holder(vmi, selections, ifname)
    return None if held is None else Holder(namespace, *held, VM)


def identify(args: dict[str, str], ifname: str, kube: Kube | None, requested: tuple[str, ...] = ()) -> Holder:
    plain = pod_holder(args, ifname, requested)
    if kube is None or plain.namespace == "cni":
        return plain
    pod = kube.pod(plain.namespace, plain.name)
    if pod is None:
        return plain
    try:
        selections = multus.pod_selections(pod)
    except multus.SelectionError as e:
        raise CniError(INVALID_CONFIG, f"pod {plain.namespace}/{plain.name}: {e}") from None
    chosen = next((s for s in selections if s.interface == ifname), None)
    if chosen is not None and chosen.claim:
        claim = kube.claim(plain.namespace, chosen.claim)
        if claim is None:
            raise CniError(INVALID_CONFIG, f"IPAMClaim {plain.namespace}/{chosen.claim} (ipam-claim-reference of "
                                           f"interface {ifname}) does not exist")
        namespace, name, uid, interface = multus.claim_holder(claim)
        return Holder(namespace, name, uid, interface, CLAIM, multus.claim_requests(claim) or requested)
    if multus.is_launcher(pod):
        return _launcher_holder(kube, pod, selections, ifname) or plain
    return plain


class Plugin:
    def __init__(self, conf: dict) -> None:
        self.conf = conf
        try:
            self.section = cniconf.ipam_section(conf)
            self.network = cniconf.network_name(conf, self.section)
        except cniconf.ConfigError as e:
            raise CniError(INVALID_CONFIG, str(e)) from None
        self.settings = config.settings(self.section)
        self.ipam = Ipam(self.settings)
        self.version = conf["cniVersion"]

    def holder(self) -> Holder:
        runtime = (self.conf.get("runtimeConfig") or {}).get("ips") or []
        requested = tuple(str(ipaddress.ip_interface(a).ip) for a in runtime if isinstance(a, str))
        kube = Kube(self.settings.kubeconfig, self.settings.timeout) if self.settings.kubeconfig else None
        return identify(cni_args(os.environ.get("CNI_ARGS", "")), _env("CNI_IFNAME"), kube, requested)

    def add(self) -> dict:
        _env("CNI_CONTAINERID")
        holder = self.holder()
        answer = self._lease(holder)
        if answer.error.get("code") == "unknown_network":
            self._define()
            answer = self._lease(holder)
        if answer.status not in (200, 201):
            raise _refusal(answer, self.network)
        leases = answer.body["leases"]
        # the answer carries each address's gateway; an ipam older than the plugin (an upgrade under way) does not
        gateways = {} if all("gateway" in x for x in leases) else self._gateways()
        ips = [(f"{x['address']}/{x['prefix_length']}", x.get("gateway") or gateways.get(ipaddress.ip_interface(
            f"{x['address']}/{x['prefix_length']}").network)) for x in leases]
        return result(self.version, ips, self.section.get("routes") or [], self.section.get("dns") or {})

    def _lease(self, holder: Holder):
        """No retry key: a lease is sticky, so an ADD repeated (or retried after a timeout) gets what the
        first one leased, and one refused (exhausted) is decided again once addresses are free."""
        body = {"network": self.network, **holder.owner(), "addresses": list(holder.requested)}
        return self.ipam.call("POST", "/v1/ip-leases", body)

    def _define(self) -> None:
        """Define the network from the section's Whereabouts range, the first time it is used."""
        try:
            subnets = cniconf.whereabouts_subnets(self.section)
        except cniconf.ConfigError as e:
            raise CniError(INVALID_CONFIG, str(e)) from None
        if not subnets:
            raise CniError(INVALID_CONFIG, f"ipam network {self.network!r} does not exist and the ipam section gives no "
                                           "range to define it (create it with `ipam network create`, or add a range)")
        answer = self.ipam.call("POST", "/v1/networks", {"name": self.network, "subnets": subnets, "source": "cni"})
        if answer.status not in (200, 201) and answer.error.get("code") != "exists":
            raise CniError(INVALID_CONFIG, f"cannot define network {self.network!r} from the ipam section: "
                                           f"{answer.error.get('message')}")

    def _gateways(self) -> dict:
        """The network's gateways by subnet, asked for only when the lease answer does not carry them."""
        answer = self.ipam.call("GET", f"/v1/networks/{urllib.parse.quote(self.network, safe='')}")
        subnets = answer.body.get("subnets") or [] if answer.status == 200 else []
        return {ipaddress.ip_network(s["cidr"]): s.get("gateway") for s in subnets}

    def delete(self) -> dict | None:
        holder = pod_holder(cni_args(os.environ.get("CNI_ARGS", "")), _env("CNI_IFNAME"), ())
        quote = lambda s: urllib.parse.quote(s, safe="")  # noqa: E731
        path = (f"/v1/ip-leases/{quote(self.network)}/{quote(holder.namespace)}/{quote(holder.name)}/"
                f"{quote(holder.interface)}?" + urllib.parse.urlencode({"vm_uid": holder.uid, "workload": POD}))
        try:
            self.ipam.call("DELETE", path, again=frozenset({429}))  # not ready: the watcher's release comes later
        except CniError as e:  # the watcher releases what a deleted pod held once ipam is back: DEL must not block
            print(f"ipam-cni: DEL could not reach ipam ({e.msg}); the watcher releases the lease later", file=sys.stderr)
        return None

    def check(self) -> dict | None:
        holder = self.holder()
        query = urllib.parse.urlencode({"network": self.network, **{k: v for k, v in holder.owner().items()
                                                                     if k in ("namespace", "vm", "vm_uid", "workload")}})
        answer = self.ipam.call("GET", f"/v1/ip-leases?{query}")
        held = {x["address"] for x in answer.body.get("leases") or [] if x["interface"] == holder.interface}
        configured = result_addresses(self.conf.get("prevResult"))
        if not held or (configured and not configured <= held):
            raise CniError(UNKNOWN_CONTAINER, f"{holder.namespace}/{holder.name} interface {holder.interface} holds "
                                              f"{sorted(held) or 'nothing'} in network {self.network!r}; the container "
                                              f"has {sorted(configured)}")
        return None

    def status(self) -> dict | None:
        try:
            ready = self.ipam.call("GET", "/readyz", again=frozenset()).status == 200
        except CniError as e:
            raise CniError(NOT_AVAILABLE, e.msg) from None
        if not ready:
            raise CniError(NOT_AVAILABLE, f"ipam at {self.settings.url} is not ready")
        return None


def _refusal(answer, network: str) -> CniError:
    error = answer.error
    message = f"ipam: {error.get('message') or answer.status}"
    if error.get("code") == "exhausted":
        return CniError(EXHAUSTED, message)
    if error.get("code") == "held":
        return CniError(ADDRESS_HELD, message)
    if answer.status == 404:
        return CniError(INVALID_CONFIG, f"ipam network {network!r}: {message}")
    return CniError(REFUSED, message, f"HTTP {answer.status}, field {error.get('field')}")


def run(command: str, stdin: str) -> dict | None:
    if command == "VERSION":
        try:
            version = json.loads(stdin or "{}").get("cniVersion") or "1.0.0"
        except (ValueError, AttributeError):
            version = "1.0.0"
        return version_answer(version)
    conf = read_config(stdin)
    if command == "GC":  # nothing lives on the node: the watcher releases what deleted pods held
        return None
    plugin = Plugin(conf)
    verbs = {"ADD": plugin.add, "DEL": plugin.delete, "CHECK": plugin.check, "STATUS": plugin.status}
    if command not in verbs:
        raise CniError(INVALID_ENVIRONMENT, f"CNI_COMMAND {command!r} is not one of {', '.join(['VERSION', 'GC', *verbs])}")
    return verbs[command]()


def main() -> None:
    stdin = sys.stdin.read()
    try:
        answer = run(os.environ.get("CNI_COMMAND", ""), stdin)
    except CniError as e:
        try:
            version = json.loads(stdin).get("cniVersion") or "1.0.0"
        except (ValueError, AttributeError):
            version = "1.0.0"
        print(json.dumps(e.answer(version)))
        sys.exit(1)
    if answer is not None:
        print(json.dumps(answer))
