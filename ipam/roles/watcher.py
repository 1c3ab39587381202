"""The watcher: turns what the cluster holds into commands.

IP addresses (NetworkAttachmentDefinitions, the VMs' address annotation, what guests report) are
handled by ``ip_watcher.IpWatch`` on the same lists and events.

It follows VirtualMachines and VirtualMachineInstances with list + watch (``adapters.kubernetes``).  Each
VM it sees becomes one ``ObserveVm`` per pool its MACs (or its current leases) are in: the
decider confirms provisional leases, adopts MACs nobody holds (first start on a cluster that
KubeMacPool managed), records conflicts and releases what the VM no longer has.  A deleted
VM, or one missing from a fresh list, releases everything it held.  Provisional leases whose
VM never appeared are expired here too, but only while the VM list is in sync.

Command ids derive from the VM's uid and resourceVersion, so repeats are harmless; still only
one watcher works at a time (a Postgres advisory lock), because a replica lagging behind
would replay an older spec after a newer one and briefly undo it.
"""

from __future__ import annotations

import asyncio
import time

import asyncpg
import structlog

from ..adapters import kubernetes as kube
from ..adapters.postgres.partitions import load_pools
from ..adapters.bus import CommandBus
from ..config import Config
from ..domain.allocation import PROVISIONAL_UID_PREFIX
from ..domain.kubevirt import spec_macs
from ..domain.mac import MacFormatError, format_mac, parse_mac
from ..domain.messages import ExpirePending, ObservedInterface, ObserveVm
from ..domain.routing import RoutingError, choose_pool
from .ip_watcher import IpWatch, insert_guest_rows

log = structlog.get_logger("ipam.watcher")
PROGRESS_SECONDS = 5.0  # how often a long full list logs its progress
LEADER_LOCK = 0x1BA3_0002  # pg_advisory_lock key of the watcher (0x1BA3_0001 is the migrations lock)
NAD_SYNC_WAIT = 10.0  # seconds the first VM list waits for the NetworkAttachmentDefinitions


