"""The mutating admission webhook for KubeVirt VirtualMachines and for pods (AdmissionReview admission.k8s.io/v1).

A review is answered in four steps: parse (what ipam reads of the review, or a denial naming
the field), plan (a lease command per interface that needs a MAC or sits on an ipam network),
decide (each command through the gateway; the API server's retries get the stored answers),
patch (MACs, the address annotation, cloud-init networkData).  Every review gets an
AdmissionReview answer, never an HTTP error.  At CREATE the VM has no uid yet, so leases are
provisional ("admission:<request uid>") until the watcher sees the VM.  The answer is bounded by
a deadline below the webhook's ``timeoutSeconds``: a slow pipeline means a clear denial (the
user retries), not an API server timeout.

A pod gets a MAC in each element of its ``k8s.v1.cni.cncf.io/networks`` annotation that has none
(the short form is rewritten as JSON), from the same pools and under the same namespace labels as
VMs; a MAC an element names is a static request.  virt-launcher pods are left alone: their
interfaces carry the VM's MACs.  What differs between the two kinds of object is how a review is
planned and patched; the review, the deadline, the decisions and the denials are written once.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import structlog
from aiohttp import web

from .. import telemetry
from ..adapters.kubernetes import NamespaceLabels
from ..adapters.postgres.read_model import ReadModel
from ..clock import now_ms
from ..config import Config
from ..domain.cluster import admission_review as shapes
from ..domain.cluster import multus
from ..domain.cluster.cloudinit import Addressed, NetworkDataConflict, cloud_init_patch, written_addresses
from ..domain.cluster.kubevirt import (
    INTERFACES_FIELD,
    KUBEMACPOOL_LABEL,
    KUBEMACPOOL_POD_LABEL,
    InterfaceNeed,
    MultusInterface,
    SpecError,
    annotated_addresses,
    annotation_patch,
    interfaces_needing_macs,
    mac_patch,
    metadata_of,
    multus_interfaces,
    namespace_allows,
    spec_macs,
    vm_interfaces,
)
from ..domain.commands import LeaseIp, LeaseMac
from ..domain.events import (
    CommandRejected,
    IpLeaseConfirmed,
    IpLeased,
    IpLeaseOffered,
    IpLeaseReturned,
    MacLeaseConfirmed,
    MacLeased,
    MacLeaseOffered,
    MacLeaseReturned,
)
from ..domain.ip import format_address, parse_address
from ..domain.kinds import POD_WORKLOAD, PROVISIONAL_UID_PREFIX, Owner
from ..domain.mac import MacFormatError, format_mac, parse_mac
from ..domain.networks import Network
from ..domain.pools import RoutingError, choose_pool
from .http import STATUS, ApiError, Gateway

log = structlog.get_logger("ipam.webhook")

REVIEW_VERSION = "admission.k8s.io/v1"
# the events that carry an address the interface holds (or, for a dry run, would)
MAC_HELD = (MacLeased, MacLeaseReturned, MacLeaseOffered, MacLeaseConfirmed)
IP_HELD = (IpLeased, IpLeaseReturned, IpLeaseOffered, IpLeaseConfirmed)
VM_KIND = {"group": "kubevirt.io", "version": "v1", "kind": "VirtualMachine"}
POD_KIND = {"group": "", "version": "v1", "kind": "Pod"}
_UID = re.compile(rb'"uid"\s*:\s*"([^"]{1,128})"')


class Denied(Exception):
    """The review is refused; ``message`` is what the user sees from kubectl."""

    def __init__(self, message: str, code: int = 400) -> None:
        super().__init__(message)
        self.message, self.code = message, code


def answer(uid: str, allowed: bool, *, patch: list | None = None, message: str | None = None, code: int = 200,
           warnings: list[str] | None = None) -> dict:
    response: dict = {"uid": uid, "allowed": allowed}
    if warnings:
        response["warnings"] = warnings
    if patch:
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(json.dumps(patch).encode()).decode()
    if message is not None:
        response["status"] = {"code": code, "message": message}
    return {"apiVersion": REVIEW_VERSION, "kind": "AdmissionReview", "response": response}


@dataclass
class Plan:
    """What one review asks ipam to decide."""

    uid: str
    vm: Mapping  # the object under review (a VM or a pod)
    needs: list[InterfaceNeed]  # interfaces that get a MAC
    addressed: list[tuple[MultusInterface, Network]]  # (interface, network) for interfaces on ipam networks
    commands: list[tuple[str, LeaseMac | LeaseIp]] = field(default_factory=list)  # (interface, lease command)
    selections: list = field(default_factory=list)  # a pod's network-selection elements


def _spec(call, *args):
    try:
        return call(*args)
    except SpecError as e:
        raise Denied(f"{e.field}: {e.reason}") from None


class Webhook:
    def __init__(self, cfg: Config, gateway: Gateway, read: ReadModel, namespaces: NamespaceLabels) -> None:
        self.cfg, self.gateway, self.read, self.namespaces = cfg, gateway, read, namespaces

    async def mutate(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        raw = await request.read()
        uid = ""
        try:
            if len(raw) > self.cfg.max_body_bytes:
                m = _UID.search(raw[:4096])
                uid = m.group(1).decode() if m else ""
                raise Denied(f"AdmissionReview is {len(raw)} bytes; ipam accepts at most {self.cfg.max_body_bytes}", 413)
            req = self._request_of(raw)
            uid = req["uid"]
            result = await asyncio.wait_for(self._review(req), self.cfg.webhook_deadline_seconds)
        except Denied as e:
            log.info("review denied", uid=uid, reason=e.message)
            result = answer(uid, False, message=e.message, code=e.code)
        except TimeoutError:
            log.warning("review timed out", uid=uid)
            result = answer(uid, False, code=503, message=f"ipam could not assign addresses within "
                            f"{self.cfg.webhook_deadline_seconds:g}s (its pipeline is slow or down); please retry")
        outcome = "allowed" if result["response"]["allowed"] else "denied"
        if result["response"].get("status", {}).get("code", 0) >= 500:
            outcome = "error"  # ipam could not decide: the API server refuses the change (failurePolicy Fail)
        telemetry.webhook_reviews.labels(outcome).inc()
        telemetry.webhook_seconds.observe(time.perf_counter() - started)
        return web.json_response(result)

    @staticmethod
    def _request_of(raw: bytes) -> Mapping:
        try:
            review = json.loads(raw)
        except ValueError as e:
            raise Denied(f"body is not JSON: {e}") from None
        req = review.get("request") if isinstance(review, Mapping) else None
        if not isinstance(req, Mapping) or not isinstance(req.get("uid"), str):
            raise Denied("request.uid: an AdmissionReview needs a request with a uid")
        if review.get("apiVersion") != REVIEW_VERSION or review.get("kind") != "AdmissionReview":
            raise Denied(f"apiVersion/kind: expected {REVIEW_VERSION} AdmissionReview, got "
                         f"{str(review.get('apiVersion'))[:80]} {str(review.get('kind'))[:80]}")
        wrong = shapes.problem(req, shapes.Request, "request")
        if wrong:
            raise Denied(wrong)
        if "\x00" in req["uid"] or len(req["uid"]) > 128:
            raise Denied("request.uid: expected a uid (at most 128 characters, no U+0000)")
        return req

    async def _review(self, req: Mapping) -> dict:
        plan = await self._plan(req)
        if plan is None or not plan.commands:
            return answer(req["uid"], True)
        macs, ips = await self._decide(plan)
        patch, warnings = self._patch(plan, macs, ips)
        log.info("review admitted", uid=plan.uid, operation=req.get("operation"), namespace=req.get("namespace"),
                 vm=plan.commands[0][1].owner.vm, dry_run=bool(req.get("dryRun")), macs=macs, ips=ips)
        return answer(plan.uid, True, patch=patch, warnings=warnings)

    async def _plan(self, req: Mapping) -> Plan | None:
        """The lease commands the review needs; None when ipam leaves the object alone."""
        kind = dict(req.get("kind") or {})
        if kind not in (VM_KIND, POD_KIND):
            raise Denied(f"request.kind: ipam mutates kubevirt.io/v1 VirtualMachine and v1 Pod, not {req.get('kind')}")
        operation, namespace, obj = req.get("operation"), req.get("namespace"), req.get("object")
        if operation not in (("CREATE", "UPDATE") if kind == VM_KIND else ("CREATE",)):
            return None
        if not isinstance(namespace, str) or not namespace:
            raise Denied(f"request.namespace: a {kind['kind']} is namespaced")
        if self.cfg.namespace_opt_in and not self.namespaces.known:
            raise Denied("namespace labels are not known yet (set IPAM_KUBE_API so the webhook can read them); "
                         "in opt-in mode ipam cannot tell whether this namespace opted in. Please retry", 503)
        label = KUBEMACPOOL_POD_LABEL if kind == POD_KIND else KUBEMACPOOL_LABEL
        if not namespace_allows(self.namespaces.get(namespace), self.cfg.namespace_opt_in, label):
            return None  # opted out: admitted untouched
        if not isinstance(obj, Mapping):
            raise Denied("request.object: missing")
        shape = shapes.Pod if kind == POD_KIND else shapes.VirtualMachine
        for value, root in ((obj, "request.object"), (req.get("oldObject"), "request.oldObject")):
            wrong = None if value is None else shapes.problem(value, shape, root)
            if wrong:
                raise Denied(wrong)
        if kind == POD_KIND:
            return await self._plan_pod(req, namespace, obj)
        return await self._plan_vm(req, namespace, obj, req.get("oldObject") if operation == "UPDATE" else None)

    async def _plan_pod(self, req: Mapping, namespace: str, pod: Mapping) -> Plan | None:
        if multus.is_launcher(pod):
            return None  # its interfaces carry the VM's MACs
        try:
            selections = multus.pod_selections(pod)
        except multus.SelectionError as e:
            raise Denied(f"{e.field}: {e.reason}") from None
        if len(selections) > self.cfg.max_interfaces:
            raise Denied(f"{multus.FIELD}: {len(selections)} networks; ipam allows at most {self.cfg.max_interfaces}")
        if not selections:
            return None
        plan = Plan(uid=req["uid"], vm=pod, needs=[], addressed=[], selections=selections)
        catalog = await self.read.catalog()
        common, suffix, name, uid = self._owner_basics(plan, req, None, "Pod")
        for s in selections:
            plan.commands.append((s.interface, self._mac_command(
                plan, s.interface, s.mac, f"{multus.FIELD}[{s.index}].mac", catalog, namespace, common, suffix,
                Owner(namespace=namespace, vm=name, vm_uid=uid, interface=s.interface, workload=POD_WORKLOAD,
                      cluster=self.cfg.cluster))))
        return plan

    async def _plan_vm(self, req: Mapping, namespace: str, vm: Mapping, old: Mapping | None) -> Plan:
        needs, multus = _spec(interfaces_needing_macs, vm), _spec(multus_interfaces, vm, namespace)
        count = len(vm_interfaces(vm))  # checked by interfaces_needing_macs
        if count > self.cfg.max_interfaces:
            raise Denied(f"{INTERFACES_FIELD}: {count} interfaces; ipam allows at most {self.cfg.max_interfaces}")
        catalog = await self.read.catalog()
        plan = Plan(uid=req["uid"], vm=vm, needs=needs, addressed=[])
        for m in multus:
            networks = catalog.by_attachment.get(m.attachment, [])
            if len(networks) > 1:
                raise Denied(f"interface {m.name}: NetworkAttachmentDefinition {m.attachment} is attached to several ipam "
                             f"networks ({', '.join(sorted(n.name for n in networks))}); it must serve one", 409)
            if networks:
                plan.addressed.append((m, networks[0]))
        if needs or plan.addressed:
            self._commands(plan, req, namespace, old, catalog)
        return plan

    def _owner_basics(self, plan: Plan, req: Mapping, old: Mapping | None, kind: str) -> tuple[dict, str, str, str]:
        """(fields every lease command of the review has, command id suffix, owner name, owner uid)."""
        meta, old_meta = metadata_of(plan.vm), metadata_of(old)
        name = meta.get("name") or old_meta.get("name") or meta.get("generateName")
        if not isinstance(name, str) or not name:
            raise Denied(f"metadata.name: a {kind} needs a name or generateName")
        uid = meta.get("uid") or old_meta.get("uid") or f"{PROVISIONAL_UID_PREFIX}{plan.uid}"
        dry_run, now = bool(req.get("dryRun")), now_ms()
        common = {"at": now, "pending_until": now + self.cfg.pending_seconds * 1000, "dry_run": dry_run,
                  "receives": is_receiver(plan.vm)}
        return common, ":dry-run" if dry_run else "", name, uid

    @staticmethod
    def _mac_command(plan: Plan, iface: str, wanted: str | None, where: str, catalog, namespace: str, common: dict,
                     suffix: str, owner: Owner) -> LeaseMac:
        try:
            mac = None if wanted is None else parse_mac(wanted)
            pool = choose_pool(catalog.pools, namespace, None, mac)
        except MacFormatError as e:
            raise Denied(f"{where}: {e}") from None
        except RoutingError as e:
            raise Denied(f"{where if e.field == 'mac' else 'pool'}: {e.reason}") from None
        return LeaseMac(command_id=f"admission:{plan.uid}:{iface}{suffix}", pool=pool.name,
                        mac=None if mac is None else format_mac(mac), owner=owner, **common)

    def _commands(self, plan: Plan, req: Mapping, namespace: str, old: Mapping | None, catalog) -> None:
        common, suffix, name, vm_uid = self._owner_basics(plan, req, old, "VirtualMachine")
        wanted_ips = {**_spec(annotated_addresses, old), **_spec(annotated_addresses, plan.vm)}
        old_macs = spec_macs(old)
        for need in plan.needs:
            plan.commands.append((need.name, self._mac_command(
                plan, need.name, need.requested_mac or old_macs.get(need.name),
                f"{INTERFACES_FIELD}[{need.index}].macAddress", catalog, namespace, common, suffix,
                Owner(namespace=namespace, vm=name, vm_uid=vm_uid, interface=need.name, cluster=self.cfg.cluster))))
        written = self._written(plan, old_macs)
        for m, network in plan.addressed:
            plan.commands.append((m.name, LeaseIp(
                command_id=f"admission:{plan.uid}:ip:{m.name}{suffix}", network=network.name,
                owner=Owner(namespace=namespace, vm=name, vm_uid=vm_uid, interface=m.name, cluster=self.cfg.cluster),
                addresses=tuple(wanted_ips.get(m.name) or written.get(m.name) or ()), **common)))

    @staticmethod
    def _written(plan: Plan, old_macs: dict[str, str]) -> dict[str, list[str]]:
        """Addresses the user's own networkData gives interfaces on ipam networks: asked for as static leases, so a
        user's address is held for this VM (or refused, naming the holder) and never handed to another."""
        macs = {**old_macs, **spec_macs(plan.vm)}
        wanted = [(m.name, macs.get(m.name), m.index) for m, _ in plan.addressed]
        try:
            return _spec(written_addresses, plan.vm, wanted)
        except NetworkDataConflict as e:
            raise Denied(str(e)) from None

    async def _decide(self, plan: Plan) -> tuple[dict[str, str], dict[str, list[str]]]:
        """Each command's answer: the stored one when the API server retries a review (same uid, same ids)."""
        try:
            outcomes = await self.gateway.submit_all([cmd for _, cmd in plan.commands])
        except ApiError as e:
            if e.status == 429:  # overload: denied now, before any lease is made, rather than at the deadline
                raise Denied(f"{e.message} (the API server's client retries)", 429) from None
            if e.status == 504:
                raise TimeoutError from e  # no answer in time: the deadline's denial says retry
            raise Denied(e.message, e.status) from None
        macs: dict[str, str] = {}
        ips: dict[str, list[str]] = {}
        for (iface, cmd), events in zip(plan.commands, outcomes, strict=True):
            for ev in events:
                if isinstance(ev, CommandRejected):
                    what = "MAC" if isinstance(cmd, LeaseMac) else "IP addresses"
                    raise Denied(f"interface {iface} ({what}): {ev.reason}", STATUS.get(ev.code, 400))
            if isinstance(cmd, LeaseMac):
                macs[iface] = next(ev.mac for ev in reversed(events) if isinstance(ev, MAC_HELD))
            else:
                ips[iface] = [ev.address for ev in events if isinstance(ev, IP_HELD)]
        return macs, ips

    def _patch(self, plan: Plan, macs: dict[str, str], ips: dict[str, list[str]]) -> tuple[list[dict], list[str]]:
        """MACs on the interfaces that lacked one (old MACs come back on a re-apply), then the addresses."""
        if plan.selections:  # a pod: every element of its annotation with its MAC
            value = multus.selections_json(plan.selections, {s.index: macs[s.interface] for s in plan.selections})
            return [{"op": "add", "path": "/metadata/annotations/" + multus.NETWORKS_ANNOTATION.replace("/", "~1"),
                     "value": value}], []
        patch = mac_patch({n.index: macs[n.name] for n in plan.needs}, plan.needs)
        if not plan.addressed:
            return patch, []
        entries = []
        for m, network in plan.addressed:
            if m.name not in macs:
                raise Denied(f"interface {m.name}: has no MAC address to match its cloud-init networkData by")
            entries.append(addressed_entry(m.name, macs[m.name], ips[m.name], network, m.index))
        dhcp = {f"eth{n.index}": macs[n.name] for n in plan.needs if n.network == "pod"}  # named as the guest names it
        try:
            ops, warning = cloud_init_patch(plan.vm, entries, dhcp)
        except NetworkDataConflict as e:
            raise Denied(str(e)) from None
        except SpecError as e:
            raise Denied(f"{e.field}: {e.reason}") from None
        return patch + annotation_patch(plan.vm, {m.name: ips[m.name] for m, _ in plan.addressed}) + ops, \
            [warning] if warning else []


