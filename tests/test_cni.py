"""ipam-cni under the real reference plugins (bridge, macvlan), in network namespaces, exactly as Multus
runs them; the service on the real broker and Postgres.  What the plugin leased is what the namespace
has configured; namespaces on one bridge reach each other; DEL frees; dual-stack and IPv6 /64;
exhaustion and ipam being down are CNI error objects."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import subprocess
import time
import uuid

import aiohttp
import pytest

from ipam.cni import install
from ipam.devenv import free_port
from ipam.service import Service

from .cni import Netns, bridge_conf, netns, node_file, ping_binary, plugin_dir, pod_args, run_plugin
from .harness import ServiceProcess, create_database, drop_database, make_config
from .kubevirt import WebhookTls


@pytest.fixture(scope="module")
def cni_path(tmp_path_factory):
    return plugin_dir(tmp_path_factory.mktemp("cni-bin"))


@pytest.fixture(scope="module")
async def ipam(backends, tmp_path_factory):
    """ipam in a process of its own, as on a cluster: in the test's event loop it would share the loop with
    the plugins' 200 subprocesses (each a fork of pytest), which stall it past its ownership leases."""
    dsn = await create_database(backends.postgres_dsn)
    folder = tmp_path_factory.mktemp("node")
    svc = ServiceProcess(make_config(backends.kafka_bootstrap, dsn), log_path=str(folder / "ipam.log")).start()
    try:
        await svc.wait_ready()
        svc.env = node_file(folder, svc.url)
        yield svc
    finally:
        svc.terminate()
        await drop_database(backends.postgres_dsn, dsn)


@pytest.fixture
def namespaces():
    made: list[Netns] = []
    bridges: list[str] = []

    def make() -> Netns:
        made.append(netns())
        return made[-1]

    make.bridges = bridges
    yield make
    for ns in made:
        ns.delete()
    for br in bridges:
        subprocess.run(["ip", "link", "del", br], capture_output=True)


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:6]}"


async def leases(svc, **query) -> list[dict]:
    async with aiohttp.ClientSession() as http, http.get(f"{svc.url}/v1/ip-leases", params=query) as r:
        return (await r.json())["leases"]


async def network_reads(svc) -> float:
    """How many times the plugin (or anyone) read a network's definition from this ipam, as /metrics counts."""
    async with aiohttp.ClientSession() as http, http.get(f"{svc.url}/metrics") as r:
        text = await r.text()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("ipam_http_requests_total{") and 'route="/v1/networks/{name}"' in line
               and 'method="GET"' in line)


async def add(cni_path, svc, ns: Netns, conf: dict, pod: str, container: str | None = None, plugin: str = "bridge",
              ifname: str = "net1", uid: str | None = None):
    container = container or unique("c")
    outcome = await run_plugin(cni_path, plugin, "ADD", conf, container=container, netns_path=ns.path, ifname=ifname,
                               args=pod_args("team", pod, uid or f"uid-{pod}", container), env=svc.env)
    return outcome, container