class Watcher:
    def __init__(self, cfg: Config, db: asyncpg.Pool, bus: CommandBus) -> None:
        self.cfg = cfg
        self.db = db
        self.bus = bus
        self.is_leader = False
        self.unmanaged = 0
        self._last: dict[str, tuple] = {}  # vm uid -> the (interface, mac) set and address picture last sent
        self._pools: dict = {}
        self._pools_at = 0.0
        self._vm_informer: kube.Informer | None = None
        self.ip = IpWatch(db, bus, networks_changed=self._relist_vms)

    def _relist_vms(self) -> None:
        if self._vm_informer is not None and self._vm_informer.synced.is_set():
            log.info("networks changed: listing VMs again to observe their addresses")
            self._vm_informer.request_relist()

    @property
    def ready(self) -> bool:
        return self._vm_informer is not None and self._vm_informer.synced.is_set()

    async def run(self) -> None:
        lock = await asyncpg.connect(self.cfg.database_url)
        try:
            while not await lock.fetchval("SELECT pg_try_advisory_lock($1)", LEADER_LOCK):
                await asyncio.sleep(2)
            self.is_leader = True
            log.info("watcher is the leader")
            api = await kube.api_client(self.cfg.kube_api)
            async with api:
                nads = kube.Informer(kube.Resource.network_attachment_definitions(api), self.ip.nad_changed,
                                     self.ip.nads_listed, resync_seconds=self.cfg.resync_seconds)
                nad_task = asyncio.ensure_future(nads.run())
                try:  # networks first, so the first VM list knows which interfaces are addressed
                    await asyncio.wait_for(nads.synced.wait(), NAD_SYNC_WAIT)
                except asyncio.TimeoutError:
                    log.warning("NetworkAttachmentDefinitions not listed yet (is Multus installed?); going on without them")
                await self.ip.refresh(force=True)
                self._vm_informer = kube.Informer(kube.Resource.virtual_machines(api), self._on_vm, self._on_vm_list,
                                                  resync_seconds=self.cfg.resync_seconds)
                vmi_informer = kube.Informer(kube.Resource.virtual_machine_instances(api), self._on_vmi, self._on_vmi_list,
                                             resync_seconds=self.cfg.resync_seconds)
                try:
                    await asyncio.gather(self._vm_informer.run(), vmi_informer.run(), self._expire_loop())
                finally:
                    nad_task.cancel()
        finally:
            self.is_leader = False
            await lock.close()

    async def recover(self) -> None:
        """After a failure: forget what was sent; the next list observes every VM again."""
        self._last.clear()
        self.ip.forget_guest()

    # --- running instances: collisions ---------------------------------------------
    # What VMIs report is an observation of the cluster, not address state: it is written
    # straight to ipam_store.vmi_interfaces (replaced on every list) for ipam.mac_collisions.

    async def _on_vmi_list(self, items: list[dict]) -> None:
        rows = [r for vmi in items for r in vmi_rows(vmi)]
        await self.ip.refresh()
        guests = [(vmi, self.ip.guest_rows(vmi)) for vmi in items]
        async with self.db.acquire() as conn, conn.transaction():
            await conn.execute("DELETE FROM ipam_store.vmi_interfaces")
            await _insert_vmi_rows(conn, rows)
            await conn.execute("DELETE FROM ipam_store.vmi_addresses")
            await insert_guest_rows(conn, [r for _, g in guests for r in g])
        self.ip.forget_guest()
        for vmi, g in guests:
            await self.ip.report_guest(vmi, g)

    async def _on_vmi(self, kind: str, vmi: dict) -> None:
        uid = (vmi.get("metadata") or {}).get("uid")
        if not uid:
            return
        guest = [] if kind == "DELETED" else self.ip.guest_rows(vmi)
        async with self.db.acquire() as conn, conn.transaction():
            await conn.execute("DELETE FROM ipam_store.vmi_interfaces WHERE vmi_uid = $1", uid)
            await conn.execute("DELETE FROM ipam_store.vmi_addresses WHERE vmi_uid = $1", uid)
            if kind != "DELETED":
                await _insert_vmi_rows(conn, vmi_rows(vmi))
                await insert_guest_rows(conn, guest)
        if kind == "DELETED":
            self.ip.forget_guest(uid)
        else:
            await self.ip.report_guest(vmi, guest)

    # --- virtual machines ---------------------------------------------------------

    async def _on_vm_list(self, items: list[dict]) -> None:
        """A full picture: observe every VM, and release VMs that hold leases but no longer exist.

        One query for who holds leases where serves the whole list (not one per VM)."""
        await self._refresh_pools()
        async with self.db.acquire() as conn:
            rows = await conn.fetch(
                "SELECT DISTINCT pool, namespace, vm, vm_uid FROM ipam_store.mac_leases "
                "WHERE left(vm_uid, $1) <> $2", len(PROVISIONAL_UID_PREFIX), PROVISIONAL_UID_PREFIX)
        holding: dict[str, set[str]] = {}
        for r in rows:
            holding.setdefault(r["vm_uid"], set()).add(r["pool"])
        await self.ip.refresh()
        ip_holding = await self.ip.holding()
        listed = set()
        self._last.clear()
        reported = time.monotonic()
        for done, vm in enumerate(items, 1):
            uid = vm["metadata"]["uid"]
            listed.add(uid)
            await self._observe(vm, deleted=False, holding=holding.get(uid, set()), ip_holding=ip_holding.get(uid, set()))
            if time.monotonic() - reported >= PROGRESS_SECONDS:  # adopting a large cluster takes a while: say how far
                reported = time.monotonic()
                log.info("observing listed VMs", observed=done, of=len(items), percent=round(100 * done / len(items), 1))
        gone = [r for r in rows if r["vm_uid"] not in listed]
        for r in gone:
            await self.bus.send(ObserveVm(command_id=f"watch:{r['vm_uid']}:gone:{r['pool']}", at=_now(), pool=r["pool"],
                                          namespace=r["namespace"], vm=r["vm"], vm_uid=r["vm_uid"], deleted=True))
        released_ip = await self.ip.release_missing(listed)
        log.info("virtual machines listed", vms=len(items), released_missing=len(gone), released_missing_ip=released_ip)

    async def _on_vm(self, kind: str, vm: dict) -> None:
        await self._observe(vm, deleted=kind == "DELETED")

    async def _observe(self, vm: dict, deleted: bool, holding: set[str] | None = None,
                       ip_holding: set[str] | None = None) -> None:
        """``holding``/``ip_holding``: pools/networks where this VM holds leases, when the caller already knows."""
        meta = vm.get("metadata") or {}
        uid, namespace, name, rv = meta.get("uid"), meta.get("namespace"), meta.get("name"), meta.get("resourceVersion")
        if not (uid and namespace and name):
            return
        macs = frozenset(spec_macs(vm).items())
        seen = (macs, self.ip.seen(vm))
        if not deleted and self._last.get(uid) == seen:
            return  # status or metadata changed, not the interfaces or their addresses
        await self.ip.observe_vm(vm, deleted, ip_holding)
        by_pool, unroutable = self._route(namespace, macs)
        if unroutable and time.monotonic() - self._pools_at > 0.5:  # a pool created since we last looked?
            await self._refresh_pools()
            by_pool, unroutable = self._route(namespace, macs)
        if unroutable:
            seen = None  # not fully observed: the next event or list tries again
        for iface, text, reason in unroutable:
            self.unmanaged += 1
            log.warning("MAC in a VM spec that ipam does not manage", namespace=namespace, vm=name, interface=iface,
                        mac=text, reason=reason)
        if holding is None:
            async with self.db.acquire() as conn:
                holding = {r["pool"] for r in await conn.fetch(
                    "SELECT DISTINCT pool FROM ipam_store.mac_leases WHERE namespace = $1 AND vm = $2 AND vm_uid = $3",
                    namespace, name, uid)}
        tag = "deleted" if deleted else rv
        for pool in sorted(set(by_pool) | holding):
            await self.bus.send(ObserveVm(command_id=f"watch:{uid}:{tag}:{pool}", at=_now(), pool=pool,
                                          namespace=namespace, vm=name, vm_uid=uid,
                                          interfaces=() if deleted else tuple(by_pool.get(pool, ())), deleted=deleted))
        if deleted or seen is None:
            self._last.pop(uid, None)
        else:
            self._last[uid] = seen

    def _route(self, namespace: str, seen: frozenset) -> tuple[dict[str, list[ObservedInterface]], list[tuple[str, str, str]]]:
        by_pool: dict[str, list[ObservedInterface]] = {}
        unroutable = []
        for iface, text in sorted(seen):
            try:
                mac = parse_mac(text)
                pool = choose_pool(self._pools, namespace, None, mac)
            except (MacFormatError, RoutingError) as e:
                unroutable.append((iface, text, str(e)))
                continue
            by_pool.setdefault(pool.name, []).append(ObservedInterface(name=iface, mac=format_mac(mac)))
        return by_pool, unroutable

    async def _refresh_pools(self) -> None:
        async with self.db.acquire() as conn:
            self._pools = {n: p for n, (p, _part, _c) in (await load_pools(conn)).items()}
        self._pools_at = time.monotonic()

    # --- provisional leases -------------------------------------------------------

    async def _expire_loop(self, interval: float = 5.0) -> None:
        """Release provisional leases past their time, once the VM list is known to be current:
        a VM created at the last moment is seen (and confirms its lease) before we look."""
        while True:
            await asyncio.sleep(interval)
            if not self.ready:
                continue
            await self.ip.expire_pending()
            before = set(self._pools)
            await self._refresh_pools()
            if set(self._pools) - before and self.unmanaged:
                log.info("new pools: listing VMs again to adopt MACs they cover", pools=sorted(set(self._pools) - before))
                self._vm_informer.request_relist()
            async with self.db.acquire() as conn:
                rows = await conn.fetch(
                    "SELECT pool, mac::text, vm_uid, (extract(epoch FROM pending_until) * 1000)::bigint AS until "
                    "FROM ipam_store.mac_leases WHERE pending_until < now() LIMIT 1000")
            for r in rows:
                await self.bus.send(ExpirePending(command_id=f"expire:{r['mac']}:{r['vm_uid']}:{r['until']}", at=_now(),
                                               pool=r["pool"], mac=r["mac"], vm_uid=r["vm_uid"]))


