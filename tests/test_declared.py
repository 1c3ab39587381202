"""Pools and networks declared in a file (IPAM_CONFIG_FILE), on the real broker and Postgres: made on start,
changed within a poll of an edit, never deleted unless ``delete:`` says so; a refused change (a shrink that
would orphan a lease) is logged, shown in /v1/status and counted, and the rest of the file still applies;
a broken file changes nothing and says why."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from ipam.api.declared import ConfigError, parse
from ipam.service import Service

from .harness import eventually
from .test_pool_changes import call, lease

POOL = {"name": "cluster", "range": "02:00:00:00:00:00-02:00:00:00:00:ff", "default": True}
NET = {"name": "blue", "subnets": [{"cidr": "10.70.0.0/24", "gateway": "10.70.0.1"}], "attachments": ["prod/blue-net"]}


def write(path: Path, **declared) -> None:
    path.write_text(yaml.safe_dump(declared))


async def test_a_declared_file_is_applied_on_start_and_followed(config, http, tmp_path):
    path = tmp_path / "ipam.yaml"
    write(path, pools=[POOL], networks=[NET])
    cfg = dataclasses.replace(config, config_file=str(path), config_poll_seconds=0.3)
    async with Service(cfg) as svc:
        await svc.wait_ready()  # ready means reconciled: a fresh install admits VMs at once
        status, pools = await call(http, "GET", f"{svc.url}/v1/pools")
        assert [(p["name"], p["size"], p["default"]) for p in pools["pools"]] == [("cluster", 256, True)]
        status, net = await call(http, "GET", f"{svc.url}/v1/networks/blue")
        assert status == 200 and net["attachments"] == ["prod/blue-net"] and net["source"] == "config"
        assert (await lease(http, svc.url, "vm-1", mac="02:00:00:00:00:f0"))[0] == 201

        # an edit: the pool grows and binds a namespace, the network gains DNS, a second pool appears
        write(path, pools=[{**POOL, "range": "02:00:00:00:00:00-02:00:00:00:01:ff", "namespaces": ["prod"]},
                           {"name": "lab", "range": "0a:00:00:00:00:00-0a:00:00:00:00:0f"}],
              networks=[{**NET, "dns": ["10.70.0.53"]}])

        async def edited():
            pools = (await call(http, "GET", f"{svc.url}/v1/pools"))[1]["pools"]
            net = (await call(http, "GET", f"{svc.url}/v1/networks/blue"))[1]
            return [(p["name"], p["size"], p["namespaces"]) for p in pools] == [("cluster", 512, ["prod"]), ("lab", 16, [])] \
                and net["dns"] == ["10.70.0.53"]

        await eventually(edited, timeout=15)

        # a shrink below a live lease is refused and reported; the entry after it still applies; nothing deleted
        write(path, pools=[{**POOL, "range": "02:00:00:00:00:00-02:00:00:00:00:0f"},
                           {"name": "lab", "range": "0a:00:00:00:00:00-0a:00:00:00:00:1f"}])

        async def refused():
            config = (await call(http, "GET", f"{svc.url}/v1/status"))[1]["config"]
            lab = [p for p in (await call(http, "GET", f"{svc.url}/v1/pools"))[1]["pools"] if p["name"] == "lab"]
            return config["refusals"] and lab[0]["size"] == 32 and config

        config_status = await eventually(refused, timeout=15)
        (refusal,) = config_status["refusals"]
        assert refusal["entry"] == "pools[0] (cluster)" and refusal["code"] == "in_use" and "ns/vm-1" in refusal["reason"]
        async with http.get(f"{svc.url}/metrics") as r:
            assert "ipam_config_refusals 1.0" in await r.text()
        assert (await call(http, "GET", f"{svc.url}/v1/networks/blue"))[0] == 200  # left out of the file: kept

        # once the lease is gone the same entry applies at a later poll
        async with http.delete(f"{svc.url}/v1/mac-leases/ns/vm-1") as r:
            assert r.status == 200

        async def shrunk():
            pools = (await call(http, "GET", f"{svc.url}/v1/pools"))[1]["pools"]
            return [p["size"] for p in pools if p["name"] == "cluster"] == [16]

        await eventually(shrunk, timeout=15)

        # delete: only what the file names; a broken file changes nothing and says why
        write(path, pools=[POOL], delete={"pools": ["lab"], "networks": ["blue"]})

        async def deleted():
            pools = (await call(http, "GET", f"{svc.url}/v1/pools"))[1]["pools"]
            return [p["name"] for p in pools] == ["cluster"] and \
                (await call(http, "GET", f"{svc.url}/v1/networks/blue"))[0] == 404

        await eventually(deleted, timeout=15)
        path.write_text("pools:\n  - name: cluster\n    range: 7\n")

        async def broken():
            config = (await call(http, "GET", f"{svc.url}/v1/status"))[1]["config"]
            return config["error"] and config

        error = (await eventually(broken, timeout=15))["error"]
        assert "pools[0].range" in error and "str" in error, error
        assert [p["name"] for p in (await call(http, "GET", f"{svc.url}/v1/pools"))[1]["pools"]] == ["cluster"]


@pytest.mark.parametrize("text, words", [
    ("pools: [{name: a, rnage: x}]", "rnage"),
    ("networks: [{name: n, subnets: [{cidr: 10.0.0.0/24, gateway: [1]}]}]", "networks[0].subnets[0].gateway"),
    ("pools: {name: a}", "pools"),
    ("delete: {pools: [1]}", "delete.pools[0]"),
    ("pools: [a: b: c]", "not YAML"),
])
def test_a_bad_file_names_the_entry_and_field(text, words):
    with pytest.raises(ConfigError) as e:
        parse(text)
    assert words in str(e.value)