async def test_bridge_add_configures_the_leased_address_and_del_frees_it(cni_path, ipam, namespaces):
    bridge, network = unique("ib"), unique("net-")
    namespaces.bridges.append(bridge)
    conf = bridge_conf(network, bridge, {"range": "10.91.0.0/24", "range_start": "10.91.0.10", "gateway": "10.91.0.1"})
    a, b = namespaces(), namespaces()
    first, container = await add(cni_path, ipam, a, conf, "pod-a")
    assert first.code == 0, first
    reads = await network_reads(ipam)
    second, _ = await add(cni_path, ipam, b, conf, "pod-b")
    assert second.code == 0, second
    # the lease answer carries the gateway: an ADD of a known network reads no network definition
    assert await network_reads(ipam) == reads
    (leased_a,) = await leases(ipam, network=network, vm="pod-a", workload="Pod")
    assert a.addresses("net1") == {f"{leased_a['address']}/24"} == first.ips
    assert ipaddress.ip_address(leased_a["address"]) >= ipaddress.ip_address("10.91.0.10")
    assert leased_a["interface"] == "net1" and leased_a["vm_uid"] == "uid-pod-a"
    (gateway,) = {ip["gateway"] for ip in first.answer["ips"]}
    assert gateway == "10.91.0.1"
    (addr_b,) = b.addresses("net1")
    ping = a.run(ping_binary(), "-c", "1", "-W", "2", addr_b.split("/")[0])
    assert ping.returncode == 0, ping.stdout + ping.stderr
    again = await run_plugin(cni_path, "ipam-cni", "ADD", conf, container=container, netns_path=a.path,
                             args=pod_args("team", "pod-a", "uid-pod-a", container), env=ipam.env)
    assert again.code == 0 and again.ips == first.ips  # ADD repeated for the container: the same address
    gone = await run_plugin(cni_path, "bridge", "DEL", conf, container=container, netns_path=a.path,
                            args=pod_args("team", "pod-a", "uid-pod-a", container), env=ipam.env)
    assert gone.code == 0, gone
    assert await leases(ipam, network=network, vm="pod-a") == []
    assert a.addresses("net1") == set()
    twice = await run_plugin(cni_path, "bridge", "DEL", conf, container=container, netns_path=a.path,
                             args=pod_args("team", "pod-a", "uid-pod-a", container), env=ipam.env)
    assert twice.code == 0, twice  # idempotent


@pytest.mark.parametrize("version", ["0.3.1", "0.4.0", "1.0.0"])
async def test_results_in_the_configurations_version_under_macvlan(cni_path, ipam, namespaces, version):
    master = unique("im")
    subprocess.run(["ip", "link", "add", master, "type", "bridge"], check=True)  # a master: any Ethernet device
    namespaces.bridges.append(master)
    subprocess.run(["ip", "link", "set", master, "up"], check=True)
    network = unique("mv-")
    conf = {"cniVersion": version, "name": network, "type": "macvlan", "master": master, "mode": "bridge",
            "ipam": {"type": "ipam-cni", "range": "10.92.0.0/28"}}
    a, b = namespaces(), namespaces()
    first, _ = await add(cni_path, ipam, a, conf, "mv-a", plugin="macvlan")
    second, _ = await add(cni_path, ipam, b, conf, "mv-b", plugin="macvlan")
    assert first.code == 0 and second.code == 0, (first, second)
    assert first.answer["cniVersion"] == version
    assert a.addresses("net1") == first.ips and b.addresses("net1") == second.ips
    assert first.ips != second.ips
    ping = a.run(ping_binary(), "-c", "1", "-W", "2", next(iter(second.ips)).split("/")[0])
    assert ping.returncode == 0, ping.stdout + ping.stderr
    answered = await run_plugin(cni_path, "ipam-cni", "ADD", conf, container=unique("c"),
                                args=pod_args("team", "mv-a", "uid-mv-a", "x"), env=ipam.env)
    entry = answered.answer["ips"][0]
    assert ("version" in entry) == (version != "1.0.0")  # 0.3.x and 0.4.0 name each address's family


async def test_dual_stack_and_an_ipv6_64(cni_path, ipam, namespaces):
    bridge, network = unique("ib"), unique("ds-")
    namespaces.bridges.append(bridge)
    conf = bridge_conf(network, bridge, {"ipRanges": [{"range": "10.93.0.0/24"}, {"range": "fd00:93::/64"}]})
    ns = namespaces()
    outcome, _ = await add(cni_path, ipam, ns, conf, "dual")
    assert outcome.code == 0, outcome
    families = {ipaddress.ip_interface(a).version: a for a in outcome.ips}
    assert set(families) == {4, 6} and families[6].endswith("/64")
    assert ns.addresses("net1") == outcome.ips
    held = await leases(ipam, network=network, vm="dual")
    assert {f"{x['address']}/{x['prefix_length']}" for x in held} == outcome.ips


