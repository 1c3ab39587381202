"""The mutating admission webhook for KubeVirt VirtualMachines (AdmissionReview admission.k8s.io/v1).

Every review gets an AdmissionReview answer, never an HTTP error: a malformed, oversized or
unexpected review is denied with the reason, so the API server shows the user why.  A VM
gets one lease per interface that needs a MAC (``domain.kubevirt``); at CREATE the VM has no
uid yet, so leases are provisional ("admission:<request uid>") until the watcher sees the VM.
The answer is bounded by a deadline below the webhook's ``timeoutSeconds``: a slow pipeline
means a clear denial (the user retries), not an API server timeout.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
from collections.abc import Mapping

import structlog
from aiohttp import web

from ..adapters.kubernetes import NamespaceLabels
from ..config import Config
from ..domain.allocation import PROVISIONAL_UID_PREFIX
from ..domain.cloudinit import Addressed, NetworkDataConflict, cloud_init_patch
from ..domain.ip import format_address, parse_address
from ..domain.kubevirt import (INTERFACES_FIELD, SpecError, annotated_addresses, annotation_patch, interfaces_needing_macs,
                               mac_patch, metadata_of, multus_interfaces, namespace_allows, spec_macs,
                               vm_interfaces)
from ..domain.mac import MacFormatError, format_mac, parse_mac
from ..domain.messages import LeaseIp, LeaseMac, Owner
from ..domain.routing import RoutingError, choose_pool
from ..adapters.bus import OutcomeTimeout
from .. import telemetry

log = structlog.get_logger("ipam.webhook")

REVIEW_VERSION = "admission.k8s.io/v1"
LEASED = ("IpLeased", "IpLeaseReturned", "IpLeaseOffered", "IpLeaseConfirmed")  # events that carry an address it holds
VM_KIND = {"group": "kubevirt.io", "version": "v1", "kind": "VirtualMachine"}
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


class Webhook:
    def __init__(self, cfg: Config, api, namespaces: NamespaceLabels) -> None:
        self.cfg = cfg
        self.api = api  # the REST Api: pool cache and idempotent submit
        self.namespaces = namespaces

    async def mutate(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        raw = await request.read()
        uid = ""
        try:
            if len(raw) > self.cfg.max_body_bytes:
                m = _UID.search(raw[:4096])
                uid = m.group(1).decode() if m else ""
                raise Denied(f"AdmissionReview is {len(raw)} bytes; ipam accepts at most {self.cfg.max_body_bytes}", 413)
            try:
                review = json.loads(raw)
            except ValueError as e:
                raise Denied(f"body is not JSON: {e}") from None
            req = review.get("request") if isinstance(review, Mapping) else None
            if not isinstance(req, Mapping) or not isinstance(req.get("uid"), str):
                raise Denied("request.uid: an AdmissionReview needs a request with a uid")
            uid = req["uid"]
            if review.get("apiVersion") != REVIEW_VERSION or review.get("kind") != "AdmissionReview":
                raise Denied(f"apiVersion/kind: expected {REVIEW_VERSION} AdmissionReview, got "
                             f"{review.get('apiVersion')} {review.get('kind')}")
            result = await asyncio.wait_for(self._review(req), self.cfg.webhook_deadline_seconds)
        except Denied as e:
            log.info("review denied", uid=uid, reason=e.message)
            result = answer(uid, False, message=e.message, code=e.code)
        except asyncio.TimeoutError:
            message = (f"ipam could not assign addresses within {self.cfg.webhook_deadline_seconds:g}s "
                       "(its pipeline is slow or down); please retry")
            log.warning("review timed out", uid=uid)
            result = answer(uid, False, message=message, code=503)
        outcome = "allowed" if result["response"]["allowed"] else "denied"
        if result["response"].get("status", {}).get("code", 0) >= 500:
            outcome = "error"  # ipam could not decide: the API server refuses the change (failurePolicy Fail)
        telemetry.webhook_reviews.labels(outcome).inc()
        telemetry.webhook_seconds.observe(time.perf_counter() - started)
        log.debug("review answered", uid=uid, ms=round((time.perf_counter() - started) * 1000, 2))
        return web.json_response(result)

    async def _review(self, req: Mapping) -> dict:
        uid = req["uid"]
        if dict(req.get("kind") or {}) != VM_KIND:
            raise Denied(f"request.kind: ipam mutates kubevirt.io/v1 VirtualMachine, not {req.get('kind')}")
        operation = req.get("operation")
        if operation not in ("CREATE", "UPDATE"):
            return answer(uid, True)
        namespace = req.get("namespace")
        if not isinstance(namespace, str) or not namespace:
            raise Denied("request.namespace: a VirtualMachine is namespaced")
        if self.cfg.namespace_opt_in and not self.namespaces.known:
            raise Denied("namespace labels are not known yet (set IPAM_KUBE_API so the webhook can read them); "
                         "in opt-in mode ipam cannot tell whether this namespace opted in. Please retry", 503)
        if not namespace_allows(self.namespaces.get(namespace), self.cfg.namespace_opt_in):
            return answer(uid, True)  # opted out: admitted untouched
        vm = req.get("object")
        if not isinstance(vm, Mapping):
            raise Denied("request.object: missing")
        old = req.get("oldObject") if operation == "UPDATE" else None
        try:
            needs = interfaces_needing_macs(vm)
            multus = multus_interfaces(vm, namespace)
            wanted_ips = {**annotated_addresses(old), **annotated_addresses(vm)}
        except SpecError as e:
            raise Denied(f"{e.field}: {e.reason}") from None
        count = len(vm_interfaces(vm))  # checked by interfaces_needing_macs
        if count > self.cfg.max_interfaces:
            raise Denied(f"{INTERFACES_FIELD}: {count} interfaces; ipam allows at most {self.cfg.max_interfaces}")
        attachments = await self.api.refresh_networks(max_age=2.0) if multus else {}
        addressed = []  # (interface, network) for interfaces on networks ipam addresses
        for m in multus:
            networks = attachments.get(m.attachment, [])
            if len(networks) > 1:
                raise Denied(f"interface {m.name}: NetworkAttachmentDefinition {m.attachment} is attached to several ipam "
                             f"networks ({', '.join(sorted(n.name for n in networks))}); it must serve one", 409)
            if networks:
                addressed.append((m, networks[0]))
        if not needs and not addressed:
            return answer(uid, True)
        meta, old_meta = metadata_of(vm), metadata_of(old)
        name = meta.get("name") or old_meta.get("name") or meta.get("generateName")
        if not isinstance(name, str) or not name:
            raise Denied("metadata.name: a VirtualMachine needs a name or generateName")
        vm_uid = meta.get("uid") or old_meta.get("uid") or f"{PROVISIONAL_UID_PREFIX}{uid}"
        dry_run = bool(req.get("dryRun"))
        old_macs = spec_macs(old)
        now = int(time.time() * 1000)
        pending_until = now + self.cfg.pending_seconds * 1000
        pools = await self.api.refresh_pools(max_age=2.0)
        suffix = ":dry-run" if dry_run else ""
        commands = []
        for need in needs:
            wanted = need.requested_mac or old_macs.get(need.name)
            field = f"{INTERFACES_FIELD}[{need.index}].macAddress"
            mac = None
            if wanted is not None:
                try:
                    mac = parse_mac(wanted)
                except MacFormatError as e:
                    raise Denied(f"{field}: {e}") from None
            try:
                pool = choose_pool(pools, namespace, None, mac)
            except RoutingError as e:
                raise Denied(f"{field if e.field == 'mac' else 'pool'}: {e.reason}") from None
            owner = Owner(namespace=namespace, vm=name, vm_uid=vm_uid, interface=need.name)
            commands.append((need.name, LeaseMac(
                command_id=f"admission:{uid}:{need.name}{suffix}", at=now, pool=pool.name, owner=owner,
                mac=None if mac is None else format_mac(mac), pending_until=pending_until, dry_run=dry_run,
            )))
        for m, network in addressed:
            owner = Owner(namespace=namespace, vm=name, vm_uid=vm_uid, interface=m.name)
            commands.append((m.name, LeaseIp(
                command_id=f"admission:{uid}:ip:{m.name}{suffix}", at=now, network=network.name, owner=owner,
                addresses=tuple(wanted_ips.get(m.name, ())), pending_until=pending_until, dry_run=dry_run,
            )))
        known = await self.api.bus.outcomes([cmd.command_id for _, cmd in commands])  # the API server retried
        outcomes = await asyncio.gather(*(self._decide(cmd, known.get(cmd.command_id)) for _, cmd in commands))
        macs: dict[str, str] = {}
        ips: dict[str, list[str]] = {}
        for (iface, cmd), events in zip(commands, outcomes):
            for ev in events:
                if ev["type"] == "CommandRejected":
                    what = "MAC" if isinstance(cmd, LeaseMac) else "IP addresses"
                    raise Denied(f"interface {iface} ({what}): {ev['reason']}", 409 if ev["code"] in ("held", "exhausted") else 400)
            if isinstance(cmd, LeaseMac):
                macs[iface] = events[-1]["mac"]
            else:
                ips[iface] = [ev["address"] for ev in events if ev["type"] in LEASED]
        # Interfaces without a MAC in the new object get theirs (old MACs come back on a re-apply).
        patch = mac_patch({n.index: macs[n.name] for n in needs}, needs)
        warnings = []
        if addressed:
            entries = []
            for m, network in addressed:
                if m.name not in macs:
                    raise Denied(f"interface {m.name}: has no MAC address to match its cloud-init networkData by")
                entries.append(addressed_entry(m.name, macs[m.name], ips[m.name], network))
            dhcp = {n.name: macs[n.name] for n in needs if n.network == "pod"}
            try:
                ops, warning = cloud_init_patch(vm, entries, dhcp)
            except SpecError as e:
                raise Denied(f"{e.field}: {e.reason}") from None
            except NetworkDataConflict as e:
                raise Denied(str(e)) from None
            patch += annotation_patch(vm, {m.name: ips[m.name] for m, _ in addressed}) + ops
            warnings += [warning] if warning else []
        log.info("review admitted", uid=uid, operation=operation, namespace=namespace, vm=name, dry_run=dry_run,
                 macs=macs, ips=ips)
        return answer(uid, True, patch=patch, warnings=warnings)

    async def _decide(self, cmd: LeaseMac, known: list[dict] | None) -> list[dict]:
        """The API server retries a review with the same uid: the same command id gets the same answer
        (from the stored outcome: the allocator decides a repeated id to nothing)."""
        if known is not None:
            return known
        try:
            return await self.api.bus.submit(cmd)
        except OutcomeTimeout:
            raise asyncio.TimeoutError from None


def addressed_entry(iface: str, mac: str, leased: list[str], network) -> Addressed:
    """What cloud-init gets for one interface: address/prefix and the gateway of each leased subnet, the network's DNS."""
    subnets = [network.subnets[network.subnet_of(parse_address(address))] for address in leased]
    return Addressed(name=iface, mac=mac, addresses=tuple(f"{a}/{s.cidr.prefixlen}" for a, s in zip(leased, subnets)),
                     gateways=tuple(format_address(s.gateway) for s in subnets if s.gateway is not None), dns=network.dns)


def make_webhook_app(hook: Webhook, cfg: Config) -> web.Application:
    # Read the whole body ourselves (up to the API server's own 3 MiB cap) so that an
    # oversized review is still answered with an AdmissionReview, not a bare 413.
    app = web.Application(client_max_size=max(cfg.max_body_bytes, 3 * 1024 * 1024) + 1024)
    app.add_routes([web.post("/mutate-virtualmachines", hook.mutate)])
    return app

