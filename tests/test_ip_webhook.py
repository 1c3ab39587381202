"""IP addresses end to end: NetworkAttachmentDefinitions discovered through the list/watch test
server, AdmissionReviews over real HTTPS, the real broker and Postgres.  A VM with two secondary
networks gets MACs, addresses and cloud-init networkData that matches its leases; a restart keeps
them; a hot-plugged interface gets an address; the guest's reports show drift; delete releases."""

from __future__ import annotations

import asyncio
import base64
import copy
import ipaddress
import json

import aiohttp
import pytest
import yaml

from .harness import confirmed_to, eventually, kubevirt_service, query
from .kube_api import FakeKubeApi
from .kubevirt import WebhookTls, apply, macs_of, review, vm_manifest
from .test_webhook import POOL, admit

NAD = "network-attachment-definitions"
ANNOTATION = "ipam.kubevirt.io/ip-addresses"


def nad(name: str, namespace: str = "prod", **annotations: str) -> dict:
    config = json.dumps({"cniVersion": "0.3.1", "type": "bridge", "bridge": f"br-{name}"})
    return {"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
            "metadata": {"name": name, "namespace": namespace,
                         "annotations": {f"ipam.kubevirt.io/{k}": v for k, v in annotations.items()}},
            "spec": {"config": config}}


@pytest.fixture(scope="module")
async def kube():
    api = await FakeKubeApi().start()
    await api.put("namespaces", {"metadata": {"name": "prod"}})
    await api.put(NAD, nad("blue-net", subnets="10.40.0.0/24, fd00:40::/64", gateways="10.40.0.1, fd00:40::1",
                           exclude="10.40.0.2-10.40.0.9", dns="10.40.0.53"))
    await api.put(NAD, nad("green-net", subnets="192.168.60.0/28", network="shared-green"))
    await api.put(NAD, nad("purple-net", subnets="172.20.0.0/24"))
    await api.put(NAD, nad("red-net"))  # no ipam annotations: not addressed
    await api.put(NAD, nad("orange-net", subnets="fd00:41::/64, 10.41.0.0/24"))  # IPv6 first, as OVN-K users write it
    yield api
    await api.stop()


@pytest.fixture(scope="module")
async def kv(backends, kube, tmp_path_factory):
    tls = WebhookTls(tmp_path_factory.mktemp("tls-ip"))
    async with kubevirt_service(backends, kube.url, tls, (POOL,)) as svc, aiohttp.ClientSession() as http, \
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=tls.client_context())) as https:
        svc.http, svc.https = http, https

        async def networks_known():
            async with http.get(f"{svc.url}/v1/networks") as r:
                names = {n["name"] for n in (await r.json())["networks"]}
            return {"prod.blue-net", "shared-green", "prod.purple-net", "prod.orange-net"} <= names

        await eventually(networks_known)
        yield svc


def network_data(vm: dict) -> dict:
    spec = vm["spec"]["template"]["spec"]
    (volume,) = [v for v in spec["volumes"] if "cloudInitNoCloud" in v]
    return yaml.safe_load(volume["cloudInitNoCloud"]["networkData"])


def leased(vm: dict) -> dict[str, list[str]]:
    return json.loads(vm["metadata"]["annotations"][ANNOTATION])


async def test_addresses_follow_the_order_of_the_nads_subnets(kv):
    """A NAD listing IPv6 first gets IPv6 first in the annotation and in networkData, on every answer."""
    vm = vm_manifest("app-order", multus=("orange",))
    body = review(vm)
    created = apply(vm, await admit(kv.https, kv, body))
    six, four = (ipaddress.ip_address(a) for a in leased(created)["orange"])
    assert six.version == 6 and four.version == 4, leased(created)
    orange = {item["mac_address"]: item for item in network_data(created)["config"]}[macs_of(created)["orange"]]
    assert [s["address"] for s in orange["subnets"]] == [f"{six}/64", f"{four}/24"]
    again = apply(vm, await admit(kv.https, kv, body))
    assert leased(again) == leased(created) and network_data(again) == network_data(created)


