"""A pool or network that exists for REST exists for the webhook in the same instant, whatever
replica answers: 200 rounds of "create a network on one API replica, at once admit a VM on it
through the other", on the real broker and Postgres.  Not one VM may be allowed without its
address (the silent skip this guards against: a cached catalogue that did not know the network yet).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json

import aiohttp
import pytest

from ipam.service import Service

from .harness import kubevirt_service
from .kube_api import FakeKubeApi
from .kubevirt import WebhookTls, apply, review, vm_manifest
from .test_webhook import admit

ROUNDS = 200
ANNOTATION = "ipam.kubevirt.io/ip-addresses"


@pytest.fixture(scope="module")
async def replicas(backends, tmp_path_factory):
    """Two API replicas on one database and broker: the first with the partition roles, the second API only."""
    kube = await FakeKubeApi().start()
    await kube.put("namespaces", {"metadata": {"name": "prod"}})
    tls = WebhookTls(tmp_path_factory.mktemp("tls-ryw"))
    pool = {"name": "kv", "range": "02:00:00:00:00:00-02:00:00:ff:ff:ff", "default": True}
    try:
        async with kubevirt_service(backends, kube.url, tls, (pool,)) as first:
            cfg = dataclasses.replace(first.cfg, http_addr="127.0.0.1:0", webhook_addr="127.0.0.1:0", kube_api=None)
            async with Service(cfg, {"api"}) as second, aiohttp.ClientSession() as http, \
                    aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=tls.client_context())) as https:
                await second.wait_ready()
                yield first, second, http, https
    finally:
        await kube.stop()


async def test_a_network_made_on_one_replica_is_known_at_once_to_the_webhook_of_another(replicas):
    first, second, http, https = replicas
    # both replicas have read the catalogue before: a cache that does not see new definitions would now be stale
    assert (await admit(https, second, review(vm_manifest("warm-up", multus=()))))["allowed"] is True
    skipped = []
    for i in range(ROUNDS):
        body = {"name": f"ryw-{i}", "subnets": [{"cidr": f"10.{100 + i // 250}.{i % 250}.0/28"}],
                "attachments": [f"prod/ryw{i}-net"]}
        async with http.post(f"{first.url}/v1/networks", json=body) as r:
            assert r.status == 201, await r.json()
        vm = vm_manifest(f"ryw-vm-{i}", multus=(f"ryw{i}",))
        answer = await admit(https, second if i % 2 else first, review(vm))
        assert answer["allowed"] is True, answer
        addresses = json.loads(apply(vm, answer)["metadata"].get("annotations", {}).get(ANNOTATION, "{}"))
        if f"ryw{i}" not in addresses:
            skipped.append(i)
            continue
        (address,) = addresses[f"ryw{i}"]
        assert ipaddress.ip_address(address) in ipaddress.ip_network(body["subnets"][0]["cidr"])
    assert skipped == [], f"{len(skipped)} of {ROUNDS} VMs admitted without their address"


async def test_a_pool_made_on_one_replica_routes_the_other_replicas_webhook_at_once(replicas):
    first, second, http, https = replicas
    await http.post(f"{first.url}/v1/pools", json={"name": "late", "range": "0e:00:00:00:00:00-0e:00:00:00:ff:ff",
                                                     "namespaces": ["late"]})
    vm = vm_manifest("late-vm", namespace="late", multus=())
    answer = await admit(https, second, review(vm))
    assert answer["allowed"] is True, answer
    (iface,) = apply(vm, answer)["spec"]["template"]["spec"]["domain"]["devices"]["interfaces"]
    assert iface["macAddress"].startswith("0e:00:00:00:")
