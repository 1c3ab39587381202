"""The node side with the cluster: ipam-cni under the real bridge plugin for virt-launcher pods (live
migration keeps the VM's addresses), IPAMClaims, pods' leases released when the pods go, and
Whereabouts' allocations taken over.  The cluster is the list/watch test API server; the plugin reads
pods, VMIs and claims from it with a kubeconfig, as it does on a node."""

from __future__ import annotations

import json
import subprocess

import aiohttp
import pytest

from .cni import bridge_conf, kubeconfig, netns, node_file, plugin_dir, pod_args, run_plugin
from .harness import eventually, kubevirt_service, query
from .kube_api import FakeKubeApi
from .kubevirt import WebhookTls, apply, hashed_interface, launcher_pod, pod_manifest, review, vm_manifest, vmi_of
from .test_webhook import POOL, admit

NAD = "network-attachment-definitions"
BRIDGE = "ipamkv0"
BLUE = {"range": "10.98.0.0/24", "gateway": "10.98.0.1"}


def cni_nad(name: str, config_name: str, ipam: dict, namespace: str = "prod") -> dict:
    config = json.dumps(bridge_conf(config_name, BRIDGE, ipam))
    return {"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
            "metadata": {"name": name, "namespace": namespace}, "spec": {"config": config}}


@pytest.fixture(scope="module")
async def kube():
    api = await FakeKubeApi().start()
    await api.put("namespaces", {"metadata": {"name": "prod"}})
    await api.put("namespaces", {"metadata": {"name": "no-pods", "labels": {"mutatepods.kubemacpool.io": "ignore"}}})
    await api.put(NAD, cni_nad("blue-net", "blue", BLUE))
    await api.put(NAD, cni_nad("tiny-net", "tiny", {"range": "10.99.0.0/30"}))
    yield api
    await api.stop()


@pytest.fixture(scope="module")
async def kv(backends, kube, tmp_path_factory):
    folder = tmp_path_factory.mktemp("kv-cni")
    tls = WebhookTls(folder)
    async with kubevirt_service(backends, kube.url, tls, (POOL,)) as svc, aiohttp.ClientSession() as http, \
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=tls.client_context())) as https:
        svc.http, svc.https = http, https
        svc.cni_path = plugin_dir(folder / "bin")
        svc.cni_env = node_file(folder, svc.url, kubeconfig(folder, kube.url))

        async def networks_known():
            async with http.get(f"{svc.url}/v1/networks") as r:
                return {n["name"]: n for n in (await r.json())["networks"]}.get("blue", {}).get("attachments")

        assert await eventually(networks_known) == ["prod/blue-net"]
        yield svc
    subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True)


@pytest.fixture
def spaces():
    made = []

    def make():
        made.append(netns())
        return made[-1]

    yield make
    for ns in made:
        ns.delete()


async def cni(kv, command: str, pod: dict, ns=None, ifname: str = "net1", conf: dict | None = None):
    meta = pod["metadata"]
    container = f"c-{meta['name']}"
    return await run_plugin(kv.cni_path, "bridge" if ns else "ipam-cni", command, conf or bridge_conf("blue", BRIDGE, BLUE),
                            container=container, netns_path=ns.path if ns else "", ifname=ifname,
                            args=pod_args(meta["namespace"], meta["name"], meta["uid"], container), env=kv.cni_env)


async def ip_leases(kv, **where) -> list:
    cond = " AND ".join(f"{k} = ${i}" for i, k in enumerate(where, 1)) or "true"
    return await query(kv, f"SELECT host(address) AS address, network, vm, vm_uid, interface, workload, state "
                           f"FROM ipam.ip_leases WHERE {cond} ORDER BY address", *where.values())


async def test_live_migration_keeps_the_vms_address_in_both_pods(kv, kube, spaces):
    vm = vm_manifest("mig", multus=("blue",))
    created = apply(vm, await admit(kv.https, kv, review(vm)))
    (admitted,) = json.loads(created["metadata"]["annotations"]["ipam.kubevirt.io/ip-addresses"])["blue"]
    stored = await kube.put("virtualmachines", created)
    vmi = await kube.put("virtualmachineinstances", vmi_of(stored))
    source = await kube.put("pods", launcher_pod(vmi, "virt-launcher-mig-aaaaa"))
    target = await kube.put("pods", launcher_pod(vmi, "virt-launcher-mig-bbbbb"))
    ifname = hashed_interface("blue")
    first, second = spaces(), spaces()
    on_source = await cni(kv, "ADD", source, first, ifname)
    assert on_source.code == 0, on_source
    assert first.addresses(ifname) == {f"{admitted}/24"}  # what cloud-init was given is what the pod carries
    on_target = await cni(kv, "ADD", target, second, ifname)  # the migration target, while the source runs
    assert on_target.code == 0 and second.addresses(ifname) == {f"{admitted}/24"}, on_target
    (lease,) = await ip_leases(kv, vm="mig")
    assert (lease["workload"], lease["vm_uid"], lease["interface"]) == ("VirtualMachine", stored["metadata"]["uid"], "blue")
    assert (await cni(kv, "DEL", source, first, ifname)).code == 0  # the source pod goes: the VM keeps its address
    await kube.delete("pods", "prod", "virt-launcher-mig-aaaaa")
    assert [r["address"] for r in await ip_leases(kv, vm="mig")] == [admitted]
    await kube.delete("virtualmachines", "prod", "mig")  # the VM goes: the watcher releases it
    await eventually(lambda: _none(kv, vm="mig"))


