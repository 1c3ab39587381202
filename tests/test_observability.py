"""What an operator sees: /metrics carries every series the alerts and the dashboard in deploy/ query,
and the JSON log names the command id, owner and partition on every line about a command.

One `ipam serve` child process (JSON logs at info, tokens required, the webhook over TLS) is driven
through each path that counts something: REST, a decider rejection, refused calls, a poison record,
an admission review."""

from __future__ import annotations

import json
import re

import aiohttp
import pytest
from aiokafka import AIOKafkaProducer

from ipam.adapters.kafka import partition_for

from .harness import ServiceProcess, eventually, make_config
from .kubevirt import WebhookTls, review, vm_manifest
from .test_deploy import alert_rules, dashboard_targets

ADMIN, READER = "obs-admin-0123456789", "obs-reader-0123456789"
METRIC = re.compile(r"\b(ipam_[a-z_]+)")


@pytest.fixture(scope="module")
async def observed(backends, tmp_path_factory):
    from .harness import create_database, drop_database

    folder = tmp_path_factory.mktemp("observed")
    tls = WebhookTls(folder)
    (folder / "tokens").write_text(f"{ADMIN} admin ops\n{READER} reader prometheus\n")
    dsn = await create_database(backends.postgres_dsn)
    cfg = make_config(backends.kafka_bootstrap, dsn, log_level="info", partitions=2)
    proc = ServiceProcess(cfg, log_path=str(folder / "ipam.log"), extra_env={
        "IPAM_TOKEN_FILE": str(folder / "tokens"), "IPAM_TLS_CERT_FILE": str(tls.cert_file),
        "IPAM_TLS_KEY_FILE": str(tls.key_file), "IPAM_WEBHOOK_ADDR": "127.0.0.1:0"}).start()
    try:
        await proc.wait_ready()
        await drive(proc, tls)
        yield proc
    finally:
        proc.terminate()
        await drop_database(backends.postgres_dsn, dsn)


async def drive(proc: ServiceProcess, tls: WebhookTls) -> None:
    admin = {"Authorization": f"Bearer {ADMIN}"}
    async with aiohttp.ClientSession(headers=admin) as http:
        pool = {"name": "obs", "range": "02:40:00:00:00:00-02:40:00:00:00:ff", "namespaces": ["prod", "team"]}
        async with http.post(proc.url + "/v1/pools", json=pool) as r:
            assert r.status == 201, await r.text()
        owner = {"namespace": "team", "vm": "a", "vm_uid": "ua", "interface": "eth0"}
        async with http.post(proc.url + "/v1/mac-leases", json={**owner, "mac": "02:40:00:00:00:07"}) as r:
            assert r.status == 201
        async with http.post(proc.url + "/v1/mac-leases", json={**owner, "vm": "b", "vm_uid": "ub", "mac": "02:40:00:00:00:07",
                                                                  "command_id": "obs-held-1"}) as r:
            assert r.status == 409  # held by team/a: a decider rejection
        async with http.post(proc.url + "/v1/networks", json={"name": "obs-net", "subnets": [{"cidr": "10.8.0.0/30"}]}) as r:
            assert r.status == 201
        async with http.post(proc.url + "/v1/ip-leases", json={**owner, "network": "obs-net"}) as r:
            assert r.status == 201
    async with aiohttp.ClientSession() as anonymous:
        async with anonymous.get(proc.url + "/v1/pools") as r:
            assert r.status == 401
        async with anonymous.post(proc.url + "/v1/pools", json=pool, headers={"Authorization": f"Bearer {READER}"}) as r:
            assert r.status == 403
    producer = AIOKafkaProducer(bootstrap_servers=proc.cfg.kafka_bootstrap, enable_idempotence=False)
    await producer.start()
    try:  # a poison command: dead-lettered, the partition goes on
        await producer.send_and_wait(proc.cfg.commands_topic, b"\x00not a command", partition=partition_for("obs", 2))
    finally:
        await producer.stop()
    webhook = _webhook_url(proc)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=tls.client_context())) as https:
        async with https.post(webhook, json=review(vm_manifest("obs-vm", "prod", multus=()))) as r:
            assert r.status == 200 and (await r.json())["response"]["allowed"]


def _webhook_url(proc: ServiceProcess) -> str:
    for line in open(proc.log_path):
        if "serving the admission webhook" in line:
            return json.loads(line)["url"]
    raise AssertionError("the service did not log its webhook address")


def log_lines(proc: ServiceProcess) -> list[dict]:
    lines = [line for line in open(proc.log_path).read().splitlines() if line.strip()]
    return [json.loads(line) for line in lines]  # every line is one JSON object


async def scrape(proc: ServiceProcess) -> str:
    async with aiohttp.ClientSession() as http:
        async with http.get(proc.url + "/metrics", headers={"Authorization": f"Bearer {READER}"}) as r:
            assert r.status == 200
            return await r.text()


async def test_every_series_the_alerts_and_dashboard_query_is_exported(observed):
    async def complete():
        text = await scrape(observed)
        return text if "ipam_dead_letters_total{" in text and "ipam_consumer_lag{" in text else None

    text = await eventually(complete)
    exported = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}
    queried = {m for expr in [r["expr"] for r in alert_rules()] + [t["expr"] for t in dashboard_targets()]
               for m in METRIC.findall(expr)}
    assert queried and queried <= exported, sorted(queried - exported)


async def test_counters_count_what_happened(observed):
    text = await eventually(lambda: _has(observed, 'ipam_dead_letters_total{topic='))
    assert re.search(r'ipam_rejections_total\{code="held"\} 1\.0', text)
    assert re.search(r'ipam_auth_failures_total\{reason="missing"\} 1\.0', text)
    assert re.search(r'ipam_auth_failures_total\{reason="forbidden"\} 1\.0', text)
    assert re.search(r'ipam_webhook_reviews_total\{result="allowed"\} 1\.0', text)
    assert re.search(r'ipam_http_requests_total\{method="POST",route="/v1/mac-leases",status="409"\} 1\.0', text)
    assert 'ipam_http_request_duration_seconds_bucket{le="0.005",method="POST",route="/v1/pools"}' in text
    assert re.search(r'ipam_pool_used_ratio\{pool="obs"\} 0\.0\d+', text)


async def _has(proc, needle: str) -> str | None:
    text = await scrape(proc)
    return text if needle in text else None


async def test_log_lines_about_a_command_name_it_its_owner_and_partition(observed):
    async def rejected():
        return [line for line in log_lines(observed) if line["event"] == "command rejected"]

    [line] = await eventually(rejected)
    assert line["command_id"] == "obs-held-1" and line["command"] == "LeaseMac" and line["code"] == "held"
    assert line["owner"] == "team/b/eth0" and line["pool"] == "obs"
    assert line["partition"] == partition_for("obs", 2) and isinstance(line["offset"], int)
    assert line["level"] == "info" and line["timestamp"].endswith("Z")

    async def poison():
        return [line for line in log_lines(observed) if line["event"].startswith("poison command")]

    [line] = await eventually(poison)
    assert line["partition"] == partition_for("obs", 2) and line["command_id"] and "offset" in line
