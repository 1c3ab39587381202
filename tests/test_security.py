"""Security of the listeners: REST over HTTPS with bearer tokens (token file and Kubernetes TokenReview),
roles, refusals counted; plain HTTP only on loopback when asked for; the webhook behind a client CA."""

from __future__ import annotations

import asyncio
import os
import ssl
import subprocess
import sys

import aiohttp
import pytest
import trustme

from ipam.config import Config, ConfigError
from ipam.service import Service

from .harness import eventually, make_config
from .kube_api import FakeKubeApi
from .kubevirt import WebhookTls

ADMIN, READER = "admin-token-0123456789", "reader-token-0123456789"
POOL = {"name": "sec", "range": "02:20:00:00:00:00-02:20:00:00:00:ff", "namespaces": ["team"]}


@pytest.fixture
def tls(tmp_path):
    return WebhookTls(tmp_path)


@pytest.fixture
def token_file(tmp_path):
    path = tmp_path / "tokens"
    path.write_text(f"# token role name\n{ADMIN} admin alice\n{READER} reader grafana\n")
    return path


def _https(tls: WebhookTls) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=tls.client_context()))


def _bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


async def _auth_failures(https, url: str, token: str) -> dict[str, float]:
    async with https.get(url + "/metrics", headers=_bearer(token)) as r:
        text = await r.text()
    out = {}
    for line in text.splitlines():
        if line.startswith("ipam_auth_failures_total{"):
            reason = line.split('reason="', 1)[1].split('"', 1)[0]
            out[reason] = float(line.rsplit(" ", 1)[1])
    return out


async def test_rest_over_https_needs_a_token_and_the_right_role(backends, database, tls, token_file):
    cfg = make_config(backends.kafka_bootstrap, database, plain_http=False, tls_cert_file=str(tls.cert_file),
                      tls_key_file=str(tls.key_file), token_file=str(token_file), webhook_addr="127.0.0.1:0")
    async with Service(cfg) as svc, _https(tls) as https:
        await svc.wait_ready()
        assert svc.url.startswith("https://")
        before = await _auth_failures(https, svc.url, READER)
        async with https.get(svc.url + "/healthz") as r:  # probes need no token
            assert r.status == 200
        async with https.get(svc.url + "/v1/pools") as r:
            assert r.status == 401
            assert r.headers["WWW-Authenticate"].startswith("Bearer")
            assert (await r.json())["error"]["field"] == "Authorization"
        async with https.get(svc.url + "/v1/pools", headers=_bearer("not-a-token")) as r:
            assert r.status == 401
        async with https.post(svc.url + "/v1/pools", json=POOL, headers=_bearer(READER)) as r:
            assert r.status == 403
            assert "needs the admin role" in (await r.json())["error"]["message"]
        async with https.post(svc.url + "/v1/pools", json=POOL, headers=_bearer(ADMIN)) as r:
            assert r.status == 201, await r.text()
        async with https.get(svc.url + "/v1/pools", headers=_bearer(READER)) as r:
            assert r.status == 200 and [p["name"] for p in (await r.json())["pools"]] == ["sec"]
        tls.ca.cert_pem.write_to_path(str(tls.folder / "ca.pem"))
        cli = [sys.executable, "-m", "ipam", "--url", svc.url, "--cacert", str(tls.folder / "ca.pem"), "--json"]
        listed = await asyncio.to_thread(subprocess.run, [*cli, "--token", READER, "pool", "list"], capture_output=True,
                                         text=True, timeout=60)
        assert listed.returncode == 0 and "sec" in listed.stdout, listed.stderr
        refused = await asyncio.to_thread(subprocess.run, [*cli, "pool", "list"], capture_output=True, text=True, timeout=60)
        assert refused.returncode == 2 and "Authorization: missing bearer token" in refused.stderr
        after = await _auth_failures(https, svc.url, READER)
        for reason, count in (("missing", 2), ("invalid", 1), ("forbidden", 1)):
            assert after.get(reason, 0) - before.get(reason, 0) == count, (reason, before, after)
        # the webhook listener serves the webhook only: REST paths and tokens do not exist there
        async with https.get(f"https://127.0.0.1:{svc.webhook_port}/v1/pools", headers=_bearer(ADMIN)) as r:
            assert r.status == 404
        # plain HTTP to the HTTPS port gets nothing
        async with aiohttp.ClientSession() as plain:
            with pytest.raises(aiohttp.ClientError):
                async with plain.get(svc.url.replace("https://", "http://") + "/healthz") as r:
                    await r.read()


async def test_tokens_rotate_without_a_restart(backends, database, tls, token_file):
    cfg = make_config(backends.kafka_bootstrap, database, plain_http=False, tls_cert_file=str(tls.cert_file),
                      tls_key_file=str(tls.key_file), token_file=str(token_file))
    async with Service(cfg) as svc, _https(tls) as https:
        await svc.wait_ready()
        token_file.write_text("new-admin-token-0123456789 admin alice\n")

        async def rotated():
            async with https.get(svc.url + "/v1/pools", headers=_bearer("new-admin-token-0123456789")) as new, \
                       https.get(svc.url + "/v1/pools", headers=_bearer(ADMIN)) as old:
                return new.status == 200 and old.status == 401

        await eventually(rotated, timeout=10)
        reloads = svc.http_tls.reloads
        tls.issue("127.0.0.1", "ipam.ipam.svc")
        await eventually(lambda: asyncio.sleep(0, svc.http_tls.reloads > reloads), timeout=10)


