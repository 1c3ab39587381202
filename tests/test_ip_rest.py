"""IP leasing end to end over REST on the real broker and Postgres: exhaustion under concurrency,
dual-stack, stickiness, static requests, network changes refused while leases sit outside them,
and a rebuild from the ledger equal to the live tables."""

from __future__ import annotations

import asyncio
import ipaddress
import json

import asyncpg
import pytest

from ipam.adapters.postgres.codecs import connect
from ipam.adapters.postgres.rebuild import rebuild

from .test_bad_input import cli

EXCLUDED = ["10.30.0.1", "10.30.0.2", "10.30.0.3", "10.30.0.10", "10.30.0.20", "10.30.0.21", "10.30.0.22", "10.30.0.100",
            "10.30.0.200", "10.30.0.254"]


async def call(http, method, url, body=None):
    async with http.request(method, url, json=body) as r:
        return r.status, await r.json()


def owner(i: int, iface: str = "eth1", ns: str = "ns-ip") -> dict:
    return {"namespace": ns, "vm": f"vm-{i}", "vm_uid": f"uid-{i}", "interface": iface}


async def test_a_slash_24_with_ten_exclusions_gives_exactly_the_free_addresses_then_a_clear_error(service, http):
    base = service.url
    # gateway .1 is one of the ten exclusions (written as the gateway), the other nine are explicit
    status, net = await call(http, "POST", f"{base}/v1/networks", {
        "name": "lab", "subnets": [{"cidr": "10.30.0.0/24", "gateway": "10.30.0.1", "exclude": EXCLUDED[1:]}],
        "dns": ["10.30.0.53"]})
    assert status == 201, net
    assert net["subnets"][0]["size"] == 254 - 10 and net["dns"] == ["10.30.0.53"]
    gate = asyncio.Semaphore(100)

    async def one(i):
        async with gate:
            return await call(http, "POST", f"{base}/v1/ip-leases", {"network": "lab", **owner(i)})

    results = await asyncio.gather(*[one(i) for i in range(260)])
    granted = [b["leases"][0]["address"] for s, b in results if s == 201]
    refused = [b for s, b in results if s != 201]
    expected = {str(a) for a in ipaddress.ip_network("10.30.0.0/24").hosts()} - set(EXCLUDED)
    assert len(granted) == len(set(granted)) == 244
    assert set(granted) == expected
    assert len(refused) == 16
    for body in refused:
        assert body["error"]["code"] == "exhausted" and "'lab'" in body["error"]["message"], body
    # sticky: asking again returns the same address, 200
    first = next(b for s, b in results if s == 201)
    again_owner = {k: first["leases"][0][k] for k in ("namespace", "vm", "vm_uid", "interface")}
    status, again = await call(http, "POST", f"{base}/v1/ip-leases", {"network": "lab", **again_owner})
    assert status == 200 and again["existing"] and again["leases"][0]["address"] == first["leases"][0]["address"]
    status, usage = await call(http, "GET", f"{base}/v1/networks/lab")
    assert usage["subnets"][0]["used"] == 244 and usage["subnets"][0]["free"] == 0