async def test_nad_annotations_become_networks(kv):
    async with kv.http.get(f"{kv.url}/v1/networks/prod.blue-net") as r:
        blue = await r.json()
    assert [s["cidr"] for s in blue["subnets"]] == ["10.40.0.0/24", "fd00:40::/64"]
    assert blue["subnets"][0]["gateway"] == "10.40.0.1" and blue["subnets"][0]["size"] == 254 - 9
    assert blue["dns"] == ["10.40.0.53"] and blue["attachments"] == ["prod/blue-net"]
    assert blue["source"] == "nad:prod/blue-net"
    async with kv.http.get(f"{kv.url}/v1/networks/shared-green") as r:
        assert (await r.json())["attachments"] == ["prod/green-net"]


async def test_a_vm_on_two_networks_gets_macs_addresses_and_matching_network_data(kv, kube):
    https = kv.https
    vm = vm_manifest("app-1", multus=("blue", "green", "red"))
    body = review(vm)
    response = await admit(https, kv, body)
    assert response["allowed"] is True, response
    created = apply(vm, response)
    macs = macs_of(created)
    addresses = leased(created)
    assert set(addresses) == {"blue", "green"}  # red's NAD carries no ipam annotation
    v4, v6 = (ipaddress.ip_address(a) for a in addresses["blue"])
    assert v4 in ipaddress.ip_network("10.40.0.0/24") and v6 in ipaddress.ip_network("fd00:40::/64")
    assert not ipaddress.ip_address("10.40.0.1") <= v4 <= ipaddress.ip_address("10.40.0.9")
    data = network_data(created)
    assert data["version"] == 1  # what cloud-init renders faithfully everywhere (tests/test_network_data.py)
    nics = {item["mac_address"]: item for item in data["config"]}
    assert nics[macs["default"]] == {"type": "physical", "name": "eth0", "mac_address": macs["default"],
                                     "subnets": [{"type": "dhcp"}]}
    blue = nics[macs["blue"]]
    assert blue["name"] == "eth1" and [s["address"] for s in blue["subnets"]] == [f"{v4}/24", f"{v6}/64"]
    assert {r["gateway"] for s in blue["subnets"] for r in s.get("routes", [])} == {"10.40.0.1", "fd00:40::1"}
    assert blue["subnets"][0]["dns_nameservers"] == ["10.40.0.53"]
    assert nics[macs["green"]]["subnets"] == [{"type": "static", "address": f"{addresses['green'][0]}/28"}]
    assert len(nics) == 3  # red's NAD carries no ipam annotation: not configured
    disks = created["spec"]["template"]["spec"]["domain"]["devices"]["disks"]
    assert {"name": "ipam-cloudinit", "disk": {"bus": "virtio"}} in disks
    pending = await query(kv, "SELECT network, host(address) AS a, state, vm_uid FROM ipam.ip_leases WHERE vm = 'app-1'")
    assert {(r["network"], r["a"]) for r in pending} == {("prod.blue-net", str(v4)), ("prod.blue-net", str(v6)),
                                                         ("shared-green", addresses["green"][0])}
    assert {r["state"] for r in pending} == {"pending"}
    again = apply(vm, await admit(https, kv, body))  # the API server retries: same answer
    assert leased(again) == addresses and network_data(again) == data

    # the VM is persisted: the watcher binds the pending leases to its uid
    stored = await kube.put("virtualmachines", created)
    uid = stored["metadata"]["uid"]
    await confirmed_to(kv.cfg.database_url, "ipam.ip_leases", "app-1", 3, uid)

    # stop and start (runStrategy), same uid: same addresses, same networkData
    for strategy in ("Halted", "Always"):
        changed = copy.deepcopy(stored)
        changed["spec"]["runStrategy"] = strategy
        answer = await admit(https, kv, review(changed, "UPDATE", old=stored))
        assert answer["allowed"] is True
        stored = await kube.put("virtualmachines", apply(changed, answer))
        assert leased(stored) == addresses and network_data(stored) == data

    # hot plug an interface on another managed network
    plugged = copy.deepcopy(stored)
    spec = plugged["spec"]["template"]["spec"]
    spec["domain"]["devices"]["interfaces"].append({"name": "purple", "bridge": {}})
    spec["networks"].append({"name": "purple", "multus": {"networkName": "purple-net"}})
    answer = await admit(https, kv, review(plugged, "UPDATE", old=stored))
    assert answer["allowed"] is True, answer
    plugged = apply(plugged, answer)
    assert leased(plugged)["blue"] == addresses["blue"]
    assert ipaddress.ip_address(leased(plugged)["purple"][0]) in ipaddress.ip_network("172.20.0.0/24")
    nics = {item["mac_address"]: item for item in network_data(plugged)["config"]}
    assert nics[macs_of(plugged)["purple"]]["name"] == "eth4" and nics[macs["blue"]] == blue
    stored = await kube.put("virtualmachines", plugged)

    # the guest runs and reports its addresses: one it was not given is drift
    vmi = {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
           "metadata": {"name": "app-1", "namespace": "prod",
                        "ownerReferences": [{"kind": "VirtualMachine", "name": "app-1", "uid": uid}]},
           "spec": copy.deepcopy(stored["spec"]["template"]["spec"]),
           "status": {"phase": "Running", "interfaces": [
               {"name": "blue", "mac": macs["blue"], "ipAddresses": [f"{v4}/24", "10.40.0.77", f"{v6}/64", "fe80::1"]},
               {"name": "green", "mac": macs["green"], "ipAddresses": [addresses["green"][0]]}]}}
    await kube.put("virtualmachineinstances", vmi)

    async def drift_seen():
        got = await query(kv, "SELECT network, host(address) AS a, kind, leased FROM ipam.ip_drift WHERE vm = 'app-1'")
        events = await query(kv, "SELECT body FROM ipam_store.ledger WHERE type = 'IpDrift' AND vm = 'app-1'")
        return got and events and (got, events)

    drift, events = await eventually(drift_seen)
    assert [(r["network"], r["a"], r["kind"]) for r in drift] == [("prod.blue-net", "10.40.0.77", "unleased")]
    assert sorted(drift[0]["leased"]) == sorted([str(v4), str(v6)])
    assert json.loads(events[0]["body"])["address"] == "10.40.0.77"
    async with kv.http.get(f"{kv.url}/metrics") as r:
        assert "ipam_ip_drift 1.0" in await r.text()

    # delete: every address goes back (quarantined)
    await kube.delete("virtualmachineinstances", "prod", "app-1")
    await kube.delete("virtualmachines", "prod", "app-1")

    async def released():
        return not await query(kv, "SELECT 1 FROM ipam.ip_leases WHERE vm = 'app-1'")

    await eventually(released)
    quarantined = await query(kv, "SELECT count(*) AS n FROM ipam_store.ip_quarantine WHERE vm = 'app-1'")
    assert quarantined[0]["n"] == 4


