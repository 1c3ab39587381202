"""The watcher: turns what the cluster holds into commands.

It follows VirtualMachines, VirtualMachineInstances and NetworkAttachmentDefinitions with list
+ watch (``adapters.kubernetes``).  Each VM it sees becomes, for each kind of address, one
observe command per space its interfaces are in (``routes``) or it holds leases in: the decider
confirms provisional leases, adopts addresses nobody holds (first start on a cluster KubeMacPool
managed), records conflicts and releases what the VM no longer has.  A deleted VM, or one
missing from a fresh list, releases everything it held.  Provisional leases whose VM never
appeared are expired here too, but only while the VM list is in sync.  NADs become networks
(``nads``); what running instances report is kept for collisions and drift (``instances``).

Command ids derive from the VM's uid and resourceVersion, so repeats are harmless; still only
one watcher works at a time (a Postgres advisory lock), because a replica lagging behind
would replay an older spec after a newer one and briefly undo it.

Where a VM's interfaces are, for each kind of address, is read by ROUTES: MAC, the MACs in the
VM's spec, each routed to the pool that holds it (as the API routes a static request); IP, the
interfaces on NetworkAttachmentDefinitions an ipam network serves, with the addresses the VM's
ipam.kubevirt.io/ip-addresses annotation gives them.  FINGERPRINTS say what of a VM matters to
its leases of each kind, to skip status-only updates."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import structlog

from ..adapters import kubernetes as kube
from ..adapters.bus import CommandBus
from ..adapters.postgres.ownership import leadership
from ..adapters.postgres.read_model import ReadModel
from ..clock import now_ms
from ..config import Config
from ..domain.catalog import Catalog
from ..domain.cluster.kubevirt import SpecError, annotated_addresses, multus_interfaces, spec_macs, vm_interfaces
from ..domain.commands import LEASE_COMMANDS
from ..domain.kinds import IP, KINDS, MAC, Kind, ObservedAddresses
from . import whereabouts
from .claims import Claims
from .instances import Instances
from .nads import NadNetworks
from .pods import PodLeases

log = structlog.get_logger("ipam.watcher")
PROGRESS_SECONDS = 5.0  # how often a long full list logs its progress
LEADER_LOCK = 0x1BA3_0002  # pg_advisory_lock key of the watcher (0x1BA3_0001 is the migrations lock)
NAD_SYNC_WAIT = 10.0  # seconds the first VM list waits for the NetworkAttachmentDefinitions


class Watcher:
    def __init__(self, cfg: Config, read: ReadModel, bus: CommandBus) -> None:
        self.cfg, self.read, self.bus = cfg, read, bus
        self.is_leader = False
        self.unmanaged = 0  # addresses seen in VMs that no space holds
        self._last: dict[str, tuple] = {}  # vm uid -> fingerprints of what was last observed of it
        self._routing: tuple | None = None
        self._seen = None  # the catalog last compared
        self.vms: kube.Informer | None = None
        self.nads = NadNetworks(read, bus, changed=lambda: self._catalog())
        self.instances = Instances(read, bus, cfg.cluster)
        self.pods = PodLeases(read, bus, cfg.cluster)
        self.claims = Claims(read, bus, self.nads.network_of_config, cfg.cluster)
        self.pod_informer: kube.Informer | None = None

    @property
    def ready(self) -> bool:
        """VMs and pods listed: a provisional lease whose holder is not seen by now may be expired."""
        return all(i is not None and i.synced.is_set() for i in (self.vms, self.pod_informer))

    async def run(self) -> None:
        async with leadership(self.cfg.database_dsn, LEADER_LOCK, self.cfg.cluster):
            self.is_leader = True
            log.info("watcher is the leader")
            try:
                await self._lead()
            finally:
                self.is_leader = False

    async def _lead(self) -> None:
        api = await kube.api_client(self.cfg.kube_api)
        resync = self.cfg.resync_seconds
        async with api:
            nads = kube.Informer(kube.Resource.network_attachment_definitions(api), self.nads.event, self.nads.listed,
                                 resync_seconds=resync)
            nad_task = asyncio.ensure_future(nads.run())
            try:  # networks first, so the first VM list knows which interfaces are addressed
                await asyncio.wait_for(nads.synced.wait(), NAD_SYNC_WAIT)
            except TimeoutError:
                log.warning("NetworkAttachmentDefinitions not listed yet (is Multus installed?); going on without them")
            await self._catalog()
            await self._adopt_whereabouts(api)
            self.vms = kube.Informer(kube.Resource.virtual_machines(api), self._on_vm, self._on_vm_list, resync_seconds=resync)
            vmis = kube.Informer(kube.Resource.virtual_machine_instances(api), self.instances.event, self.instances.listed,
                                 resync_seconds=resync)
            self.pod_informer = kube.Informer(kube.Resource.pods(api), self._on_pod, self.pods.listed, resync_seconds=resync)
            informers = [self.vms, vmis, self.pod_informer]
            self.claims.api = api
            if await kube.list_all(api, kube.CLAIMS, limit=1) is not None:
                informers.append(kube.Informer(kube.Resource.custom(api, kube.CLAIMS), self.claims.event,
                                               self.claims.listed, resync_seconds=resync))
            else:
                log.info("no IPAMClaim resource in this cluster (ipam-extensions not installed); claims not followed")
            try:
                await asyncio.gather(*(i.run() for i in informers), self._expire_loop())
            finally:
                nad_task.cancel()

    async def _on_pod(self, kind: str, pod: dict) -> None:
        self.claims.pod_seen(pod)
        await self.pods.event(kind, pod)

    async def _adopt_whereabouts(self, api) -> None:
        """Whereabouts' allocations become leases before anything is handed out (``whereabouts``)."""
        ippools = await kube.list_all(api, kube.WHEREABOUTS_POOLS)
        if not ippools:
            return
        pods = await kube.list_objects(kube.Resource.pods(api))
        vmis = await kube.list_objects(kube.Resource.virtual_machine_instances(api))
        await whereabouts.adopt(self.read, self.bus, ippools, pods, vmis, self.cfg.cluster)

    async def recover(self) -> None:
        """After a failure: forget what was sent; the next list observes every VM again."""
        self._last.clear()
        self.instances.forget()

    async def _catalog(self):
        """Spaces as Postgres has them; when routing changed, VMs are listed again to be placed anew."""
        catalog = await self.read.catalog()
        if catalog is self._seen:
            return catalog
        self._seen, routing = catalog, catalog.routing()
        if self._routing is not None and routing != self._routing and self.ready:
            pools_changed = routing[0] != self._routing[0]
            if routing[1] != self._routing[1] or (pools_changed and self.unmanaged):
                log.info("spaces changed: listing VMs again to observe their addresses")
                self.vms.request_relist()
        self._routing = routing
        return catalog

    # --- virtual machines ---------------------------------------------------------------------

    async def _on_vm_list(self, items: list[dict]) -> None:
        """A full picture: observe every VM, and release VMs that hold leases but no longer exist.
        One query per kind for who holds leases where serves the whole list (not one per VM)."""
        await self._catalog()
        holdings = {kind: await self.read.holdings(kind, cluster=self.cfg.cluster) for kind in KINDS}
        held: dict[Kind, dict[str, set[str]]] = {kind: {} for kind in KINDS}
        for kind, rows in holdings.items():
            for h in rows:
                held[kind].setdefault(h.vm_uid, set()).add(h.space)
        listed: set[str] = set()
        self._last.clear()
        reported = time.monotonic()
        for done, vm in enumerate(items, 1):
            uid = vm["metadata"]["uid"]
            listed.add(uid)
            await self._observe(vm, False, {kind: held[kind].get(uid, set()) for kind in KINDS})
            if time.monotonic() - reported >= PROGRESS_SECONDS:  # adopting a large cluster takes a while: say how far
                reported = time.monotonic()
                log.info("observing listed VMs", observed=done, of=len(items), percent=round(100 * done / len(items), 1))
        gone = {kind: [h for h in rows if h.vm_uid not in listed] for kind, rows in holdings.items()}
        for kind, rows in gone.items():
            for h in rows:
                await self.bus.send(LEASE_COMMANDS[kind].observe(
                    command_id=f"watch-{kind.name}:{h.vm_uid}:gone:{h.space}", at=now_ms(), **kind.in_space(h.space),
                    namespace=h.namespace, vm=h.vm, vm_uid=h.vm_uid, deleted=True, cluster=self.cfg.cluster))
        log.info("virtual machines listed", vms=len(items), **{f"released_missing_{k.name}": len(g) for k, g in gone.items()})

    async def _on_vm(self, kind: str, vm: dict) -> None:
        await self._observe(vm, deleted=kind == "DELETED")

    async def _observe(self, vm: dict, deleted: bool, held: dict[Kind, set[str]] | None = None) -> None:
        """``held``: spaces of each kind where this VM holds leases, when the caller already knows."""
        meta = vm.get("metadata") or {}
        uid = meta.get("uid")
        if not (uid and meta.get("namespace") and meta.get("name")):
            return
        seen = tuple(FINGERPRINTS[kind](vm) for kind in KINDS)
        if not deleted and self._last.get(uid) == seen:
            return  # status or metadata changed, not the interfaces or their addresses
        complete = True
        for kind in KINDS:
            complete &= await self._observe_kind(kind, vm, deleted, None if held is None else held[kind])
        if deleted or not complete:
            self._last.pop(uid, None)  # not fully observed: the next event or list tries again
        else:
            self._last[uid] = seen

    async def _observe_kind(self, kind: Kind, vm: dict, deleted: bool, held: set[str] | None) -> bool:
        """Send one observe command per space of this kind the VM is in or holds leases in; False when
        something could not be placed."""
        meta = vm["metadata"]
        uid, namespace, name = meta["uid"], meta["namespace"], meta["name"]
        routed = None
        if not deleted:
            routed = ROUTES[kind](vm, namespace, await self._catalog())
            if routed.unreadable is not None:
                log.warning("VM spec unreadable; its leases are left as they are", kind=kind.name, namespace=namespace,
                            vm=name, field=routed.unreadable.field, reason=routed.unreadable.reason)
                return True
            for iface, text, reason in routed.unplaced:
                self.unmanaged += 1
                log.warning("address in a VM spec that ipam does not manage", kind=kind.name, namespace=namespace, vm=name,
                            interface=iface, address=text, reason=reason)
        if held is None:
            held = await self.read.spaces_held(kind, namespace, name, vm_uid=uid, cluster=self.cfg.cluster)
        by_space = {} if routed is None else routed.by_space
        if routed is not None and routed.stale and routed.keep_unrouted:
            held = held & set(by_space)  # an interface on a NAD not known yet may be on one of them: release nothing
        tag = "deleted" if deleted else meta.get("resourceVersion")
        for space in sorted(set(by_space) | held):
            await self.bus.send(LEASE_COMMANDS[kind].observe(
                command_id=f"watch-{kind.name}:{uid}:{tag}:{space}", at=now_ms(), **{kind.space: space}, namespace=namespace,
                vm=name, vm_uid=uid, interfaces=tuple(by_space.get(space, ())), deleted=deleted, cluster=self.cfg.cluster))
        return routed is None or not routed.unplaced

    # --- provisional leases -------------------------------------------------------------------

    async def _expire_loop(self, interval: float = 5.0) -> None:
        """Release provisional leases past their time, once the VM list is known to be current:
        a VM created at the last moment is seen (and confirms its lease) before we look."""
        while True:
            await asyncio.sleep(interval)
            if not self.ready:
                continue
            await self._catalog()
            for kind in KINDS:
                for space, address, uid, until in await self.read.lapsed(kind):
                    await self.bus.send(LEASE_COMMANDS[kind].expire(
                        command_id=f"expire-{kind.name}:{space}:{address}:{uid}:{until}", at=now_ms(),
                        **{kind.space: space, kind.address: address}, vm_uid=uid))


@dataclass
class Routed:
    by_space: dict[str, list] = field(default_factory=dict)  # space -> the kind's observed interfaces
    unplaced: list[tuple[str, str, str]] = field(default_factory=list)  # (interface, address, why) ipam cannot place
    stale: bool = False  # something was not found that a fresher catalog might know
    unreadable: SpecError | None = None  # the VM cannot be read for this kind: its leases are left as they are
    keep_unrouted: bool = False  # while stale, spaces no interface was routed to keep their leases


def mac_routes(vm: dict, namespace: str, catalog: Catalog) -> Routed:
    try:
        vm_interfaces(vm)
    except SpecError as e:
        return Routed(unreadable=e)
    by_pool, unplaced = catalog.route_macs(namespace, spec_macs(vm))
    return Routed(by_space=dict(by_pool), unplaced=unplaced, stale=bool(unplaced))


def ip_routes(vm: dict, namespace: str, catalog: Catalog) -> Routed:
    try:
        multus = multus_interfaces(vm, namespace)
        wanted = annotated_addresses(vm)
    except SpecError as e:
        return Routed(unreadable=e)
    routed = Routed(keep_unrouted=True)
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