async def test_dual_stack_gets_one_of_each_and_static_requests_name_the_holder(service, http):
    base = service.url
    status, net = await call(http, "POST", f"{base}/v1/networks", {
        "name": "dual", "subnets": [{"cidr": "192.168.50.0/24", "gateway": "192.168.50.1"},
                                    {"cidr": "fd00:50::/64", "gateway": "fd00:50::1", "exclude": ["fd00:50::/120"]}]})
    assert status == 201, net
    # the /64 minus the excluded /120 (which holds the anycast address and the gateway)
    assert net["subnets"][1]["size"] == 2 ** 64 - 256
    status, body = await call(http, "POST", f"{base}/v1/ip-leases", {"network": "dual", **owner(1)})
    assert status == 201, body
    got = {ipaddress.ip_address(lease["address"]).version: lease for lease in body["leases"]}
    assert set(got) == {4, 6}
    assert got[4]["prefix_length"] == 24 and got[6]["prefix_length"] == 64
    assert got[4]["gateway"] == "192.168.50.1" and got[6]["gateway"] == "fd00:50::1"  # from the lease event
    status, again = await call(http, "POST", f"{base}/v1/ip-leases", {"network": "dual", **owner(1)})
    assert status == 200 and {x["address"]: x["gateway"] for x in again["leases"]} == \
        {x["address"]: x["gateway"] for x in body["leases"]}  # asked again: the same, gateways included
    assert ipaddress.ip_address(got[6]["address"]) not in ipaddress.ip_network("fd00:50::/120")
    status, body = await call(http, "POST", f"{base}/v1/ip-leases",
                              {"network": "dual", **owner(2), "addresses": [got[4]["address"]]})
    assert status == 409 and body["error"]["code"] == "held" and "ns-ip/vm-1" in body["error"]["message"]
    # an address with a zone is refused, not leased without it
    status, body = await call(http, "POST", f"{base}/v1/ip-leases",
                              {"network": "dual", **owner(3), "addresses": ["fd00:50::abd%eth0"]})
    assert status == 400 and body["error"]["field"] == "addresses[0]" and "zone" in body["error"]["message"], body
    status, body = await call(http, "POST", f"{base}/v1/ip-leases",
                              {"network": "dual", **owner(2), "addresses": ["192.168.50.1"]})
    assert status == 422 and body["error"]["code"] == "unusable" and body["error"]["field"] == "addresses[0]"
    assert "gateway" in body["error"]["message"]
    status, body = await call(http, "POST", f"{base}/v1/ip-leases",
                              {"network": "dual", **owner(2), "addresses": ["192.168.50.77", "fd00:50::77:1"]})
    assert status == 201 and {x["address"] for x in body["leases"]} == {"192.168.50.77", "fd00:50::77:1"}
    status, body = await call(http, "POST", f"{base}/v1/ip-leases", {"network": "dual", **owner(3), "addresses": ["bogus"]})
    assert status == 400 and body["error"]["field"] == "addresses[0]"
    status, body = await call(http, "POST", f"{base}/v1/ip-leases", {"network": "nowhere", **owner(3)})
    assert status == 404 and body["error"]["code"] == "unknown_network"

    # a change that would leave a lease outside is refused with the lease named
    status, body = await call(http, "PUT", f"{base}/v1/networks/dual", {"subnets": [{"cidr": "192.168.51.0/24"}]})
    assert status == 409 and body["error"]["code"] == "in_use" and "192.168.50.77" in body["error"]["message"]
    status, body = await call(http, "PUT", f"{base}/v1/networks/dual", {
        "subnets": [{"cidr": "192.168.50.0/24", "gateway": "192.168.50.1", "exclude": ["192.168.50.200-192.168.50.250"]},
                    {"cidr": "fd00:50::/64", "gateway": "fd00:50::1", "exclude": ["fd00:50::/120"]}], "dns": ["fd00:50::53"]})
    assert status == 200 and body["dns"] == ["fd00:50::53"]
    status, body = await call(http, "DELETE", f"{base}/v1/networks/dual")
    assert status == 409 and body["error"]["code"] == "in_use"

    # release: quarantined, listed, gone; then the network can go
    status, body = await call(http, "DELETE", f"{base}/v1/ip-leases/dual/ns-ip/vm-1")
    assert status == 200 and len(body["released"]) == 2
    status, body = await call(http, "DELETE", f"{base}/v1/ips/dual/192.168.50.77")
    assert status == 200 and body["released"][0]["vm"] == "vm-2"
    status, body = await call(http, "GET", f"{base}/v1/ip-leases?network=dual")
    assert [x["address"] for x in body["leases"]] == ["fd00:50::77:1"]
    await call(http, "DELETE", f"{base}/v1/ip-leases/dual/ns-ip/vm-2")
    status, body = await call(http, "DELETE", f"{base}/v1/networks/dual")
    assert status == 200, body

    conn = await connect(service.cfg.database_url)
    try:
        report = await rebuild(conn)
        assert report.equal, report.differences
        history = await conn.fetch("SELECT what FROM ipam.history WHERE network = 'dual' ORDER BY id")
        whats = [r["what"] for r in history]
        assert whats[0] == "network created" and "network changed" in whats and whats[-1] == "network deleted"
    finally:
        await conn.close()


