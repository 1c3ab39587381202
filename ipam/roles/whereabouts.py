"""Taking over from Whereabouts: every address its IPPools record for a live pod becomes that pod's
lease (a virt-launcher pod's, its VM's), so nothing Whereabouts handed out is handed out again.

Run when the watcher starts leading, after the NADs defined their networks.  It is safe to run
again: an owner that already holds an address in the network, an address held by anyone, and an
allocation of a pod that no longer exists (the leaks of Whereabouts #546) are left alone.
``whereabouts.cni.cncf.io/v1alpha1`` IPPools: ``spec.range`` and ``spec.allocations``, a map of the
address's offset in the range to ``{"id": container, "podref": "namespace/name", "ifname"}``.
"""

from __future__ import annotations

import ipaddress

import msgspec
import structlog

from ..clock import now_ms
from ..domain.catalog import Catalog
from ..domain.cluster import multus
from ..domain.commands import LeaseIp
from ..domain.events import CommandRejected
from ..domain.kinds import IP, POD_WORKLOAD, VM_WORKLOAD, Owner
from ..domain.networks import Network

log = structlog.get_logger("ipam.watcher")


def _network_of(catalog: Catalog, cidr) -> Network | None:
    return next((n for n in catalog.networks.values() if any(s.cidr == cidr for s in n.subnets)), None)


def _holder(pod: dict, ifname: str | None, network, vmis: dict) -> Owner | None:
    """Who holds an address Whereabouts gave this pod on that network: the pod's interface, or the VM's."""
    meta = pod["metadata"]
    selections = multus.pod_selections(pod)
    if ifname is None:
        chosen = [s for s in selections if s.attachment in network.attachments]
        ifname = chosen[0].interface if len(chosen) == 1 else None
    if ifname is None:
        return None
    if multus.is_launcher(pod):
        vmi = vmis.get((meta["namespace"], multus.launcher_vmi(pod)))
        held = multus.launcher_holder(vmi, selections, ifname)
        if held is not None:
            vm, vm_uid, interface = held
            return Owner(namespace=meta["namespace"], vm=vm, vm_uid=vm_uid, interface=interface, workload=VM_WORKLOAD)
    return Owner(namespace=meta["namespace"], vm=meta["name"], vm_uid=meta["uid"], interface=ifname, workload=POD_WORKLOAD)


def adoptions(ippools: list[dict], pods: list[dict], vmis: list[dict], catalog: Catalog) -> tuple[list[tuple], dict]:
    """(network, owner, address) for each allocation to adopt, and counts of what was skipped and why."""
    by_ref = {(p["metadata"]["namespace"], p["metadata"]["name"]): p for p in pods}
    by_vmi = {(v["metadata"]["namespace"], v["metadata"]["name"]): v for v in vmis}
    found, skipped = [], {"pod_gone": 0, "no_network": 0, "no_interface": 0}
    for pool in ippools:
        try:
            cidr = ipaddress.ip_network((pool.get("spec") or {}).get("range", ""), strict=False)
        except ValueError:
            continue
        network = _network_of(catalog, cidr)
        for offset, alloc in sorted(((pool.get("spec") or {}).get("allocations") or {}).items()):
            if network is None:
                skipped["no_network"] += 1
                continue
            namespace, _, name = str(alloc.get("podref", "")).partition("/")
            pod = by_ref.get((namespace, name))
            if pod is None:
                skipped["pod_gone"] += 1
                continue
            try:
                owner = _holder(pod, alloc.get("ifname") or None, network, by_vmi)
            except multus.SelectionError:
                owner = None
            if owner is None:
                skipped["no_interface"] += 1
                continue
            found.append((network.name, owner, str(cidr.network_address + int(offset))))
    return found, skipped


async def adopt(read, bus, ippools: list[dict], pods: list[dict], vmis: list[dict], cluster: str) -> None:
    catalog = await read.catalog()
    found, skipped = adoptions(ippools, pods, vmis, catalog)
    adopted, holding = 0, {}  # network -> the interfaces holding addresses there (one query per network)
    for network, owner, address in found:
        owner = msgspec.structs.replace(owner, cluster=cluster)
        if network not in holding:
            holding[network] = {(r["namespace"], r["vm"], r["vm_uid"], r["interface"], r["workload"], r["cluster"])
                                for r in await read.leases(IP, space=network, limit=10_000_000)}
        if (owner.namespace, owner.vm, owner.vm_uid, owner.interface, owner.workload, owner.cluster) in holding[network]:
            continue
        events = await bus.submit(LeaseIp(command_id=f"whereabouts:{network}:{address}:{owner.vm_uid}",
                                          at=now_ms(), network=network, owner=owner, addresses=(address,)))
        rejected = [e for e in events if isinstance(e, CommandRejected)]
        if rejected:
            log.warning("Whereabouts allocation not adopted", network=network, address=address, owner=owner.describe(),
                        reason=rejected[0].reason)
        else:
            adopted += 1
    log.info("Whereabouts IPPools adopted", pools=len(ippools), adopted=adopted, **skipped)