def vmi_rows(vmi: dict) -> list[tuple]:
    """(uid, namespace, name, interface, mac, phase) for each interface of a VMI: the MAC the guest
    reports in status.interfaces, else the one in its spec."""
    meta = vmi.get("metadata") or {}
    status = vmi.get("status") or {}
    macs = {}
    try:
        for iface in vmi["spec"]["domain"]["devices"]["interfaces"] or []:
            if isinstance(iface, dict) and iface.get("macAddress") and iface.get("name"):
                macs[iface["name"]] = iface["macAddress"]
    except (KeyError, TypeError):
        pass
    for iface in status.get("interfaces") or []:
        if isinstance(iface, dict) and iface.get("mac") and iface.get("name"):
            macs[iface["name"]] = iface["mac"]
    rows = []
    for name, text in sorted(macs.items()):
        try:
            mac = format_mac(parse_mac(text))
        except MacFormatError:
            continue
        rows.append((meta.get("uid"), meta.get("namespace"), meta.get("name"), name, mac, status.get("phase") or "Unknown"))
    return rows


async def _insert_vmi_rows(conn, rows: list[tuple]) -> None:
    if rows:
        await conn.executemany(
            "INSERT INTO ipam_store.vmi_interfaces (vmi_uid, namespace, name, interface, mac, phase) "
            "VALUES ($1, $2, $3, $4, $5::macaddr, $6) ON CONFLICT (vmi_uid, interface) DO UPDATE "
            "SET mac = EXCLUDED.mac, phase = EXCLUDED.phase, seen_at = now()", rows)


def _now() -> int:
    return int(time.time() * 1000)