async def test_bad_network_definitions_name_the_field(service, http):
    base = service.url
    cases = [
        ({"name": "x", "subnets": [{"cidr": "10.0.0.1/24"}]}, "subnets[0].cidr", "did you mean 10.0.0.0/24"),
        ({"name": "x", "subnets": []}, "subnets", None),
        ({"name": "x", "subnets": [{"cidr": "10.0.0.0/24", "gateway": "10.9.9.9"}]}, "subnets[0].gateway", "outside"),
        ({"name": "x", "subnets": [{"cidr": "10.0.0.0/24"}], "attachments": ["no-slash"]}, "attachments[0]", None),
        ({"name": "Bad_Name", "subnets": [{"cidr": "10.0.0.0/24"}]}, "name", None),
        ({"name": "x", "subnets": [{"cidr": "10.0.0.0/24", "bogus": 1}]}, None, "bogus"),
        # Whereabouts reads this as 192.168.1.0/24, other tools as octal: refused, saying why and what to write
        ({"name": "x", "subnets": [{"cidr": "00192.00168.1.0/24"}]}, "subnets[0].cidr",
         "leading zeroes are ambiguous (octal to some tools, decimal to others); write 192.168.1.0/24"),
        ({"name": "x", "subnets": [{"cidr": "10.0.0.0/24", "exclude": ["10.0.0.010"]}]}, "subnets[0].exclude[0]",
         "leading zeroes are ambiguous"),
    ]
    for body, field, words in cases:
        status, answer = await call(http, "POST", f"{base}/v1/networks", body)
        assert status == 400, (body, answer)
        if field:
            assert answer["error"]["field"] == field, (body, answer)
        if words:
            assert words in answer["error"]["message"], (body, answer)
    async with asyncpg.create_pool(service.cfg.database_url) as db:
        assert await db.fetchval("SELECT count(*) FROM ipam_store.networks") == 0


@pytest.mark.parametrize("args,words", [
    (["network", "create", "n1", "--subnet", "10.0.0.1/24"], "--subnet: 10.0.0.1/24 has host bits set"),
    (["network", "create", "n1", "--subnet", "10.0.0.0/24", "--gateway", "10.1.0.1"], "--gateway: 10.1.0.1 is in none"),
    (["network", "create", "n1", "--subnet", "10.0.0.0/24", "--exclude", "bogus"], "--exclude"),
    (["network", "create", "n1", "--subnet", "10.0.0.0/24", "--dns", "x"], "--dns"),
    (["network", "create", "Bad", "--subnet", "10.0.0.0/24"], "NAME"),
    (["network", "create", "n1"], "--subnet"),
    (["ip", "lease", "--network", "n", "--namespace", "ns", "--vm", "v", "--vm-uid", "u", "--interface", "e",
      "--address", "300.1.1.1"], "--address"),
    (["ip", "release", "n", "ns"], "NAMESPACE VM"),
    (["ip", "lease", "--network", "nope", "--namespace", "ns", "--vm", "v", "--vm-uid", "u", "--interface", "e"],
     "network 'nope' does not exist"),
])
async def test_cli_bad_ip_input_exits_2_naming_the_option(service, args, words):
    result = await asyncio.to_thread(cli, *args, url=service.url)
    assert result.returncode == 2, result
    assert words in result.stderr and "Traceback" not in result.stderr