async def _none(kv, **where) -> bool:
    return not await ip_leases(kv, **where)


async def test_a_plain_pods_leases_go_with_the_pod_even_when_ipam_missed_the_delete(kv, kube):
    pod = await kube.put("pods", pod_manifest("web-1", "prod", [{"name": "blue-net"}]))
    assert (await cni(kv, "ADD", pod)).code == 0
    (lease,) = await ip_leases(kv, vm="web-1")
    assert (lease["workload"], lease["vm_uid"], lease["interface"]) == ("Pod", pod["metadata"]["uid"], "net1")
    await kube.delete("pods", "prod", "web-1")  # the node never ran DEL (it crashed): the watcher releases
    await eventually(lambda: _none(kv, vm="web-1"))
    ghost = pod_manifest("ghost", "prod", [{"name": "blue-net"}])
    ghost["metadata"]["uid"] = "ghost-uid"
    assert (await cni(kv, "ADD", ghost)).code == 0  # a pod ipam never saw, deleted while the watcher was away
    assert await ip_leases(kv, vm="ghost")
    kube.compact()
    kube.drop_watches()  # the watch resumes from a compacted version: 410, a fresh list, the ghost is released
    await eventually(lambda: _none(kv, vm="ghost"))


async def test_ipamclaims_hold_the_addresses_and_get_their_status(kv, kube, spaces):
    claim = await kube.put("ipamclaims", {"metadata": {"name": "vm1.blue", "namespace": "prod"},
                                          "spec": {"network": "blue", "interface": hashed_interface("blue")}})

    async def status():
        current = kube.objects["ipamclaims"][("prod", "vm1.blue")].get("status") or {}
        return current if current.get("ips") else None

    written = await eventually(status)
    (condition,) = written["conditions"]
    assert (condition["type"], condition["status"], condition["reason"]) == ("IPsAllocated", "True", "SuccessfulAllocation")
    (address,) = written["ips"]
    pod = await kube.put("pods", pod_manifest("claimer", "prod", [
        {"name": "blue-net", "interface": hashed_interface("blue"), "ipam-claim-reference": "vm1.blue"}]))
    ns = spaces()
    added = await cni(kv, "ADD", pod, ns, hashed_interface("blue"))
    assert added.code == 0 and ns.addresses(hashed_interface("blue")) == {address}, added
    (lease,) = await ip_leases(kv, vm="vm1.blue")
    assert (lease["workload"], lease["vm_uid"]) == ("IPAMClaim", claim["metadata"]["uid"])
    assert (await cni(kv, "DEL", pod, ns, hashed_interface("blue"))).code == 0
    assert await ip_leases(kv, vm="vm1.blue")  # the claim, not the pod, holds them
    await kube.delete("ipamclaims", "prod", "vm1.blue")
    await eventually(lambda: _none(kv, vm="vm1.blue"))
    assert [p for p in kube.requests if p.startswith("PATCH")], "the status was written through the status subresource"


async def test_an_exhausted_claim_says_so_in_its_condition(kv, kube):
    for i in range(3):
        await kube.put("ipamclaims", {"metadata": {"name": f"t{i}.tiny", "namespace": "prod"},
                                      "spec": {"network": "tiny", "interface": "net1"}})

    async def reasons():
        found = [((kube.objects["ipamclaims"][("prod", f"t{i}.tiny")].get("status") or {}).get("conditions") or [{}])[0]
                 .get("reason") for i in range(3)]
        return found if None not in found else None

    got = await eventually(reasons)
    assert sorted(got) == ["SubnetExhausted", "SuccessfulAllocation", "SuccessfulAllocation"]
    for i in range(3):
        await kube.delete("ipamclaims", "prod", f"t{i}.tiny")