async def test_the_result_lists_addresses_in_the_order_of_the_ranges(cni_path, ipam, namespaces):
    """Whereabouts' case: ipRanges written IPv6 first give a result with the IPv6 address first (on a repeat too)."""
    bridge, network = unique("io"), unique("six-")
    namespaces.bridges.append(bridge)
    conf = bridge_conf(network, bridge, {"ipRanges": [{"range": "abcd::/64"}, {"range": "192.168.10.0/24"}]})
    ns = namespaces()
    outcome, _ = await add(cni_path, ipam, ns, conf, "order")
    assert outcome.code == 0, outcome
    listed = [ipaddress.ip_interface(ip["address"]).version for ip in outcome.answer["ips"]]
    assert listed == [6, 4], outcome.answer
    assert ns.addresses("net1") == outcome.ips


async def test_exhaustion_is_a_cni_error_not_a_crash(cni_path, ipam, namespaces):
    bridge, network = unique("ib"), unique("tiny-")
    namespaces.bridges.append(bridge)
    conf = bridge_conf(network, bridge, {"range": "10.94.0.0/30"})  # .1 and .2
    results = [await add(cni_path, ipam, namespaces(), conf, f"t{i}") for i in range(3)]
    assert [o.code for o, _ in results[:2]] == [0, 0]
    refused = results[2][0]
    assert refused.code != 0 and refused.answer["code"] == 100, refused
    assert "exhausted" in refused.answer["msg"] and network in refused.answer["msg"]


async def test_an_unknown_network_without_a_range_names_the_cause(cni_path, ipam):
    outcome = await run_plugin(cni_path, "ipam-cni", "ADD", {"cniVersion": "1.0.0", "name": "nowhere",
                                                              "ipam": {"type": "ipam-cni"}},
                               container="c1", args=pod_args("team", "p", "u", "c1"), env=ipam.env)
    assert outcome.code != 0 and outcome.answer["code"] == 7 and "'nowhere' does not exist" in outcome.answer["msg"]
    bad = await run_plugin(cni_path, "ipam-cni", "ADD", {"cniVersion": "1.0.0", "name": "x",
                                                         "ipam": {"type": "ipam-cni", "range": "10.0.0.300/24"}},
                           container="c1", args=pod_args("team", "p", "u", "c1"), env=ipam.env)
    assert bad.answer["code"] == 7 and "ipam" in bad.answer["msg"], bad


async def test_ipam_down_add_says_try_again_and_del_succeeds(cni_path, tmp_path):
    env = node_file(tmp_path, f"http://127.0.0.1:{free_port()}")  # nothing listens there
    conf = {"cniVersion": "1.0.0", "name": "down", "ipam": {"type": "ipam-cni", "range": "10.95.0.0/24"}}
    started = time.monotonic()
    added = await run_plugin(cni_path, "ipam-cni", "ADD", conf, container="c1", args=pod_args("t", "p", "u", "c1"), env=env)
    took = time.monotonic() - started
    assert added.code != 0 and added.answer["code"] == 11 and "unreachable" in added.answer["msg"], added
    assert took < 5
    deleted = await run_plugin(cni_path, "ipam-cni", "DEL", conf, container="never", args=pod_args("t", "p", "u", "never"),
                               env=env)
    assert deleted.code == 0 and deleted.answer is None, deleted
    status = await run_plugin(cni_path, "ipam-cni", "STATUS", {**conf, "cniVersion": "1.1.0"}, container="", env=env)
    assert status.answer["code"] == 50


async def test_version_and_bad_input(cni_path, ipam):
    version = await run_plugin(cni_path, "ipam-cni", "VERSION", {"cniVersion": "1.0.0"}, container="")
    assert "1.0.0" in version.answer["supportedVersions"]
    old = await run_plugin(cni_path, "ipam-cni", "ADD", {"cniVersion": "0.2.0", "name": "x", "ipam": {}}, container="c",
                           env=ipam.env)
    assert old.answer["code"] == 1
    no_ifname = await run_plugin(cni_path, "ipam-cni", "ADD", {"cniVersion": "1.0.0", "name": "x",
                                                                "ipam": {"type": "ipam-cni"}},
                                 container="c", ifname="", env=ipam.env)
    assert no_ifname.answer["code"] == 4 and "CNI_IFNAME" in no_ifname.answer["msg"]


