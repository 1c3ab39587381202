"""`ipam status` and `ipam events tail`, run as an operator runs them, against a live service."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

from .harness import eventually


def ipam(svc, *args: str, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "IPAM_KAFKA_BOOTSTRAP": svc.cfg.kafka_bootstrap, "IPAM_EVENTS_TOPIC": svc.cfg.events_topic,
           "IPAM_PARTITIONS": str(svc.cfg.partitions)}
    return subprocess.run([sys.executable, "-m", "ipam", "--url", svc.url, *args], env=env, capture_output=True, text=True,
                          timeout=120, **kw)


async def _setup(service, http) -> None:
    async with http.post(service.url + "/v1/pools", json={"name": "ops", "range": "02:70:00:00:00:00-02:70:00:00:00:0f",
                                                          "default": True}) as r:
        assert r.status == 201
    for i in range(3):
        async with http.post(service.url + "/v1/mac-leases", json={"namespace": "team", "vm": f"vm{i}", "vm_uid": f"u{i}",
                                                                   "interface": "eth0"}) as r:
            assert r.status == 201


async def test_status_shows_partitions_pools_and_what_waits(service, http):
    await _setup(service, http)

    async def settled():
        run = await asyncio.to_thread(ipam, service, "--json", "status")
        assert run.returncode == 0, run.stderr
        status = json.loads(run.stdout)
        return status if all(p["events_waiting"] == 0 and p["commands_waiting"] == 0 for p in status["partitions"]) else None

    status = await eventually(settled)
    assert status["broker"] is True
    assert [p["partition"] for p in status["partitions"]] == list(range(service.cfg.partitions))
    assert all(p["owner"] and p["caught_up"] and p["epoch"] >= 1 for p in status["partitions"])
    assert sum(p["events_end"] for p in status["partitions"]) >= 4  # PoolCreated + three MacLeased
    [pool] = status["pools"]
    assert (pool["name"], pool["used"], pool["size"]) == ("ops", 3, 16)
    assert status["pending"] == {"mac": 0, "ip": 0}
    human = await asyncio.to_thread(ipam, service, "status")
    assert human.returncode == 0 and "partitions" in human.stdout and "ops" in human.stdout and "18.8%" in human.stdout


async def test_events_tail_prints_the_topic_and_follows_it(service, http):
    await _setup(service, http)
    run = await asyncio.to_thread(ipam, service, "--json", "events", "tail", "-n", "100")
    assert run.returncode == 0, run.stderr
    records = [json.loads(line) for line in run.stdout.splitlines()]
    assert sorted(r["event"]["type"] for r in records) == ["MacLeased"] * 3 + ["PoolCreated"]
    assert all({"partition", "offset", "epoch", "seq"} <= set(r) for r in records)
    human = await asyncio.to_thread(ipam, service, "events", "tail")
    assert human.stdout.count("MacLeased") == 3 and "owner=team/vm0/eth0" in human.stdout and "pool=ops" in human.stdout

    env = {**os.environ, "IPAM_KAFKA_BOOTSTRAP": service.cfg.kafka_bootstrap, "IPAM_EVENTS_TOPIC": service.cfg.events_topic,
           "IPAM_PARTITIONS": str(service.cfg.partitions)}
    follower = await asyncio.create_subprocess_exec(sys.executable, "-m", "ipam", "events", "tail", "-n", "0", "--follow",
                                                    env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        await asyncio.sleep(2)  # let it reach the end of every partition
        async with http.delete(service.url + "/v1/mac-leases/team/vm1") as r:
            assert r.status == 200
        line = await asyncio.wait_for(follower.stdout.readline(), 20)
        assert b"MacReleased" in line and b"owner=team/vm1/eth0" in line
    finally:
        follower.terminate()
        await follower.wait()


async def test_operator_tools_refuse_bad_input_with_exit_2(service):
    run = await asyncio.to_thread(ipam, service, "events", "tail", "--partition", "99")
    assert run.returncode == 2 and "--partition: 99 is not a partition" in run.stderr
    run = await asyncio.to_thread(ipam, service, "events", "tail", "-n", "-1")
    assert run.returncode == 2 and "-n" in run.stderr