async def test_pods_get_macs_in_their_network_annotation(kv, kube):
    short = pod_manifest("app-", "prod", "blue-net, prod/blue-net@eth9", generate_name=True)
    answer = await admit(kv.https, kv, review(short, gvr=("", "v1", "Pod", "pods")), path="/mutate-pods")
    assert answer["allowed"], answer
    mutated = apply(short, answer)
    elements = json.loads(mutated["metadata"]["annotations"]["k8s.v1.cni.cncf.io/networks"])
    assert [(e["name"], e["namespace"], e.get("interface")) for e in elements] == [
        ("blue-net", "prod", None), ("blue-net", "prod", "eth9")]
    macs = [e["mac"] for e in elements]
    assert len(set(macs)) == 2 and all(m.startswith("02:00:00:") for m in macs)
    mutated["metadata"]["name"] = "app-x7k2q"  # what generateName made of it
    stored = await kube.put("pods", mutated)

    async def confirmed():
        rows = await query(kv, "SELECT mac::text, state, vm_uid, workload FROM ipam.mac_leases WHERE vm = 'app-x7k2q'")
        return rows if rows and all(r["state"] == "confirmed" for r in rows) else None

    rows = await eventually(confirmed)
    assert {r["mac"] for r in rows} == set(macs) and {(r["vm_uid"], r["workload"]) for r in rows} == {
        (stored["metadata"]["uid"], "Pod")}
    launcher = launcher_pod(vmi_of({**vm_manifest("lv", multus=("blue",)), "metadata": {
        "name": "lv", "namespace": "prod", "uid": "u"}}), "virt-launcher-lv-1")
    untouched = await admit(kv.https, kv, review(launcher, gvr=("", "v1", "Pod", "pods")), path="/mutate-pods")
    assert untouched["allowed"] and "patch" not in untouched  # its interfaces carry the VM's MACs
    taken = pod_manifest("thief", "prod", [{"name": "blue-net", "mac": macs[0]}])
    refused = await admit(kv.https, kv, review(taken, gvr=("", "v1", "Pod", "pods")), path="/mutate-pods")
    assert not refused["allowed"] and "held by Pod prod/app-x7k2q" in refused["status"]["message"]
    opted_out = pod_manifest("other", "no-pods", [{"name": "blue-net", "namespace": "prod"}])
    left = await admit(kv.https, kv, review(opted_out, gvr=("", "v1", "Pod", "pods")), path="/mutate-pods")
    assert left["allowed"] and "patch" not in left  # KubeMacPool's pod label opts the namespace out
    async with kv.http.post(f"{kv.url}/v1/ip-leases", json={"network": "blue", "namespace": "prod", "vm": "x",
                                                            "vm_uid": "u", "interface": "i", "workload": "Banana"}) as r:
        assert r.status == 400 and (await r.json())["error"]["field"] == "workload"
    await kube.delete("pods", "prod", "app-x7k2q")

    async def released():
        return not await query(kv, "SELECT 1 FROM ipam.mac_leases WHERE vm = 'app-x7k2q'")

    await eventually(released)


async def test_whereabouts_allocations_are_taken_over_on_first_start(backends, tmp_path):
    """A cluster moving from Whereabouts: the NAD's type changes to ipam-cni, its range stays; what the IPPool
    records for live pods (and a VM's launcher pod) is theirs in ipam, a dead pod's allocation is not."""
    kube = await FakeKubeApi().start()
    try:
        await kube.put("namespaces", {"metadata": {"name": "prod"}})
        await kube.put(NAD, cni_nad("legacy-net", "legacy", {"range": "10.90.0.0/24"}))
        live = await kube.put("pods", pod_manifest("old-web", "prod", [{"name": "legacy-net"}]))
        vm = await kube.put("virtualmachines", {**vm_manifest("old-vm", multus=("legacy",)), "metadata": {
            "name": "old-vm", "namespace": "prod"}})
        vm["spec"]["template"]["spec"]["networks"][1]["multus"]["networkName"] = "legacy-net"
        vm = await kube.put("virtualmachines", vm)
        vmi = await kube.put("virtualmachineinstances", vmi_of(vm))
        await kube.put("pods", launcher_pod(vmi, "virt-launcher-old-vm-x"))
        allocations = {"5": {"id": "c-web", "podref": "prod/old-web", "ifname": "net1"},
                       "6": {"id": "c-gone", "podref": "prod/deleted-long-ago", "ifname": "net1"},
                       "7": {"id": "c-vm", "podref": "prod/virt-launcher-old-vm-x", "ifname": hashed_interface("legacy")}}
        await kube.put("ippools", {"metadata": {"name": "10.90.0.0-24", "namespace": "kube-system"},
                                   "spec": {"range": "10.90.0.0/24", "allocations": allocations}})
        async with kubevirt_service(backends, kube.url, WebhookTls(tmp_path), (POOL,)) as svc:

            async def adopted():
                rows = await ip_leases(svc, network="legacy")
                return rows if len(rows) == 2 else None

            rows = {r["address"]: r for r in await eventually(adopted)}
            assert (rows["10.90.0.5"]["workload"], rows["10.90.0.5"]["vm_uid"]) == ("Pod", live["metadata"]["uid"])
            assert (rows["10.90.0.7"]["workload"], rows["10.90.0.7"]["vm"], rows["10.90.0.7"]["interface"]) == (
                "VirtualMachine", "old-vm", "legacy")
            assert "10.90.0.6" not in rows  # Whereabouts leaked it (its pod is gone): free again
            svc.cni_path = plugin_dir(tmp_path / "bin")
            svc.cni_env = node_file(tmp_path, svc.url, kubeconfig(tmp_path, kube.url))
            again = await cni(svc, "ADD", live, conf=bridge_conf("legacy", BRIDGE, {"range": "10.90.0.0/24"}))
            assert again.ips == {"10.90.0.5/24"}, again  # the pod's next ADD: the address Whereabouts gave it
    finally:
        await kube.stop()