async def test_200_concurrent_adds_get_distinct_configured_addresses(cni_path, ipam, namespaces):
    bridge, network = unique("ib"), unique("many-")
    namespaces.bridges.append(bridge)
    conf = bridge_conf(network, bridge, {"range": "10.96.0.0/22"})
    spaces = [namespaces() for _ in range(201)]
    await add(cni_path, ipam, spaces[0], conf, "warm-0")  # defines the network, creates the bridge
    started = time.monotonic()
    outcomes = await asyncio.gather(*(add(cni_path, ipam, ns, conf, f"many-{i}") for i, ns in enumerate(spaces[1:], 1)))
    took = time.monotonic() - started
    assert all(o.code == 0 for o, _ in outcomes), [o for o, _ in outcomes if o.code][:3]
    configured = [ns.addresses("net1") for ns in spaces[1:]]
    assert all(len(c) == 1 for c in configured)
    assert len(set().union(*configured)) == 200
    assert {o.ips.pop() for o, _ in outcomes} == set().union(*configured)
    print(f"\n200 concurrent ADDs through the bridge plugin: {took:.1f}s, {200 / took:.1f} pods/s (bench --only cni)")


async def test_over_https_with_a_node_token_the_plugin_may_lease_and_nothing_more(backends, database, tmp_path, cni_path):
    """As on a node: ipam's certificate names the service, the node file names ipam by address
    (``tls_server_name``), the token has the node role: leases and networks from a range, not pools."""
    tls = WebhookTls(tmp_path)
    tls.issue("ipam-api.ipam.svc")
    (tmp_path / "tokens").write_text("node-token-0123456789abcdef node ipam-cni\n")
    (tmp_path / "node-token").write_text("node-token-0123456789abcdef\n")
    (tmp_path / "ca.pem").write_bytes(tls.ca.cert_pem.bytes())
    cfg = make_config(backends.kafka_bootstrap, database, plain_http=False, tls_cert_file=str(tls.cert_file),
                      tls_key_file=str(tls.key_file), token_file=str(tmp_path / "tokens"))
    async with Service(cfg) as svc:
        await svc.wait_ready()
        node = tmp_path / "ipam-cni.conf"
        node.write_text(json.dumps({"url": svc.url, "tls_server_name": "ipam-api.ipam.svc",
                                    "token_file": str(tmp_path / "node-token"), "ca_file": str(tmp_path / "ca.pem")}))
        env = {"IPAM_CNI_CONF": str(node)}
        conf = {"cniVersion": "1.0.0", "name": "secure", "ipam": {"type": "ipam-cni", "range": "10.89.0.0/24"}}
        added = await run_plugin(cni_path, "ipam-cni", "ADD", conf, container="c1", args=pod_args("t", "p", "u", "c1"),
                                 env=env)
        assert added.code == 0 and added.ips, added
        assert (await run_plugin(cni_path, "ipam-cni", "DEL", conf, container="c1", args=pod_args("t", "p", "u", "c1"),
                                 env=env)).code == 0
        context = tls.client_context()
        context.check_hostname = False
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as http:
            headers = {"Authorization": "Bearer node-token-0123456789abcdef"}
            async with http.post(f"{svc.url}/v1/pools", json={"name": "p", "range": "02:00:00:00:00:00-02:00:00:00:00:ff"},
                                 headers=headers) as r:
                assert r.status == 403 and "needs the admin role" in (await r.json())["error"]["message"]
            async with http.delete(f"{svc.url}/v1/networks/secure", headers=headers) as r:
                assert r.status == 403
        wrong = {**json.loads(node.read_text()), "tls_server_name": "someone-else.example"}
        node.write_text(json.dumps(wrong))
        refused = await run_plugin(cni_path, "ipam-cni", "ADD", conf, container="c2", args=pod_args("t", "q", "v", "c2"),
                                   env=env)
        assert refused.answer["code"] == 11 and "certificate" in refused.answer["msg"], refused


