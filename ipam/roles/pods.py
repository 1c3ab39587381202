"""Pods: what they hold is confirmed while they live and released when they are gone.

Pods hold MACs (the pod webhook sets them in the network-selection annotation, provisionally,
before the pod has a uid) and IP addresses (the CNI plugin leases them at ADD).  A pod seen with
its annotation confirms its MACs (one observe command per pool, as for VMs); a deleted pod, or one
missing from a fresh list, releases everything it held, which is how leases of pods deleted while
ipam (or the node) was down are reclaimed.  virt-launcher pods hold nothing of their own: their
addresses are the VM's.

A lease the CNI plugin made without K8S_POD_UID has the container as its uid
(``container:<id>``): it lives as long as a pod of that name does.
"""

from __future__ import annotations

import structlog

from ..adapters.bus import CommandBus
from ..adapters.postgres.read_model import ReadModel
from ..clock import now_ms
from ..domain.cluster import multus
from ..domain.commands import LEASE_COMMANDS, ObserveVm
from ..domain.kinds import KINDS, MAC, POD_WORKLOAD

log = structlog.get_logger("ipam.watcher")
CONTAINER_UID = "container:"


def pod_macs(pod: dict) -> dict[str, str]:
    """interface -> MAC of the pod's network-selection elements that carry one."""
    return {s.interface: s.mac for s in multus.pod_selections(pod) if s.mac}


class PodLeases:
    def __init__(self, read: ReadModel, bus: CommandBus, cluster: str) -> None:
        self.read, self.bus, self.cluster = read, bus, cluster
        self._seen: dict[str, frozenset] = {}  # pod uid -> the MACs last observed

    async def listed(self, items: list[dict]) -> None:
        """Observe every pod that carries MACs, then release what pods no longer listed held.  Who holds
        what is read once for the whole list (one query per kind), not once per pod."""
        holdings = {kind: await self.read.holdings(kind, POD_WORKLOAD, self.cluster) for kind in KINDS}
        mac_pools: dict[str, set[str]] = {}
        for h in holdings[MAC]:
            mac_pools.setdefault(h.vm_uid, set()).add(h.space)
        alive = {}
        self._seen.clear()
        for pod in items:
            meta = pod.get("metadata") or {}
            alive[(meta.get("namespace"), meta.get("name"))] = meta.get("uid")
            await self.event("ADDED", pod, mac_pools.get(meta.get("uid", ""), set()))
        released = 0
        for kind, rows in holdings.items():
            for h in rows:
                uid = alive.get((h.namespace, h.vm))
                if uid is None or (uid != h.vm_uid and not h.vm_uid.startswith(CONTAINER_UID)):
                    await self._release(kind, h.space, h.namespace, h.vm, h.vm_uid, "gone")
                    released += 1
        log.info("pods listed", pods=len(items), released_missing=released)

    async def event(self, kind: str, pod: dict, held: set[str] | None = None) -> None:
        """``held``: the pools this pod holds MACs in, when the caller already knows."""
        meta = pod.get("metadata") or {}
        uid, namespace, name = meta.get("uid"), meta.get("namespace"), meta.get("name")
        if not (uid and namespace and name) or multus.is_launcher(pod):
            return
        if kind == "DELETED":
            self._seen.pop(uid, None)
            for k in KINDS:
                for space in await self.read.spaces_held(k, namespace, name, vm_uid=uid, workload=POD_WORKLOAD,
                                                         cluster=self.cluster):
                    await self._release(k, space, namespace, name, uid, "deleted")
            return
        try:
            macs = pod_macs(pod)
        except multus.SelectionError as e:
            log.warning("pod network annotation unreadable; its MACs are left as they are", namespace=namespace, pod=name,
                        field=e.field, reason=e.reason)
            return
        if self._seen.get(uid) == frozenset(macs.items()) or (not macs and held is not None and not held):
            return  # nothing new, or a pod that neither carries nor holds a MAC (most pods)
        await self._observe_macs(namespace, name, uid, macs, meta.get("resourceVersion"), held)
        self._seen[uid] = frozenset(macs.items())

    async def _observe_macs(self, namespace: str, name: str, uid: str, macs: dict[str, str], version,
                            held: set[str] | None) -> None:
        """One observe command per pool the pod's MACs are in (or it holds MACs in)."""
        by_pool, unplaced = (await self.read.catalog()).route_macs(namespace, macs)
        for iface, text, why in unplaced:
            log.warning("MAC in a pod's network annotation that ipam does not manage", namespace=namespace, pod=name,
                        interface=iface, mac=text, reason=why)
        if held is None:
            held = await self.read.spaces_held(MAC, namespace, name, vm_uid=uid, workload=POD_WORKLOAD, cluster=self.cluster)
        for pool_name in sorted(set(by_pool) | held):
            await self.bus.send(ObserveVm(
                command_id=f"watch-pod-mac:{uid}:{version}:{pool_name}", at=now_ms(), pool=pool_name, namespace=namespace,
                vm=name, vm_uid=uid, interfaces=tuple(by_pool.get(pool_name, ())), workload=POD_WORKLOAD, cluster=self.cluster))

    async def _release(self, kind, space: str, namespace: str, name: str, uid: str, why: str) -> None:
        await self.bus.send(LEASE_COMMANDS[kind].release_owner(
            command_id=f"pod-{why}-{kind.name}:{uid}:{space}", at=now_ms(), **{kind.space: space}, namespace=namespace,
            vm=name, vm_uid=uid, workload=POD_WORKLOAD, cluster=self.cluster))