async def test_user_network_data_is_merged_or_the_conflict_denied(kv):
    https = kv.https
    mine = {"version": 2, "ethernets": {"mgmt": {"match": {"macaddress": "02:aa:00:00:00:01"}, "dhcp4": True}}}
    vm = vm_manifest("merge-1", multus=("green",))
    vm["spec"]["template"]["spec"]["volumes"].append(
        {"name": "cloudinit",
         "cloudInitNoCloud": {"userData": "#cloud-config\npassword: x\n", "networkData": yaml.safe_dump(mine)}})
    created = apply(vm, await admit(https, kv, review(vm)))
    data = network_data(created)
    assert data["ethernets"]["mgmt"] == mine["ethernets"]["mgmt"]  # the user's entry is kept
    assert data["ethernets"]["green"]["addresses"] == [f"{leased(created)['green'][0]}/28"]
    assert "default" not in data["ethernets"]  # the user wrote networkData: the pod interface is theirs to configure
    assert len([v for v in created["spec"]["template"]["spec"]["volumes"] if "cloudInitNoCloud" in v]) == 1

    clash = vm_manifest("clash-1", multus=("green",))
    theirs = {"version": 2, "ethernets": {"green": {"addresses": ["10.99.0.5/24"]}}}
    clash["spec"]["template"]["spec"]["volumes"].append(
        {"name": "cloudinit",
         "cloudInitNoCloud": {"networkDataBase64": base64.b64encode(yaml.safe_dump(theirs).encode()).decode()}})
    response = await admit(https, kv, review(clash))  # the user's own address is asked for: outside the network
    assert response["allowed"] is False
    assert "10.99.0.5" in response["status"]["message"] and "outside network 'shared-green'" in response["status"]["message"]

    v1 = vm_manifest("v1-1", multus=("green",))
    v1["spec"]["template"]["spec"]["volumes"].append(
        {"name": "cloudinit", "cloudInitNoCloud": {"networkData": "version: 1\nconfig: []\n"}})
    response = await admit(https, kv, review(v1))
    assert response["allowed"] is True, response  # version 1 is merged in its own form
    (item,) = network_data(apply(v1, response))["config"]
    assert item["type"] == "physical" and item["subnets"][0]["address"].startswith("192.168.60.")

    secret = vm_manifest("secret-1", multus=("green",))
    secret["spec"]["template"]["spec"]["volumes"].append(
        {"name": "cloudinit", "cloudInitNoCloud": {"networkDataSecretRef": {"name": "my-net"}}})
    response = await admit(https, kv, review(secret))
    assert response["allowed"] is True and "my-net" in response["warnings"][0]
    patched = apply(secret, response)
    assert set(leased(patched)) == {"green"}
    assert patched["spec"]["template"]["spec"]["volumes"] == secret["spec"]["template"]["spec"]["volumes"]


