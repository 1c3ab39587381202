"""Latency at fixed offered rates: REST leases and AdmissionReviews."""

from __future__ import annotations

import time

import aiohttp

from tests.kubevirt import WebhookTls, review, vm_manifest

from .load import latency_figures, offered_load
from .stack import NETWORKS, SPREAD

API_SERVER_TIMEOUT_S = 10  # the webhooks' timeoutSeconds in deploy/webhook.yaml


async def latency(url: str, rate: int, seconds: float, ip: bool = False, **session) -> dict:
    """Requests at a fixed offered rate; each is one new lease (MAC, or dual-stack IP) answered after commit.
    ``session``: headers and a connector for the HTTPS-with-token variant."""
    lat: list[float] = []
    errors = 0
    path = "/v1/ip-leases" if ip else "/v1/mac-leases"
    session.setdefault("connector", aiohttp.TCPConnector(limit=1000))
    async with aiohttp.ClientSession(**session) as http:
        async def one(i: int) -> None:
            nonlocal errors
            t = time.perf_counter()
            body = {"namespace": f"lat-{i % SPREAD}", "vm": f"vm-{rate}-{i}", "vm_uid": f"u{i}", "interface": "eth0"}
            if ip:
                body["network"] = NETWORKS[i % len(NETWORKS)]
            async with http.post(f"{url}{path}", json=body) as r:
                await r.read()
                if r.status != 201:
                    errors += 1
            lat.append((time.perf_counter() - t) * 1000)

        elapsed = await offered_load(one, rate, seconds)
    scenario = f"{'ip-latency' if ip else 'latency'}{'-https' if url.startswith('https') else ''}@{rate}/s"
    return {**latency_figures(scenario, rate, lat, elapsed), "errors": errors,
            "leases": (len(lat) - errors) * (2 if ip else 1)}


async def webhook_latency(url: str, tls: WebhookTls, rate: int, seconds: float, ip: bool = False) -> dict:
    """AdmissionReviews at a fixed offered rate, as the API server sends them, over HTTPS.  With ``ip`` the
    VM's two Multus networks are ipam networks: 3 MACs, 4 addresses and cloud-init networkData per review.
    Reviews come from 16 namespaces, each bound to its own pool (and network)."""
    prefix = "hook-ip" if ip else "hook"
    lat: list[float] = []
    errors = busy = 0
    # The API server's webhook client is Go's http.Transport: no cap on connections to a host (MaxConnsPerHost
    # 0), idle ones kept for reuse.  So a review never queues in the client: when ipam is slower than the
    # offered rate, the queue is ipam's (what its load shedding sees), not the load generator's.
    connector = aiohttp.TCPConnector(limit=0, ssl=tls.client_context())
    async with aiohttp.ClientSession(connector=connector) as http:
        async def one(i: int) -> None:
            nonlocal errors, busy
            body = review(vm_manifest(f"vm-{rate}-{i}", namespace=f"{prefix}-{i % SPREAD}"))
            t = time.perf_counter()
            async with http.post(url, json=body) as r:
                answer = await r.json()
            lat.append((time.perf_counter() - t) * 1000)
            if not answer["response"]["allowed"]:
                errors += 1
                busy += answer["response"].get("status", {}).get("code") == 429

        elapsed = await offered_load(one, rate, seconds)
    # what the API server would not have waited for: answers after the webhook's timeoutSeconds
    late = {"denied_busy": busy, "answers_over_deadline": sum(ms > API_SERVER_TIMEOUT_S * 1000 for ms in lat)}
    if ip:
        return {**latency_figures(f"webhook-ip@{rate}/s", rate, lat, elapsed), "denied": errors, "mac_leases_per_review": 3,
                "ip_leases_per_review": 4, "leases": (len(lat) - errors) * 7, **late}
    return {**latency_figures(f"webhook@{rate}/s", rate, lat, elapsed), "denied": errors, "leases_per_review": 3,
            "leases": (len(lat) - errors) * 3, **late}
