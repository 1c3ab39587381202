"""The watcher against a server speaking the Kubernetes list/watch protocol, through
kubernetes-asyncio (the client production uses), with the real broker and Postgres."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
import structlog

from ipam.roles import watcher as watcher_module
from ipam.roles.watcher import Watcher
from ipam.service import Service

from .harness import confirmed_to, create_database, drop_database, eventually, make_config, query
from .kube_api import FakeKubeApi
from .kubevirt import WebhookTls, apply, macs_of, review, vm_manifest
from .test_webhook import POOL, admit


@pytest.fixture
async def kube():
    api = await FakeKubeApi().start()
    await api.put("namespaces", {"metadata": {"name": "prod"}})
    yield api
    await api.stop()


@pytest.fixture
async def kv_factory(backends, kube, tmp_path):
    """Start a service (webhook + watcher) on a fresh database; tests choose the settings."""
    dsn = await create_database(backends.postgres_dsn)
    tls = WebhookTls(tmp_path)
    started = []

    async def start(**settings) -> Service:
        cfg = make_config(backends.kafka_bootstrap, dsn, tls_cert_file=str(tls.cert_file), tls_key_file=str(tls.key_file),
                          webhook_addr="127.0.0.1:0", kube_api=kube.url, **settings)
        svc = Service(cfg)
        started.append(svc)
        await svc.start()
        await svc.wait_ready()
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{svc.url}/v1/pools", json=POOL) as r:
                assert r.status in (201, 409), await r.json()
        svc.https = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=tls.client_context()))
        return svc

    yield start
    for svc in started:
        if hasattr(svc, "https"):
            await svc.https.close()
        await svc.stop()
    await drop_database(backends.postgres_dsn, dsn)


async def test_create_confirm_delete_release(kv_factory, kube):
    svc = await kv_factory()
    vm = vm_manifest("app-1")
    created = apply(vm, await admit(svc.https, svc, review(vm)))
    stored = await kube.put("virtualmachines", created)
    uid = stored["metadata"]["uid"]
    await confirmed_to(svc.cfg.database_url, "ipam.mac_leases", "app-1", 3, uid)
    await kube.delete("virtualmachines", "prod", "app-1")

    async def released():
        live = await query(svc, "SELECT 1 FROM ipam.mac_leases WHERE vm = 'app-1'")
        quarantined = await query(svc, "SELECT mac::text FROM ipam_store.mac_quarantine WHERE vm = 'app-1'")
        return not live and {r["mac"] for r in quarantined} == set(macs_of(stored).values())

    await eventually(released)
    reasons = await query(svc, "SELECT DISTINCT detail FROM ipam.history WHERE vm = 'app-1' AND what = 'released'")
    assert [r["detail"] for r in reasons] == ["vm-deleted"]


async def test_a_vm_that_never_appears_loses_its_pending_lease(kv_factory):
    svc = await kv_factory(pending_seconds=1)
    response = await admit(svc.https, svc, review(vm_manifest("ghost-1")))
    assert response["allowed"] is True
    assert len(await query(svc, "SELECT 1 FROM ipam.mac_leases WHERE vm = 'ghost-1' AND state = 'pending'")) == 3

    async def expired():
        return not await query(svc, "SELECT 1 FROM ipam.mac_leases WHERE vm = 'ghost-1'")

    await eventually(expired, timeout=30)
    reasons = await query(svc, "SELECT DISTINCT detail FROM ipam.history WHERE vm = 'ghost-1' AND what = 'released'")
    assert [r["detail"] for r in reasons] == ["pending-expired"]


async def test_first_start_adopts_existing_macs_and_reports_duplicates(kv_factory, kube, monkeypatch):
    """Migration from KubeMacPool: MACs already in VM specs become leases; a MAC two VMs carry is a conflict."""
    monkeypatch.setattr(watcher_module, "PROGRESS_SECONDS", 0.0)  # report progress after every VM
    logs = structlog.testing.LogCapture()
    captured = structlog.wrap_logger(None, processors=[logs], wrapper_class=structlog.BoundLogger)
    monkeypatch.setattr(watcher_module, "log", captured)
    await kube.put("virtualmachines", vm_manifest("old-a", macs={"default": "02:00:00:00:10:01", "blue": "02:00:00:00:10:02",
                                                                  "green": "02:00:00:00:10:03"}))
    await kube.put("virtualmachines", vm_manifest("old-b", macs={"default": "02:00:00:00:10:04", "blue": "02:00:00:00:10:02",
                                                                  "green": "02:00:00:00:10:05"}))
    svc = await kv_factory()

    async def adopted():
        rows = await query(svc, "SELECT mac::text, vm, interface, state FROM ipam.mac_leases ORDER BY mac")
        return rows if len(rows) == 5 else None

    rows = await eventually(adopted)
    progress = [(e["observed"], e["of"]) for e in logs.entries if e["event"] == "observing listed VMs"]
    assert progress[:2] == [(1, 2), (2, 2)]
    assert {r["mac"]: (r["vm"], r["interface"]) for r in rows} == {
        "02:00:00:00:10:01": ("old-a", "default"), "02:00:00:00:10:02": ("old-a", "blue"),
        "02:00:00:00:10:03": ("old-a", "green"), "02:00:00:00:10:04": ("old-b", "default"),
        "02:00:00:00:10:05": ("old-b", "green"),
    }
    assert {r["state"] for r in rows} == {"confirmed"}
    conflicts = await query(svc, "SELECT mac::text, vm, interface, holder_vm, holder_interface FROM ipam.mac_conflicts")
    assert [tuple(c.values()) for c in conflicts] == [("02:00:00:00:10:02", "old-b", "blue", "old-a", "blue")]
    # a new VM never gets an adopted MAC
    response = await admit(svc.https, svc, review(vm_manifest("new-1")))
    assert not set(macs_of(apply(vm_manifest("new-1"), response)).values()) & {r["mac"] for r in rows}


async def test_the_watch_survives_410_gone_and_dropped_connections(kv_factory, kube):
    svc = await kv_factory()
    informer = svc.watcher.vms
    relists = informer.relists
    kube.compact()  # the next watch request gets 410 Gone: the client must list again
    kube.drop_watches()  # and the connection in use drops mid-stream
    await kube.put("virtualmachines", vm_manifest("late-a", macs={"default": "02:00:00:00:20:01"}))

    async def leased(vm, count):
        return len(await query(svc, "SELECT 1 FROM ipam.mac_leases WHERE vm = $1", vm)) == count

    await eventually(lambda: leased("late-a", 1))
    assert informer.relists > relists and kube.gone_sent >= 1
    resumes = informer.resumes
    kube.drop_watches()  # a plain disconnect resumes from the last resourceVersion, no relist needed
    await kube.delete("virtualmachines", "prod", "late-a")
    await eventually(lambda: leased("late-a", 0))
    assert informer.resumes > resumes
    watches = [q for q in kube.requests if "watch=true" in q and "virtualmachines" in q]
    assert all("allowWatchBookmarks=true" in q and "resourceVersion=" in q for q in watches)


async def test_vms_deleted_while_the_watcher_was_down_are_released_on_the_next_list(kv_factory, kube):
    svc = await kv_factory()
    vm = vm_manifest("gone-1")
    created = apply(vm, await admit(svc.https, svc, review(vm)))
    await kube.put("virtualmachines", created)
    await eventually(lambda: _count(svc, "gone-1", "confirmed", 3))
    await svc.stop()
    await kube.delete("virtualmachines", "prod", "gone-1")  # nobody watching
    kube.compact()
    svc2 = await kv_factory()
    await eventually(lambda: _count(svc2, "gone-1", None, 0))


async def _count(svc, vm, state, n):
    rows = await query(svc, "SELECT state FROM ipam.mac_leases WHERE vm = $1", vm)
    return len(rows) == n and (state is None or all(r["state"] == state for r in rows))


async def test_one_watcher_leads_and_a_standby_takes_over(kv_factory):
    svc = await kv_factory()
    standby = Watcher(svc.cfg, svc.read, svc.bus)
    task = asyncio.create_task(standby.run())
    try:
        await asyncio.sleep(3)
        assert svc.watcher.is_leader and not standby.is_leader
        await svc.supervisor.cancel("watcher")  # the leader goes away (its lock connection closes)
        await eventually(lambda: asyncio.sleep(0, standby.is_leader), timeout=15)
        await eventually(lambda: asyncio.sleep(0, standby.ready), timeout=15)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def vmi(name: str, mac: str, phase: str = "Running") -> dict:
    return {"metadata": {"name": name, "namespace": "prod"},
            "spec": {"domain": {"devices": {"interfaces": [{"name": "default", "masquerade": {}}]}}},
            "status": {"phase": phase, "interfaces": [{"name": "default", "mac": mac, "ipAddress": "10.0.0.2"}]}}


async def test_running_vmis_sharing_a_mac_are_reported_as_collisions(kv_factory, kube):
    await kube.put("virtualmachineinstances", vmi("a", "02:00:00:00:30:01"))
    await kube.put("virtualmachineinstances", vmi("stopped", "02:00:00:00:30:01", phase="Succeeded"))
    svc = await kv_factory()
    await kube.put("virtualmachineinstances", vmi("b", "02-00-00-00-30-01"))

    async def collisions():
        return await query(svc, "SELECT mac::text, vmis, interfaces FROM ipam.mac_collisions")

    rows = await eventually(collisions)
    assert [tuple(r.values()) for r in rows] == [("02:00:00:00:30:01", 2, ["prod/a default", "prod/b default"])]
    async with aiohttp.ClientSession() as http, http.get(f"{svc.url}/metrics") as r:
        text = await r.text()
    assert "ipam_mac_collisions 1.0" in text
    await kube.delete("virtualmachineinstances", "prod", "b")

    async def cleared():
        return not await collisions()

    await eventually(cleared)
    async with aiohttp.ClientSession() as http, http.get(f"{svc.url}/metrics") as r:
        assert "ipam_mac_collisions 0.0" in await r.text()