def is_receiver(obj: Mapping) -> bool:
    """The receiving VM of a decentralized live migration (KubeVirt's runStrategy WaitAsReceiver): the MACs and
    addresses its spec copies from the source VM move to it from the cluster (or namespace) it comes from."""
    spec = obj.get("spec") if isinstance(obj, Mapping) else None
    return isinstance(spec, Mapping) and spec.get("runStrategy") == "WaitAsReceiver"


def addressed_entry(iface: str, mac: str, leased: list[str], network, index: int = -1) -> Addressed:
    """What cloud-init gets for one interface: address/prefix and the gateway of each leased subnet, the network's DNS;
    ``index``: the interface's place in the VM spec (the guest's eth<N>)."""
    subnets = [network.subnets[network.subnet_of(parse_address(address))] for address in leased]
    addresses = tuple(f"{a}/{s.cidr.prefixlen}" for a, s in zip(leased, subnets, strict=True))
    return Addressed(name=iface, mac=mac, addresses=addresses, index=index,
                     gateways=tuple(format_address(s.gateway) for s in subnets if s.gateway is not None), dns=network.dns)


def make_webhook_app(hook: Webhook, cfg: Config) -> web.Application:
    # Read the whole body ourselves (up to the API server's own 3 MiB cap) so that an
    # oversized review is still answered with an AdmissionReview, not a bare 413.
    app = web.Application(client_max_size=max(cfg.max_body_bytes, 3 * 1024 * 1024) + 1024)
    app.add_routes([web.post("/mutate-virtualmachines", hook.mutate), web.post("/mutate-pods", hook.mutate)])
    return app
