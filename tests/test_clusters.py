"""One ipam for two Kubernetes clusters (IPAM_CLUSTER east and west), each with its own webhook and watcher
(list/watch test servers), on one broker and Postgres: VMs of the same names in both get distinct MACs, each
watcher confirms and releases only its own cluster's leases, a VM received by a decentralized live migration
keeps its MAC, psql and REST show the cluster."""

from __future__ import annotations

import asyncio
import copy
import dataclasses

import aiohttp
import pytest

from ipam.service import Service

from .harness import eventually, kubevirt_service, query
from .kube_api import FakeKubeApi
from .kubevirt import WebhookTls, apply, macs_of, review, vm_manifest
from .test_webhook import POOL, admit

VMS = 12


@pytest.fixture(scope="module")
async def clusters(backends, tmp_path_factory):
    kubes = [await FakeKubeApi().start() for _ in range(2)]
    for kube in kubes:
        await kube.put("namespaces", {"metadata": {"name": "prod"}})
    tls = WebhookTls(tmp_path_factory.mktemp("tls-clusters"))
    try:
        async with kubevirt_service(backends, kubes[0].url, tls, (POOL,), cluster="east") as east:
            cfg = dataclasses.replace(east.cfg, cluster="west", kube_api=kubes[1].url, http_addr="127.0.0.1:0",
                                      webhook_addr="127.0.0.1:0")
            async with Service(cfg, {"api", "watcher"}) as west, aiohttp.ClientSession() as http, \
                    aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=tls.client_context())) as https:
                await west.wait_ready()
                yield {"east": (east, kubes[0]), "west": (west, kubes[1])}, http, https
    finally:
        for kube in kubes:
            await kube.stop()


async def create_vm(https, svc, kube, vm: dict) -> dict:
    answer = await admit(https, svc, review(vm))
    assert answer["allowed"] is True, answer
    return await kube.put("virtualmachines", apply(vm, answer))


async def confirmed(svc, cluster: str, vm: str, uid: str) -> bool:
    rows = await query(svc, "SELECT state, vm_uid FROM ipam.mac_leases WHERE cluster = $1 AND vm = $2", cluster, vm)
    return bool(rows) and all(r["state"] == "confirmed" and r["vm_uid"] == uid for r in rows)


async def test_two_clusters_share_one_address_space_and_keep_to_their_own(clusters):
    (east, east_kube), (west, west_kube) = clusters[0]["east"], clusters[0]["west"]
    http, https = clusters[1], clusters[2]
    stored = {}
    for name, (svc, kube) in clusters[0].items():  # the same VM names in both clusters
        stored[name] = await asyncio.gather(*[create_vm(https, svc, kube, vm_manifest(f"app-{i}", multus=()))
                                              for i in range(VMS)])
    macs = [m for vms in stored.values() for vm in vms for m in macs_of(vm).values()]
    assert len(macs) == len(set(macs)) == 2 * VMS, "a MAC handed to both clusters"
    for name, (svc, _) in clusters[0].items():
        for vm in stored[name]:
            await eventually(lambda vm=vm, name=name, svc=svc: confirmed(svc, name, vm["metadata"]["name"],
                                                                         vm["metadata"]["uid"]))
    # each watcher's full list releases only its own cluster's missing VMs
    relists = east.watcher.vms.relists
    east.watcher.vms.request_relist()
    async def listed_again():
        return east.watcher.vms.relists > relists

    await eventually(listed_again)
    await asyncio.sleep(0.5)  # what the list sent is decided
    counts = {r["cluster"]: r["n"] for r in await query(
        east, "SELECT cluster, count(*) AS n FROM ipam.mac_leases WHERE state = 'confirmed' GROUP BY cluster")}
    assert counts == {"east": VMS, "west": VMS}
    async with http.get(f"{west.url}/v1/mac-leases", params={"cluster": "west", "vm": "app-0"}) as r:
        (lease,) = (await r.json())["leases"]
    assert lease["cluster"] == "west" and lease["mac"] == macs_of(stored["west"][0])["default"]

    # a decentralized live migration east -> west: the receiving VM keeps the MAC; a plain copy is refused
    source = stored["east"][0]
    mac = macs_of(source)["default"]
    copy_vm = copy.deepcopy(source)
    copy_vm["metadata"] = {"name": "impostor", "namespace": "prod"}
    denied = await admit(https, west, review(copy_vm))
    assert denied["allowed"] is False and "in cluster east" in denied["status"]["message"], denied
    target = copy.deepcopy(source)
    target["metadata"] = {"name": source["metadata"]["name"], "namespace": "prod"}
    target["spec"]["runStrategy"] = "WaitAsReceiver"
    await west_kube.delete("virtualmachines", "prod", source["metadata"]["name"])  # west's own app-0 makes room
    await eventually(lambda: _released(west, "west", "app-0"))
    received = await create_vm(https, west, west_kube, target)
    assert macs_of(received)["default"] == mac
    await eventually(lambda: confirmed(west, "west", "app-0", received["metadata"]["uid"]))
    await east_kube.delete("virtualmachines", "prod", source["metadata"]["name"])  # the migration completed
    await asyncio.sleep(1.0)
    (row,) = await query(east, "SELECT cluster, vm_uid FROM ipam.mac_leases WHERE mac = $1::macaddr", mac)
    assert (row["cluster"], row["vm_uid"]) == ("west", received["metadata"]["uid"])
    moved = await query(east, "SELECT what, detail, cluster FROM ipam.history WHERE mac = $1::macaddr ORDER BY id", mac)
    assert ("released", "moved", "east") in [(r["what"], r["detail"], r["cluster"]) for r in moved]


async def _released(svc, cluster: str, vm: str) -> bool:
    return not await query(svc, "SELECT 1 FROM ipam.mac_leases WHERE cluster = $1 AND vm = $2", cluster, vm)
