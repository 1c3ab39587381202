"""The admission webhook over real HTTPS, with AdmissionReviews shaped like the API server's,
through the real broker and Postgres.  A test Kubernetes API feeds the watcher (namespace
labels, VMs as persisted), so the UPDATE and opt-out paths run as they would in a cluster."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import asyncpg
import pytest

from ipam.cni.clients import Ipam
from ipam.cni.config import Settings
from ipam.cni.protocol import TRY_AGAIN_LATER, CniError
from ipam.service import Service

from .harness import eventually, kubevirt_service, make_config
from .kube_api import FakeKubeApi
from .kubevirt import WebhookTls, apply, macs_of, review, vm_manifest

POOL = {"name": "kv", "range": "02:00:00:00:00:00-02:00:00:ff:ff:ff", "default": True}
TINY = {"name": "tiny", "range": "0a:00:00:00:00:00-0a:00:00:00:00:01", "namespaces": ["tiny"]}


@pytest.fixture(scope="module")
async def kube():
    api = await FakeKubeApi().start()
    for name, labels in (("prod", {}), ("tiny", {}), ("legacy", {"mutatevirtualmachines.kubemacpool.io": "ignore"})):
        await api.put("namespaces", {"metadata": {"name": name, "labels": labels}})
    yield api
    await api.stop()


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    return WebhookTls(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
async def kv(backends, kube, tls):
    async with kubevirt_service(backends, kube.url, tls, (POOL, TINY)) as svc:
        await eventually(lambda: asyncio.sleep(0, svc.namespaces.known and "legacy" in svc.namespaces.labels))
        yield svc


@pytest.fixture(scope="module")
async def https(tls):
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=tls.client_context())) as session:
        yield session


async def admit(https, svc, body, path: str = "/mutate-virtualmachines") -> dict:
    url = f"https://127.0.0.1:{svc.webhook_port}{path}"
    data = body if isinstance(body, bytes) else None
    async with https.post(url, data=data, json=None if data is not None else body,
                          headers={"Content-Type": "application/json"}) as r:
        assert r.status == 200  # every review gets an AdmissionReview answer
        answer = await r.json()
    assert answer["apiVersion"] == "admission.k8s.io/v1" and answer["kind"] == "AdmissionReview"
    if isinstance(body, dict) and isinstance(body.get("request"), dict):
        assert answer["response"]["uid"] == body["request"]["uid"]
    return answer["response"]


async def leases(svc, **where) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(svc.cfg.database_url)
    try:
        cond = " AND ".join(f"{k} = ${i}" for i, k in enumerate(where, 1)) or "true"
        return await conn.fetch(f"SELECT * FROM ipam.mac_leases WHERE {cond} ORDER BY interface", *where.values())
    finally:
        await conn.close()


async def test_create_gives_every_interface_a_mac_and_a_retry_the_same_answer(kv, https):
    vm = vm_manifest("web-1")
    body = review(vm)
    response = await admit(https, kv, body)
    assert response["allowed"] is True
    created = apply(vm, response)
    macs = macs_of(created)
    assert sorted(macs) == ["blue", "default", "green"] and len(set(macs.values())) == 3
    rows = await leases(kv, namespace="prod", vm="web-1")
    assert {r["interface"]: str(r["mac"]) for r in rows} == macs
    assert {r["state"] for r in rows} == {"pending"}
    assert all(r["vm_uid"] == f"admission:{body['request']['uid']}" for r in rows)
    again = await admit(https, kv, body)  # the API server retries a review with the same uid
    assert macs_of(apply(vm, again)) == macs


async def test_a_create_sent_again_gets_the_macs_its_unpersisted_first_attempt_was_given(kv, https):
    """A CREATE the API server never persisted (another webhook denied it, a quota) and sent again, by a user or
    a GitOps controller, is a new review (a new uid): it takes over the leases the first left pending instead of
    holding a second set of MACs until the first lapse (``supersedes``)."""
    vm = vm_manifest("retried-1")
    first = macs_of(apply(vm, await admit(https, kv, review(vm))))
    second_review = review(vm)
    second = macs_of(apply(vm, await admit(https, kv, second_review)))
    assert second == first
    rows = await leases(kv, namespace="prod", vm="retried-1")
    assert len(rows) == 3 and {r["vm_uid"] for r in rows} == {f"admission:{second_review['request']['uid']}"}
    conn = await asyncpg.connect(kv.cfg.database_url)
    try:
        released = await conn.fetch("SELECT detail FROM ipam.history WHERE what = 'released' AND vm = 'retried-1'")
    finally:
        await conn.close()
    assert [r["detail"] for r in released] == ["superseded"] * 3


async def test_dry_run_shows_the_macs_and_leaves_no_lease(kv, https):
    vm = vm_manifest("dry-1")
    response = await admit(https, kv, review(vm, dry_run=True))
    assert response["allowed"] is True and len(macs_of(apply(vm, response))) == 3
    assert await leases(kv, namespace="prod", vm="dry-1") == []


async def test_a_user_mac_held_by_another_vm_is_denied_naming_the_holder(kv, https):
    first = apply(vm_manifest("owner-1"), await admit(https, kv, review(vm_manifest("owner-1"))))
    taken = macs_of(first)["blue"]
    response = await admit(https, kv, review(vm_manifest("thief-1", macs={"blue": taken.upper()})))
    assert response["allowed"] is False
    assert "owner-1" in response["status"]["message"] and taken in response["status"]["message"]
    assert response["status"]["code"] == 409


async def test_update_keeps_macs_hot_plugs_and_restores_a_reapplied_manifest(kv, kube, https):
    vm = vm_manifest("db-1")
    created = apply(vm, await admit(https, kv, review(vm)))
    stored = await kube.put("virtualmachines", created)  # the API server persists it: the watcher confirms
    uid = stored["metadata"]["uid"]
    await eventually(lambda: _all_confirmed(kv, "db-1", uid, 3))
    before = macs_of(stored)

    # hot plug: a new Multus interface without a MAC
    plugged = vm_manifest("db-1", multus=("blue", "green", "red"), macs=before)
    plugged["metadata"] = dict(stored["metadata"])
    response = await admit(https, kv, review(plugged, "UPDATE", old=stored))
    updated = apply(plugged, response)
    after = macs_of(updated)
    assert {k: after[k] for k in before} == before and after["red"] not in before.values()
    stored = await kube.put("virtualmachines", updated)
    await eventually(lambda: _all_confirmed(kv, "db-1", uid, 4))

    # re-applying the original manifest (no MACs in it) gets the old MACs back
    reapplied = vm_manifest("db-1", multus=("blue", "green", "red"))
    reapplied["metadata"] = dict(stored["metadata"])
    response = await admit(https, kv, review(reapplied, "UPDATE", old=stored))
    assert macs_of(apply(reapplied, response)) == after

    # removing an interface releases its lease once the update is persisted
    removed = vm_manifest("db-1", multus=("blue", "red"), macs=after)
    removed["metadata"] = dict(stored["metadata"])
    assert (await admit(https, kv, review(removed, "UPDATE", old=stored)))["allowed"] is True
    await kube.put("virtualmachines", removed)

    async def green_released():
        rows = await leases(kv, namespace="prod", vm="db-1")
        return sorted(r["interface"] for r in rows) == ["blue", "default", "red"]

    await eventually(green_released)


async def _all_confirmed(svc, name, uid, count):
    rows = await leases(svc, namespace="prod", vm=name)
    return len(rows) == count and all(r["state"] == "confirmed" and r["vm_uid"] == uid for r in rows)


async def test_an_opted_out_namespace_is_admitted_untouched(kv, https):
    vm = vm_manifest("old-1", namespace="legacy")
    response = await admit(https, kv, review(vm))
    assert response == {"uid": response["uid"], "allowed": True}
    assert await leases(kv, namespace="legacy") == []


async def test_exhaustion_is_a_denial_that_names_the_pool(kv, https):
    response = await admit(https, kv, review(vm_manifest("big-1", namespace="tiny", multus=("a", "b"))))
    assert response["allowed"] is False
    assert "'tiny'" in response["status"]["message"] and "exhausted" in response["status"]["message"]


@pytest.mark.parametrize("body, reason", [
    (b"{not json", "not JSON"),
    (b'{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}', "request.uid"),
    (b'{"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview", "request": {"uid": "u1"}}', "apiVersion/kind"),
])
async def test_malformed_reviews_are_denied_with_the_reason(kv, https, body, reason):
    response = await admit(https, kv, body)
    assert response["allowed"] is False and reason in response["status"]["message"]


async def test_unknown_kinds_and_broken_specs_are_denied(kv, https):
    other = review(vm_manifest("x"))
    other["request"]["kind"] = {"group": "", "version": "v1", "kind": "ConfigMap"}
    response = await admit(https, kv, other)
    assert response["allowed"] is False and "request.kind" in response["status"]["message"]
    broken = vm_manifest("y")
    broken["spec"]["template"]["spec"]["domain"]["devices"]["interfaces"] = {"name": "default"}
    response = await admit(https, kv, review(broken))
    assert response["allowed"] is False
    assert "spec.template.spec.domain.devices.interfaces" in response["status"]["message"]


async def test_an_oversized_review_is_denied_not_dropped(kv, https):
    vm = vm_manifest("huge-1")
    vm["metadata"]["annotations"] = {"blob": "x" * (kv.cfg.max_body_bytes + 10)}
    body = review(vm)
    response = await admit(https, kv, body)
    assert response["allowed"] is False and response["status"]["code"] == 413
    assert response["uid"] == body["request"]["uid"]


async def test_overload_is_refused_at_once_not_queued_past_the_deadline(backends, kv, tls, https):
    """Commands pile up (nobody decides them here): once the oldest has waited IPAM_SHED_AFTER_SECONDS and more
    than IPAM_SHED_MIN_WAITING wait, a new lease gets 429 with Retry-After and a review is denied "busy" with
    code 429 at once, before any lease is made; the waiting ones still get their own answer (504 here)."""
    cfg = make_config(backends.kafka_bootstrap, kv.cfg.database_url, tls_cert_file=str(tls.cert_file),
                      tls_key_file=str(tls.key_file), webhook_addr="127.0.0.1:0", request_timeout_seconds=4.0,
                      shed_after_seconds=0.3, shed_min_waiting=3)
    async with Service(cfg, roles={"api"}) as lonely, aiohttp.ClientSession() as http:
        def lease(i: int):
            return http.post(f"{lonely.url}/v1/mac-leases", json={"namespace": "prod", "vm": f"shed-{i}",
                                                                   "vm_uid": f"u-shed-{i}", "interface": "eth0"})

        async def status_of(i: int) -> int:
            async with lease(i) as r:
                return r.status

        waiting = [asyncio.create_task(status_of(i)) for i in range(4)]
        await asyncio.sleep(0.6)
        started = time.monotonic()
        async with lease(99) as r:
            refused, retry_after, body = r.status, r.headers.get("Retry-After"), await r.json()
        response = await admit(https, lonely, review(vm_manifest("shed-vm")))
        took = time.monotonic() - started
        plugin = Ipam(Settings(url=lonely.url, timeout=1.5))  # the CNI plugin's client: retries, then code 11
        body_of_add = {"namespace": "prod", "vm": "shed-pod", "vm_uid": "u-shed-pod", "interface": "net1"}
        with pytest.raises(CniError) as busy:
            await asyncio.to_thread(plugin.call, "POST", "/v1/mac-leases", body_of_add)
        tried_for = time.monotonic() - started - took
        assert sorted(await asyncio.gather(*waiting)) == [504] * 4  # answered at their deadline, not refused
        metrics = await (await http.get(f"{lonely.url}/metrics")).text()
    assert refused == 429 and body["error"]["code"] == "busy" and retry_after in ("1", "2")
    assert "nothing was done" in body["error"]["message"]
    assert response["allowed"] is False and response["status"]["code"] == 429
    assert "ipam is busy" in response["status"]["message"]
    assert took < 1.0  # both refused at once
    assert busy.value.code == TRY_AGAIN_LATER and "ipam is busy" in busy.value.msg
    assert 0.5 <= tried_for < 2.5  # sent again within its own 1.5 s, then "try again later"
    shed = next(float(line.split()[-1]) for line in metrics.splitlines() if line.startswith("ipam_requests_shed_total"))
    assert shed >= 4  # the lease, the review, and the plugin's first try and at least one more
    conn = await asyncpg.connect(kv.cfg.database_url)
    try:  # the refused review made no provisional lease
        assert await conn.fetchval("SELECT count(*) FROM ipam_store.mac_leases WHERE vm = 'shed-vm'") == 0
    finally:
        await conn.close()


async def test_a_stalled_pipeline_gets_a_denial_before_the_deadline(backends, kv, tls, https):
    """An API process whose commands nobody decides (no allocator on its topics) must still answer in time."""
    cfg = make_config(backends.kafka_bootstrap, kv.cfg.database_url, tls_cert_file=str(tls.cert_file),
                      tls_key_file=str(tls.key_file), webhook_addr="127.0.0.1:0", webhook_deadline_seconds=1.0)
    async with Service(cfg, roles={"api"}) as lonely:
        started = time.monotonic()
        response = await admit(https, lonely, review(vm_manifest("late-1")))
        took = time.monotonic() - started
    assert response["allowed"] is False and response["status"]["code"] == 503
    assert "within 1s" in response["status"]["message"]
    assert took < 3.0


async def test_the_certificate_is_reloaded_when_its_files_change(kv, tls):
    reloads = kv.webhook_tls.reloads
    tls.issue("127.0.0.1", "ipam-webhook.ipam.svc")
    await eventually(lambda: asyncio.sleep(0, kv.webhook_tls.reloads > reloads), timeout=10)
    ctx = tls.client_context()
    reader, writer = await asyncio.open_connection("127.0.0.1", kv.webhook_port, ssl=ctx,
                                                   server_hostname="ipam-webhook.ipam.svc")
    writer.close()


async def test_opt_in_mode_needs_the_label_and_refuses_to_guess(backends, kv, kube, tls, https):
    """IPAM_NAMESPACE_OPT_IN=true: unlabelled namespaces pass untouched; unknown labels are a retryable denial."""
    common = dict(tls_cert_file=str(tls.cert_file), tls_key_file=str(tls.key_file), webhook_addr="127.0.0.1:0",
                  namespace_opt_in=True)
    async with Service(make_config(backends.kafka_bootstrap, kv.cfg.database_url, kube_api=kube.url, **common),
                       roles={"api"}) as informed:
        await eventually(lambda: asyncio.sleep(0, informed.namespaces.known))
        response = await admit(https, informed, review(vm_manifest("quiet-1")))
        assert response == {"uid": response["uid"], "allowed": True}
    async with Service(make_config(backends.kafka_bootstrap, kv.cfg.database_url, **common), roles={"api"}) as blind:
        response = await admit(https, blind, review(vm_manifest("quiet-2")))
        assert response["allowed"] is False and response["status"]["code"] == 503
        assert "IPAM_KUBE_API" in response["status"]["message"]
