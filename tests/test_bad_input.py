"""Bad input gets a 4xx naming the field (REST) or exit code 2 with a one-line reason (CLI);
the service keeps serving and nothing is written."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import asyncpg
import pytest

GOOD = {"namespace": "ns", "vm": "vm", "vm_uid": "uid", "interface": "eth0"}


async def call(http, method, url, **kw):
    async with http.request(method, url, **kw) as r:
        body = await r.json(content_type=None)
        return r.status, body


@pytest.fixture(scope="module")
async def with_pool(shared_service):
    import aiohttp

    async with aiohttp.ClientSession() as http:
        status, _ = await call(http, "POST", f"{shared_service.url}/v1/pools",
                               json={"name": "p", "range": "02:00:00:00:00:00-02:00:00:00:ff:ff", "default": True})
    assert status == 201
    return shared_service


@pytest.mark.parametrize("body,status,field,words", [
    ({**GOOD, "mac": "02:00:00:00:00"}, 400, "mac", "not a MAC address"),
    ({**GOOD, "mac": "01:00:5e:00:00:01"}, 400, "mac", "multicast"),
    ({**GOOD, "mac": "ff:ff:ff:ff:ff:ff"}, 400, "mac", "broadcast"),
    ({**GOOD, "mac": "00:00:00:00:00:00"}, 400, "mac", "all-zero"),
    ({**GOOD, "pool": "nope"}, 404, "pool", "does not exist"),
    ({k: v for k, v in GOOD.items() if k != "vm_uid"}, 400, "vm_uid", "missing required field"),
    ({**GOOD, "namespace": 7}, 400, "namespace", "Expected `str`"),
    ({**GOOD, "interface": ""}, 400, "interface", "length"),
    ({**GOOD, "colour": "red"}, 400, "colour", "unknown field"),
    ({**GOOD, "mac": "52:54:00:00:00:01"}, 422, "mac", "outside every pool"),
])
async def test_bad_lease_requests(with_pool, http, body, status, field, words):
    got, answer = await call(http, "POST", f"{with_pool.url}/v1/mac-leases", json=body)
    assert got == status, answer
    assert answer["error"]["field"] == field and words in answer["error"]["message"]


@pytest.mark.parametrize("body,status,field,words", [
    ({"name": "q", "range": "02:00:00:00:00:10-02:00:00:00:00:20"}, 409, "range", "overlaps pool 'p'"),
    ({"name": "p", "range": "0a:00:00:00:00:00-0a:00:00:00:00:20"}, 409, "name", "already exists"),
    ({"name": "q", "range": "0a:00:00:00:00:20-0a:00:00:00:00:00"}, 400, "range", "after its end"),
    ({"name": "q", "range": "garbage"}, 400, "range", "not a range"),
    ({"name": "q"}, 400, "range", "required"),
    ({"name": "Bad_Name", "range": "0a:00:00:00:00:00-0a:00:00:00:00:20"}, 400, "name", "lower-case"),
    ({"name": "q", "range": "0a:00:00:00:00:00-0a:00:00:00:00:20", "default": True}, 409, "default", "already the default"),
    ({"range": "0a:00:00:00:00:00-0a:00:00:00:00:20"}, 400, "name", "missing required field"),
])
async def test_bad_pool_requests(with_pool, http, body, status, field, words):
    got, answer = await call(http, "POST", f"{with_pool.url}/v1/pools", json=body)
    assert got == status, answer
    assert answer["error"]["field"] == field and words in answer["error"]["message"]


async def test_oversized_and_malformed_bodies_then_service_still_serves(with_pool, http):
    base = with_pool.url
    status, answer = await call(http, "POST", f"{base}/v1/mac-leases", data=b"{" + b" " * (1024 * 1024 + 10) + b"}",
                                headers={"Content-Type": "application/json"})
    assert status == 413 and answer["error"]["field"] == "body"
    status, answer = await call(http, "POST", f"{base}/v1/mac-leases", data=b"{not json",
                                headers={"Content-Type": "application/json"})
    assert status == 400 and answer["error"]["field"] == "body"
    status, answer = await call(http, "GET", f"{base}/v1/mac-leases", params={"limit": "0"})
    assert status == 400 and answer["error"]["field"] == "limit"
    status, answer = await call(http, "DELETE", f"{base}/v1/macs/zz")
    assert status == 400 and answer["error"]["field"] == "mac"
    conn = await asyncpg.connect(with_pool.cfg.database_url)
    try:
        before = await conn.fetchval("SELECT count(*) FROM ipam.mac_leases")
        status, answer = await call(http, "POST", f"{base}/v1/mac-leases", json={**GOOD, "vm": "after-bad-input"})
        assert status == 201
        assert await conn.fetchval("SELECT count(*) FROM ipam.mac_leases") == before + 1
    finally:
        await conn.close()


async def test_a_vm_holds_at_most_max_interfaces_leases(with_pool, http):
    url = f"{with_pool.url}/v1/mac-leases"
    most = with_pool.cfg.max_interfaces
    wide = {**GOOD, "vm": "wide", "vm_uid": "wide-uid"}
    answers = await asyncio.gather(*[call(http, "POST", url, json={**wide, "interface": f"if{i}"}) for i in range(most)])
    assert [status for status, _ in answers] == [201] * most
    status, answer = await call(http, "POST", url, json={**wide, "interface": "one-too-many"})
    assert status == 422 and answer["error"]["field"] == "interface" and "IPAM_MAX_INTERFACES" in answer["error"]["message"]
    status, _ = await call(http, "POST", url, json={**wide, "interface": "if0"})  # interfaces it holds are answered
    assert status == 200


async def test_an_idempotency_key_reused_for_another_kind_of_request_is_refused(with_pool, http):
    key = {"Idempotency-Key": "reused-key-1"}
    status, first = await call(http, "POST", f"{with_pool.url}/v1/mac-leases", json={**GOOD, "vm": "reuse"}, headers=key)
    assert status == 201
    status, again = await call(http, "POST", f"{with_pool.url}/v1/mac-leases", json={**GOOD, "vm": "reuse"}, headers=key)
    assert status == 201 and again["lease"] == first["lease"]  # a retry gets the same outcome
    network = {"name": "n1", "subnets": [{"cidr": "10.1.0.0/24"}]}
    status, answer = await call(http, "POST", f"{with_pool.url}/v1/networks", json=network,
                                headers=key)
    assert status == 422 and answer["error"]["code"] == "key_reused" and answer["error"]["field"] == "Idempotency-Key"


def cli(*args, url):
    return subprocess.run([sys.executable, "-m", "ipam", "--url", url, *args], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("args,words", [
    (["lease", "--namespace", "ns", "--vm", "v", "--vm-uid", "u", "--interface", "e", "--mac", "02:00"], "--mac"),
    (["lease", "--namespace", "ns", "--vm", "v", "--vm-uid", "u", "--interface", "e", "--mac", "01:00:5e:00:00:01"], "multicast"),
    (["lease", "--namespace", "ns", "--vm", "v", "--interface", "e"], "--vm-uid"),
    (["lease", "--namespace", "ns", "--vm", "v", "--vm-uid", "u", "--interface", "e", "--pool", "nope"],
     "pool: pool 'nope' does not exist"),
    (["pool", "create", "q", "--range", "02:00:00:00:00:10-02:00:00:00:00:20"], "range: range"),
    (["pool", "create", "q", "--range", "nonsense"], "--range"),
    (["pool", "create", "q"], "--range"),
    (["release", "ns"], "NAMESPACE VM"),
])
async def test_cli_bad_input_exits_2_with_one_line(with_pool, args, words):
    result = await asyncio.to_thread(cli, *args, url=with_pool.url)
    assert result.returncode == 2, result
    assert words in result.stderr
    assert "Traceback" not in result.stderr


async def test_cli_round_trip(with_pool):
    result = await asyncio.to_thread(cli, "--json", "lease", "--namespace", "ns", "--vm", "v", "--vm-uid", "u",
                                     "--interface", "eth0", url=with_pool.url)
    assert result.returncode == 0, result.stderr
    import json

    mac = json.loads(result.stdout)["lease"]["mac"]
    listed = await asyncio.to_thread(cli, "leases", "--namespace", "ns", url=with_pool.url)
    assert listed.returncode == 0 and mac in listed.stdout
    released = await asyncio.to_thread(cli, "release", "--mac", mac.upper(), url=with_pool.url)
    assert released.returncode == 0 and mac in released.stdout
    pools = await asyncio.to_thread(cli, "pool", "list", url=with_pool.url)
    assert pools.returncode == 0 and "02:00:00:00:00:00-02:00:00:00:ff:ff" in pools.stdout