def test_the_installer_writes_the_plugin_and_the_node_files(tmp_path, monkeypatch):
    account = tmp_path / "sa"
    account.mkdir()
    (account / "token").write_text("sa-token")
    (account / "ca.crt").write_text("cluster-ca")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    plugin = install.install_plugin(str(tmp_path / "bin"), "/usr/bin/python3 -I")
    node_file_path = install.write_node_files(str(tmp_path / "host-etc"), "/etc/cni/net.d", "https://localhost:8080",
                                              service_account=account)
    node = json.loads(node_file_path.read_text())
    assert node["url"] == "https://127.0.0.1:8080" and node["tls_server_name"] == "localhost"
    assert node["token_file"] == "/etc/cni/net.d/ipam-cni.d/token"  # as the node sees it
    assert (tmp_path / "host-etc/ipam-cni.d/token").read_text() == "sa-token"
    assert oct(node_file_path.stat().st_mode & 0o777) == "0o600"
    kube = json.loads((tmp_path / "host-etc/ipam-cni.d/ipam-cni.kubeconfig").read_text())
    assert kube["clusters"][0]["cluster"]["server"] == "https://10.96.0.1:443"
    assert os.access(plugin, os.X_OK)
    version = subprocess.run([str(plugin)], input='{"cniVersion": "1.0.0"}', env={"CNI_COMMAND": "VERSION"},
                             capture_output=True, text=True)
    assert json.loads(version.stdout)["supportedVersions"][-1] == "1.1.0", version.stderr


async def test_check_compares_the_container_with_its_lease_and_runtime_ips_are_static(cni_path, ipam):
    network = unique("chk-")
    conf = {"cniVersion": "1.0.0", "name": network, "ipam": {"type": "ipam-cni", "range": "10.86.0.0/24"}}
    asked = {**conf, "runtimeConfig": {"ips": ["10.86.0.77/24"]}}  # Multus passes an element's "ips" so
    added = await run_plugin(cni_path, "ipam-cni", "ADD", asked, container="c1", args=pod_args("t", "chk", "u1", "c1"),
                             env=ipam.env)
    assert added.ips == {"10.86.0.77/24"}, added
    checked = await run_plugin(cni_path, "ipam-cni", "CHECK", {**conf, "prevResult": added.answer}, container="c1",
                               args=pod_args("t", "chk", "u1", "c1"), env=ipam.env)
    assert checked.code == 0 and checked.answer is None, checked
    stale = {**conf, "prevResult": {**added.answer, "ips": [{"address": "10.86.0.99/24"}]}}
    wrong = await run_plugin(cni_path, "ipam-cni", "CHECK", stale, container="c1", args=pod_args("t", "chk", "u1", "c1"),
                             env=ipam.env)
    assert wrong.answer["code"] == 3 and "10.86.0.77" in wrong.answer["msg"], wrong
    assert (await run_plugin(cni_path, "ipam-cni", "DEL", conf, container="c1", args=pod_args("t", "chk", "u1", "c1"),
                             env=ipam.env)).code == 0
    gone = await run_plugin(cni_path, "ipam-cni", "CHECK", {**conf, "prevResult": added.answer}, container="c1",
                            args=pod_args("t", "chk", "u1", "c1"), env=ipam.env)
    assert gone.answer["code"] == 3 and "holds nothing" in gone.answer["msg"], gone
    collected = await run_plugin(cni_path, "ipam-cni", "GC", {**conf, "cniVersion": "1.1.0",
                                                               "cni.dev/valid-attachments": []}, container="", env=ipam.env)
    assert collected.code == 0 and collected.answer is None
