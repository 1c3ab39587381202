"""Reservations on the real broker and Postgres, with the webhook over HTTPS and the watcher on the list/watch
test server: a MAC and an IP address set aside for a VM that does not exist yet are what it gets when
admitted; nobody else can have them meanwhile (the refusal names the reservation); a reservation shows in
REST, the CLI and psql, lapses when asked to, and can be released."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from .harness import confirmed_to, eventually, kubevirt_service, query
from .kube_api import FakeKubeApi
from .kubevirt import WebhookTls, apply, macs_of, review, vm_manifest
from .test_bad_input import cli
from .test_webhook import POOL, admit

ANNOTATION = "ipam.kubevirt.io/ip-addresses"


@pytest.fixture(scope="module")
async def kv(backends, tmp_path_factory):
    kube = await FakeKubeApi().start()
    await kube.put("namespaces", {"metadata": {"name": "prod"}})
    tls = WebhookTls(tmp_path_factory.mktemp("tls-reserve"))
    try:
        async with kubevirt_service(backends, kube.url, tls, (POOL,)) as svc, aiohttp.ClientSession() as http, \
                aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=tls.client_context())) as https:
            async with http.post(f"{svc.url}/v1/networks", json={"name": "blue", "subnets": [{"cidr": "10.80.0.0/24"}],
                                                                 "attachments": ["prod/blue-net"]}) as r:
                assert r.status == 201
            svc.http, svc.https, svc.kube = http, https, kube
            yield svc
    finally:
        await kube.stop()


async def post(http, url: str, body: dict) -> tuple[int, dict]:
    async with http.post(url, json=body) as r:
        return r.status, await r.json()


async def test_a_reserved_mac_and_address_are_what_the_vm_gets(kv):
    http, base = kv.http, kv.url
    status, mac = await post(http, f"{base}/v1/mac-reservations", {"namespace": "prod", "vm": "db", "interface": "default",
                                                                   "mac": "02:00:00:00:aa:01"})
    assert status == 201 and mac["lease"]["state"] == "reserved" and mac["lease"]["mac"] == "02:00:00:00:aa:01", mac
    status, ip = await post(http, f"{base}/v1/ip-reservations", {"network": "blue", "namespace": "prod", "vm": "db"})
    assert status == 201 and ip["leases"][0]["interface"] == "*", ip  # whichever interface of db asks
    address = ip["leases"][0]["address"]
    status, again = await post(http, f"{base}/v1/mac-reservations", {"namespace": "prod", "vm": "db", "interface": "default"})
    assert status == 200 and again["existing"] and again["lease"]["mac"] == "02:00:00:00:aa:01"

    # meanwhile nobody else gets them
    status, taken = await post(http, f"{base}/v1/mac-leases", {"namespace": "prod", "vm": "other", "vm_uid": "u",
                                                               "interface": "eth0", "mac": "02:00:00:00:aa:01"})
    assert status == 409 and "a reservation for prod/db interface default" in taken["error"]["message"], taken
    rows = await query(kv, "SELECT kind, address, interface, expires FROM ipam.reservations ORDER BY kind")
    assert [(r["kind"], r["address"], r["interface"], r["expires"]) for r in rows] == \
        [("ip", address, "*", None), ("mac", "02:00:00:00:aa:01", "default", None)]
    listed = await asyncio.to_thread(cli, "--json", "reservations", url=base)
    assert listed.returncode == 0 and "02:00:00:00:aa:01" in listed.stdout, listed.stderr

    # the VM is admitted: it gets both; then the watcher confirms them to its uid
    vm = vm_manifest("db", multus=("blue",))
    answer = await admit(kv.https, kv, review(vm))
    assert answer["allowed"] is True, answer
    created = apply(vm, answer)
    assert macs_of(created)["default"] == "02:00:00:00:aa:01"
    assert json.loads(created["metadata"]["annotations"][ANNOTATION]) == {"blue": [address]}
    assert await query(kv, "SELECT 1 FROM ipam.reservations") == []
    stored = await kv.kube.put("virtualmachines", created)
    await confirmed_to(kv.cfg.database_url, "ipam.ip_leases", "db", 1, stored["metadata"]["uid"])
    taken = await query(kv, "SELECT detail FROM ipam.history WHERE what = 'released' AND vm = 'db'")
    assert {r["detail"] for r in taken} == {"reservation-taken"}


async def test_a_reservation_lapses_when_asked_to_and_can_be_released(kv):
    http, base = kv.http, kv.url
    status, short = await post(http, f"{base}/v1/mac-reservations", {"namespace": "prod", "vm": "brief",
                                                                     "expires_in_seconds": 1})
    assert status == 201 and short["lease"]["pending_until"], short

    async def lapsed():
        return not await query(kv, "SELECT 1 FROM ipam.mac_leases WHERE vm = 'brief'")

    await eventually(lapsed, timeout=30)
    made = await asyncio.to_thread(cli, "--json", "reserve", "--namespace", "prod", "--vm", "keep", url=base)
    assert made.returncode == 0, made.stderr
    async with http.delete(f"{base}/v1/mac-reservations/prod/keep") as r:
        assert r.status == 200 and [x["vm"] for x in (await r.json())["released"]] == ["keep"]
    async with http.delete(f"{base}/v1/mac-reservations/prod/keep") as r:
        assert r.status == 404


async def test_a_lease_that_takes_a_reservation_answers_the_whole_address(kv):
    """A lease for the reserved VM binds the reservation; the answer is its confirmation, which must say what a
    client configures (it said prefix length 0: a CNI ADD configured the address as /0)."""
    http, base = kv.http, kv.url
    status, reserved = await post(http, f"{base}/v1/ip-reservations", {"network": "blue", "namespace": "prod", "vm": "web"})
    assert status == 201, reserved
    address = reserved["leases"][0]["address"]
    status, leased = await post(http, f"{base}/v1/ip-leases", {"network": "blue", "namespace": "prod", "vm": "web",
                                                               "vm_uid": "web-uid", "interface": "net1"})
    assert status == 201 and not leased["existing"], leased
    (lease,) = leased["leases"]
    assert (lease["address"], lease["prefix_length"], lease["vm_uid"], lease["state"]) == (address, 24, "web-uid",
                                                                                          "confirmed"), lease