async def test_static_address_by_annotation_and_holder_named_when_taken(kv):
    https = kv.https
    vm = vm_manifest("static-1", multus=("green",))
    vm["metadata"]["annotations"] = {ANNOTATION: json.dumps({"green": ["192.168.60.12"]})}
    created = apply(vm, await admit(https, kv, review(vm)))
    assert leased(created) == {"green": ["192.168.60.12"]}
    other = vm_manifest("static-2", multus=("green",))
    other["metadata"]["annotations"] = {ANNOTATION: json.dumps({"green": ["192.168.60.12"]})}
    response = await admit(https, kv, review(other))
    assert response["allowed"] is False
    assert "static-1" in response["status"]["message"] and response["status"]["code"] == 409
    bad = vm_manifest("static-3", multus=("green",))
    bad["metadata"]["annotations"] = {ANNOTATION: "{not json"}
    response = await admit(https, kv, review(bad))
    assert response["allowed"] is False and ANNOTATION in response["status"]["message"]


async def test_nad_update_and_delete_become_commands(kv, kube):
    await kube.put(NAD, nad("temp-net", subnets="10.77.0.0/24"))

    async def network(name):
        async with kv.http.get(f"{kv.url}/v1/networks/{name}") as r:
            return r.status == 200 and await r.json()

    await eventually(lambda: network("prod.temp-net"))
    await kube.put(NAD, nad("temp-net", subnets="10.77.0.0/24", dns="10.77.0.53", gateways="10.77.0.1"))

    async def updated():
        got = await network("prod.temp-net")
        return got and got["dns"] == ["10.77.0.53"] and got["subnets"][0]["gateway"] == "10.77.0.1"

    await eventually(updated)
    await kube.delete(NAD, "prod", "temp-net")

    async def gone():
        async with kv.http.get(f"{kv.url}/v1/networks/prod.temp-net") as r:
            return r.status == 404

    await eventually(gone)
    history = await query(kv, "SELECT what FROM ipam.history WHERE network = 'prod.temp-net' ORDER BY id")
    assert [r["what"] for r in history] == ["network created", "network changed", "network deleted"]
    await asyncio.sleep(0)


