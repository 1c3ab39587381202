"""IPAMClaims (``k8s.cni.cncf.io/v1alpha1``, made by kubevirt/ipam-extensions for VMs whose network
sets ``allowPersistentIPs``): the claim is the holder of its addresses.

A claim whose ``spec.network`` is the CNI configuration name of a NAD that delegates to ipam-cni is
ipam's: the watcher leases its addresses as soon as it appears (those in ``spec.ipRequests`` if
any), writes them to ``status.ips`` with an ``IPsAllocated`` condition (reasons as OVN-Kubernetes
writes them: SuccessfulAllocation, SubnetExhausted, IPAddressConflict), and releases them when the
claim is deleted.  The CNI ADD of the pod naming the claim (``ipam-claim-reference``) then gets the
same addresses, on whichever node and in whichever pod of a live migration.
"""

from __future__ import annotations

import datetime as dt

import structlog

from ..adapters import kubernetes as kube
from ..adapters.bus import CommandBus
from ..adapters.postgres.read_model import ReadModel
from ..clock import now_ms
from ..domain.cluster import multus
from ..domain.commands import LeaseIp, ReleaseIps
from ..domain.events import AnyEvent, CommandRejected, IpLeaseConfirmed, IpLeased, IpLeaseReturned
from ..domain.kinds import CLAIM_WORKLOAD, IP, Owner

log = structlog.get_logger("ipam.watcher")
CONDITION = "IPsAllocated"
REASONS = {"exhausted": "SubnetExhausted", "held": "IPAddressConflict"}


def claim_status(claim: dict, events: list[AnyEvent], pod: str | None) -> dict:
    """The status ipam writes for the outcome of the claim's lease command."""
    leased = [e for e in events if isinstance(e, (IpLeased, IpLeaseReturned, IpLeaseConfirmed))]
    rejected = next((e for e in events if isinstance(e, CommandRejected)), None)
    condition: dict[str, object]  # a Kubernetes condition, as the API server takes it
    if rejected is None:
        condition = {"type": CONDITION, "status": "True", "reason": "SuccessfulAllocation",
                     "message": "addresses leased by ipam"}
    else:
        condition = {"type": CONDITION, "status": "False", "reason": REASONS.get(rejected.code, "AllocationFailed"),
                     "message": rejected.reason[:1000]}
    previous: dict = next((c for c in (claim.get("status") or {}).get("conditions") or [] if c.get("type") == CONDITION), {})
    same = all(previous.get(k) == condition[k] for k in ("status", "reason", "message"))
    condition["lastTransitionTime"] = previous.get("lastTransitionTime") if same and previous.get(
        "lastTransitionTime") else dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    condition["observedGeneration"] = (claim.get("metadata") or {}).get("generation", 1)
    ips = [f"{e.address}/{e.prefix_length}" for e in leased]
    return {"ips": ips, "ownerPod": pod or (claim.get("status") or {}).get("ownerPod") or "", "conditions": [condition]}


class Claims:
    def __init__(self, read: ReadModel, bus: CommandBus, network_of_config, cluster: str) -> None:
        self.cluster = cluster
        self.read, self.bus = read, bus
        self.network_of_config = network_of_config  # (namespace, CNI configuration name) -> ipam network or None
        self.api: kube.ApiClient | None = None  # the watcher's Kubernetes client, set when it leads
        self.owner_pods: dict[tuple[str, str], str] = {}  # (namespace, claim) -> the pod naming it

    async def listed(self, items: list[dict]) -> None:
        live = {(c.get("metadata") or {}).get("uid") for c in items}
        for h in await self.read.holdings(IP, CLAIM_WORKLOAD, self.cluster):
            if h.vm_uid not in live:
                await self._release(h.space, h.namespace, h.vm, h.vm_uid)
        for claim in items:
            await self.event("ADDED", claim)

    async def event(self, kind: str, claim: dict) -> None:
        meta = claim.get("metadata") or {}
        if not (meta.get("uid") and meta.get("namespace") and meta.get("name")):
            return
        namespace, name, uid, interface = multus.claim_holder(claim)
        if kind == "DELETED":
            for space in await self.read.spaces_held(IP, namespace, name, vm_uid=uid, workload=CLAIM_WORKLOAD,
                                                     cluster=self.cluster):
                await self._release(space, namespace, name, uid)
            return
        network = self.network_of_config(namespace, (claim.get("spec") or {}).get("network") or "")
        if network is None:
            return  # a claim of another IPAM (OVN-Kubernetes' own networks): not ours
        owner = Owner(namespace=namespace, vm=name, vm_uid=uid, interface=interface, workload=CLAIM_WORKLOAD,
                      cluster=self.cluster)
        events = await self.bus.submit(LeaseIp(
            command_id=f"claim:{uid}:{meta.get('resourceVersion')}:{network}", at=now_ms(), network=network, owner=owner,
            addresses=multus.claim_requests(claim)))
        status = claim_status(claim, events, self.owner_pods.get((namespace, name)))
        if {k: (claim.get("status") or {}).get(k) for k in status} != status and self.api is not None:
            await kube.patch_claim_status(self.api, namespace, name, status)

    def pod_seen(self, pod: dict) -> None:
        """Remember which pod names which claim (``status.ownerPod``)."""
        meta = pod.get("metadata") or {}
        try:
            for s in multus.pod_selections(pod):
                if s.claim:
                    self.owner_pods[(meta.get("namespace") or "", s.claim)] = meta.get("name") or ""
        except multus.SelectionError:
            pass

    async def _release(self, network: str, namespace: str, name: str, uid: str) -> None:
        await self.bus.send(ReleaseIps(command_id=f"claim-gone:{uid}:{network}", at=now_ms(), network=network,
                                       namespace=namespace, vm=name, vm_uid=uid, workload=CLAIM_WORKLOAD,
                                       cluster=self.cluster))