async def test_token_review_maps_users_and_groups_to_roles(backends, database, tls):
    kube = await FakeKubeApi().start()
    kube.tokens = {"sa-admin": ("system:serviceaccount:ops:admin", ["ipam-admins"]),
                   "sa-prom": ("system:serviceaccount:monitoring:prometheus", ["system:serviceaccounts"]),
                   "sa-nobody": ("system:serviceaccount:default:default", ["system:serviceaccounts"])}
    cfg = make_config(backends.kafka_bootstrap, database, plain_http=False, tls_cert_file=str(tls.cert_file),
                      tls_key_file=str(tls.key_file), token_review=True, kube_api=kube.url,
                      admin_subjects="group:ipam-admins", reader_subjects="user:system:serviceaccount:monitoring:prometheus")
    try:
        async with Service(cfg, {"api", "allocator", "projector"}) as svc, _https(tls) as https:
            await svc.wait_ready()
            async with https.post(svc.url + "/v1/pools", json=POOL, headers=_bearer("sa-admin")) as r:
                assert r.status == 201, await r.text()
            async with https.get(svc.url + "/metrics", headers=_bearer("sa-prom")) as r:
                assert r.status == 200
            async with https.delete(svc.url + "/v1/macs/02:20:00:00:00:01", headers=_bearer("sa-prom")) as r:
                assert r.status == 403
            async with https.get(svc.url + "/v1/pools", headers=_bearer("sa-nobody")) as r:
                assert r.status == 403
                assert "has no role" in (await r.json())["error"]["message"]
            async with https.get(svc.url + "/v1/pools", headers=_bearer("forged")) as r:
                assert r.status == 401
            reviews = kube.token_reviews
            for _ in range(5):  # answers are cached: no TokenReview per request
                async with https.get(svc.url + "/v1/pools", headers=_bearer("sa-admin")) as r:
                    assert r.status == 200
            assert kube.token_reviews == reviews
    finally:
        await kube.stop()


@pytest.mark.parametrize("settings, complaint", [
    ({"IPAM_PLAIN_HTTP": "true", "IPAM_HTTP_ADDR": "0.0.0.0:8080"}, "not a loopback address"),
    ({"IPAM_HTTP_ADDR": "127.0.0.1:8080"}, "IPAM_TLS_CERT_FILE and IPAM_TLS_KEY_FILE are needed"),
    ({"IPAM_TLS_CERT_FILE": "/c", "IPAM_TLS_KEY_FILE": "/k"}, "needs a token source"),
    ({"IPAM_ADMIN_SUBJECTS": "admins"}, "IPAM_ADMIN_SUBJECTS: 'admins' is not user:NAME or group:NAME"),
    ({"IPAM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "IPAM_KAFKA_SASL_MECHANISM=''"),
    ({"IPAM_TOKEN_REVIEW": "true"}, "IPAM_TOKEN_REVIEW=true needs IPAM_KUBE_API"),
])
def test_unsafe_or_broken_listener_settings_are_refused(settings, complaint):
    with pytest.raises(ConfigError, match=complaint.replace("(", r"\(")):
        Config.from_env(env=settings).check_listener()
    env = {k: v for k, v in os.environ.items() if not k.startswith("IPAM_")} | settings
    run = subprocess.run([sys.executable, "-m", "ipam", "serve"], env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and complaint in run.stderr, run.stderr


async def test_the_webhook_can_require_the_api_servers_client_certificate(backends, database, tls, tmp_path):
    api_server_ca = trustme.CA()
    (tmp_path / "client-ca.pem").write_bytes(api_server_ca.cert_pem.bytes())
    cfg = make_config(backends.kafka_bootstrap, database, tls_cert_file=str(tls.cert_file), tls_key_file=str(tls.key_file),
                      webhook_addr="127.0.0.1:0", webhook_client_ca_file=str(tmp_path / "client-ca.pem"))
    review = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
              "request": {"uid": "u-1", "operation": "DELETE", "object": None, "oldObject": None,
                          "kind": {"group": "kubevirt.io", "version": "v1", "kind": "VirtualMachine"}, "namespace": "team"}}
    async with Service(cfg, {"api", "allocator", "projector"}) as svc:
        await svc.wait_ready()
        url = f"https://127.0.0.1:{svc.webhook_port}/mutate-virtualmachines"
        with pytest.raises((aiohttp.ClientError, ssl.SSLError)):
            async with _https(tls) as anonymous, anonymous.post(url, json=review) as r:
                await r.read()
        ctx = tls.client_context()
        api_server_ca.issue_cert("kube-apiserver").configure_cert(ctx)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as api_server:
            async with api_server.post(url, json=review) as r:
                assert r.status == 200
                assert (await r.json())["response"]["uid"] == "u-1"