async def test_an_address_the_user_wrote_is_claimed_for_that_vm_and_protected(kv):
    """The user's own networkData gives the interface 172.20.0.20: that is the VM's lease (static), no second
    address is added, another VM cannot lease it, and a VM writing a held address is denied naming the holder."""
    https = kv.https

    def vm_with(name: str, network_data: str, kind: str = "cloudInitNoCloud") -> dict:
        vm = vm_manifest(name, multus=("purple",))
        vm["spec"]["template"]["spec"]["volumes"].append({"name": "cloudinit", kind: {"networkData": network_data}})
        return vm

    own = vm_with("own-1", yaml.safe_dump({"version": 2, "ethernets": {"eth1": {"addresses": ["172.20.0.20/24"]}}}))
    response = await admit(https, kv, review(own))
    assert response["allowed"] is True, response
    created = apply(own, response)
    assert leased(created) == {"purple": ["172.20.0.20"]}
    assert network_data(created)["ethernets"]["eth1"]["addresses"] == ["172.20.0.20/24"]  # one address, the user's
    rows = await query(kv, "SELECT host(address) AS a, static FROM ipam.ip_leases WHERE vm = 'own-1'")
    assert [(r["a"], r["static"]) for r in rows] == [("172.20.0.20", True)]
    async with kv.http.post(f"{kv.url}/v1/ip-leases", json={"network": "prod.purple-net", "namespace": "prod", "vm": "x",
                                                            "vm_uid": "u", "interface": "eth1",
                                                            "addresses": ["172.20.0.20"]}) as r:
        assert r.status == 409 and "prod/own-1" in (await r.json())["error"]["message"]

    v1 = "version: 1\nconfig:\n- type: physical\n  name: eth1\n  subnets:\n  - type: static\n    address: 172.20.0.20/24\n"
    response = await admit(https, kv, review(vm_with("own-2", v1)))
    assert response["allowed"] is False and "172.20.0.20 is held by prod/own-1" in response["status"]["message"], response

    drive = json.dumps({"links": [{"id": "eth1", "type": "phy"}],
                        "networks": [{"id": "n", "link": "eth1", "type": "ipv4", "ip_address": "172.20.0.21",
                                      "netmask": "255.255.255.0"}]})
    response = await admit(https, kv, review(vm_with("own-3", drive, "cloudInitConfigDrive")))
    assert response["allowed"] is True, response
    assert leased(apply(vm_with("own-3", drive, "cloudInitConfigDrive"), response)) == {"purple": ["172.20.0.21"]}


async def test_a_review_raced_by_releases_of_the_same_vm_gets_its_addresses_or_a_reason(kv):
    """The webhook's side of the REST race (a repeat answered just before a release of the same VM): every
    review of the VM, repeated while REST releases its MACs and addresses, is allowed with a MAC on every
    interface and the addresses of its network in the annotation and networkData, or denied with a message;
    never a 5xx, never an allowed answer without an address."""
    vm = vm_manifest("app-race", multus=("blue",))
    outcomes = []

    async def release(path: str) -> int:
        async with kv.http.delete(kv.url + path) as r:
            await r.read()
            return r.status

    for _ in range(30):
        reviews = [admit(kv.https, kv, review(vm)) for _ in range(2)]
        releases = [release("/v1/mac-leases/prod/app-race"), release("/v1/ip-leases/prod.blue-net/prod/app-race")]
        *answers, mac_released, ip_released = await asyncio.gather(*reviews, *releases)
        assert mac_released < 500 and ip_released < 500
        outcomes += answers
    for response in outcomes:
        if not response["allowed"]:
            assert response["status"]["code"] < 500 and response["status"]["message"], response
            continue
        created = apply(vm, response)
        assert set(macs_of(created)) == {"default", "blue"}, response
        versions = [ipaddress.ip_address(a).version for a in leased(created)["blue"]]
        assert versions == [4, 6], response
        blue = {i["mac_address"]: i for i in network_data(created)["config"]}[macs_of(created)["blue"]]
        assert len(blue["subnets"]) == 2
    assert any(r["allowed"] for r in outcomes)