async def test_cli_network_and_ip_round_trip(service):
    made = await asyncio.to_thread(cli, "--json", "network", "create", "cli-net", "--subnet", "10.50.0.0/29",
                                   "--subnet", "fd00:50::/64", "--gateway", "10.50.0.1", "--exclude", "10.50.0.2-10.50.0.3",
                                   "--dns", "10.50.0.53", url=service.url)
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["subnets"][0]["size"] == 6 - 3
    leased = await asyncio.to_thread(cli, "--json", "ip", "lease", "--network", "cli-net", "--namespace", "ns", "--vm", "v",
                                     "--vm-uid", "u", "--interface", "eth1", url=service.url)
    assert leased.returncode == 0, leased.stderr
    addresses = [x["address"] for x in json.loads(leased.stdout)["leases"]]
    assert len(addresses) == 2
    listed = await asyncio.to_thread(cli, "ip", "list", "--network", "cli-net", url=service.url)
    assert all(a in listed.stdout for a in addresses)
    networks = await asyncio.to_thread(cli, "network", "list", url=service.url)
    assert "10.50.0.0/29" in networks.stdout and "fd00:50::/64" in networks.stdout
    released = await asyncio.to_thread(cli, "ip", "release", "cli-net", "--address", addresses[0], url=service.url)
    assert released.returncode == 0 and addresses[0] in released.stdout
    refused = await asyncio.to_thread(cli, "network", "delete", "cli-net", url=service.url)
    assert refused.returncode == 2 and "still holds 1 lease" in refused.stderr


async def test_patch_changes_part_of_a_network_and_refuses_orphaning_a_lease(service, http):
    base = service.url
    status, _ = await call(http, "POST", f"{base}/v1/networks", {"name": "patched", "subnets": [{"cidr": "10.77.0.0/24"}],
                                                                 "attachments": ["prod/a-net"]})
    assert status == 201
    status, body = await call(http, "POST", f"{base}/v1/ip-leases", {"network": "patched", **owner(1),
                                                                     "addresses": ["10.77.0.200"]})
    assert status == 201, body
    status, net = await call(http, "PATCH", f"{base}/v1/networks/patched", {"dns": ["10.77.0.53"]})
    assert status == 200 and net["dns"] == ["10.77.0.53"] and net["attachments"] == ["prod/a-net"]
    assert [s["cidr"] for s in net["subnets"]] == ["10.77.0.0/24"]
    status, refused = await call(http, "PATCH", f"{base}/v1/networks/patched", {"subnets": [{"cidr": "10.77.0.0/25"}]})
    assert status == 409 and refused["error"]["code"] == "in_use" and "10.77.0.200" in refused["error"]["message"]
    assert (await call(http, "PATCH", f"{base}/v1/networks/nope", {"dns": []}))[0] == 404
    changed = await asyncio.to_thread(cli, "--json", "network", "change", "patched", "--no-dns", url=base)
    assert changed.returncode == 0 and json.loads(changed.stdout)["dns"] == [], changed.stderr


async def test_addresses_come_in_the_order_of_the_networks_subnets(service, http):
    """Whereabouts' and OVN-Kubernetes' cases: a network defined IPv6 first answers IPv6 first, in the lease
    answer, a repeat of it, the listing and the release; one defined IPv4 first answers IPv4 first."""
    base = service.url
    for name, subnets in (("six-first", ["abcd::/64", "192.168.10.0/24"]), ("four-first", ["192.168.11.0/24", "abce::/64"])):
        status, _ = await call(http, "POST", f"{base}/v1/networks", {"name": name, "subnets": [{"cidr": c} for c in subnets]})
        assert status == 201
        versions = [ipaddress.ip_network(c).version for c in subnets]
        status, body = await call(http, "POST", f"{base}/v1/ip-leases", {"network": name, **owner(1)})
        assert status == 201 and [ipaddress.ip_address(x["address"]).version for x in body["leases"]] == versions, body
        status, again = await call(http, "POST", f"{base}/v1/ip-leases", {"network": name, **owner(1)})
        assert [x["address"] for x in again["leases"]] == [x["address"] for x in body["leases"]], again
        status, listed = await call(http, "GET", f"{base}/v1/ip-leases?network={name}")
        assert [ipaddress.ip_address(x["address"]).version for x in listed["leases"]] == versions, listed
