"""python -m bench.soak [--minutes M]: a mixed load against `ipam serve` (all roles) for M minutes (default 60).

Every second, at fixed offered rates: new MAC leases, releases and repeats (the same owner asks
again: the sticky answer) over REST, and AdmissionReviews of VMs over HTTPS to the webhook.  The
owners cycle through a fixed set, so live leases stay bounded and what grows, if anything, is the
service's own state.  Every minute one JSON line: RSS and open file descriptors of the service
and of the broker, p50/p99 per kind of request, errors.  At the end one line ``soak`` compares the
last minutes with the first ten (after a minute of warm-up): memory and latency must end within 10 %.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from bench.load import percentile
from bench.stack import Stack
from tests.backends import select_backends
from tests.kubevirt import WebhookTls, review, vm_manifest

OWNERS = 3000  # owners cycle through this set: bounded live leases


def process_figures(pid: int | None) -> dict:
    if not pid:
        return {}
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        rss_kib = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))
        return {"rss_mib": round(rss_kib / 1024, 1), "fds": len(os.listdir(f"/proc/{pid}/fd"))}
    except (OSError, StopIteration):
        return {"gone": True}


class Load:
    def __init__(self, stack: Stack, tls: WebhookTls, rest_rate: int, review_rate: int) -> None:
        self.stack, self.tls, self.rest_rate, self.review_rate = stack, tls, rest_rate, review_rate
        self.rng = random.Random(7)
        self.held: set[int] = set()
        self.minute: dict[str, list[float]] = {}
        self.errors: dict[str, int] = {}
        self.reviews = 0

    def _note(self, kind: str, started: float, ok: bool, status: int | None = None) -> None:
        self.minute.setdefault(kind, []).append((time.perf_counter() - started) * 1000)
        if not ok:  # counted by kind and HTTP status ("release:404"), so a minute's errors say what they were
            key = kind if status is None else f"{kind}:{status}"
            self.errors[key] = self.errors.get(key, 0) + 1

    async def rest_one(self, http) -> None:
        i = self.rng.randrange(OWNERS)
        body = {"namespace": f"soak-{i % 16}", "vm": f"vm-{i}", "vm_uid": f"u{i}", "interface": "eth0"}
        started = time.perf_counter()
        try:
            if i in self.held and self.rng.random() < 0.4:
                async with http.delete(f"{self.stack.svc.url}/v1/mac-leases/soak-{i % 16}/vm-{i}") as r:
                    await r.read()
                    self.held.discard(i)
                    self._note("release", started, r.status == 200, r.status)
                return
            kind = "repeat" if i in self.held else "lease"
            async with http.post(f"{self.stack.svc.url}/v1/mac-leases", json=body) as r:
                await r.read()
                self.held.add(i)
                self._note(kind, started, r.status in (200, 201), r.status)
        except (aiohttp.ClientError, TimeoutError):
            self._note("rest", started, False)

    async def review_one(self, http) -> None:
        self.reviews += 1
        body = review(vm_manifest(f"soak-vm-{self.reviews % OWNERS}", namespace=f"soak-{self.reviews % 16}"))
        started = time.perf_counter()
        try:
            async with http.post(self.stack.webhook_url, json=body) as r:
                answer = await r.json()
                self._note("review", started, bool(answer["response"]["allowed"]))
        except (aiohttp.ClientError, TimeoutError, KeyError):
            self._note("review", started, False)

    async def run(self, seconds: float, every: float, report) -> None:
        rest = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=200))
        hook = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=32, ssl=self.tls.client_context()))
        tasks: set[asyncio.Task] = set()
        start = next_report = time.perf_counter()
        sent = 0
        try:
            while (now := time.perf_counter()) - start < seconds:
                due = int((now - start) * (self.rest_rate + self.review_rate))
                while sent < due:  # open loop: fixed offered rates, answers never hold up the next request
                    one = self.review_one(hook) if sent % (self.rest_rate + self.review_rate) < self.review_rate \
                        else self.rest_one(rest)
                    task = asyncio.create_task(one)
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                    sent += 1
                if now >= next_report + every:
                    next_report += every
                    report(self.take_minute())
                await asyncio.sleep(0.005)
            await asyncio.gather(*tasks)
            report(self.take_minute())
        finally:
            await rest.close()
            await hook.close()

    def take_minute(self) -> dict:
        lat, self.minute = self.minute, {}
        errors, self.errors = self.errors, {}
        every = [v for values in lat.values() for v in values]
        return {"requests": len(every), "p50_ms": round(percentile(every, 0.5), 2) if every else None,
                "p99_ms": round(percentile(every, 0.99), 2) if every else None,
                "by_kind": {k: {"n": len(v), "p50_ms": round(percentile(v, 0.5), 2), "p99_ms": round(percentile(v, 0.99), 2)}
                            for k, v in sorted(lat.items())},
                "errors": errors}


def verdict(lines: list[dict]) -> dict:
    """First ten minutes after the warm-up minute against the last tenth of the run (at least one minute)."""
    body = lines[1:] if len(lines) > 2 else lines
    first = body[:10] if len(body) >= 20 else body[: max(1, len(body) // 2)]
    last = body[-max(1, len(body) // 10):]

    def mean(rows, key):
        values = [r[key] for r in rows if r.get(key) is not None]
        return sum(values) / len(values) if values else None

    out = {"scenario": "soak", "minutes": len(lines), "errors": sum(sum(r["errors"].values()) for r in lines)}
    for key in ("service_rss_mib", "service_fds", "p50_ms", "p99_ms"):
        a, b = mean(first, key), mean(last, key)
        out[key] = {"first": round(a, 2) if a else a, "last": round(b, 2) if b else b,
                    "growth": round(b / a, 3) if a and b else None}
    out["flat"] = all((out[k]["growth"] or 0) <= 1.10 for k in ("service_rss_mib", "p50_ms", "p99_ms")) \
        and out["service_fds"]["last"] <= out["service_fds"]["first"] + 20
    return out


async def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    ap.add_argument("--minutes", type=float, default=60)
    ap.add_argument("--rest-rate", type=int, default=40, help="REST requests per second (leases, releases, repeats)")
    ap.add_argument("--review-rate", type=int, default=10, help="AdmissionReviews per second")
    ap.add_argument("--every", type=float, default=60, help="seconds between JSON lines")
    args = ap.parse_args(argv)
    backends = select_backends()
    tls = WebhookTls(Path(tempfile.mkdtemp(prefix="ipam-soak-tls-")))
    lines: list[dict] = []
    try:
        async with Stack(backends, tls, partitions=8) as stack:
            broker_pid = backends.broker.proc.pid if backends.broker is not None and backends.broker.proc else None

            def report(minute: dict) -> None:
                service, broker = process_figures(stack.svc.proc.pid), process_figures(broker_pid)
                line = {"minute": len(lines) + 1, "service_rss_mib": service.get("rss_mib"), "service_fds": service.get("fds"),
                        "broker_rss_mib": broker.get("rss_mib"), "broker_fds": broker.get("fds"), **minute}
                lines.append(line)
                print(json.dumps(line), flush=True)

            await Load(stack, tls, args.rest_rate, args.review_rate).run(args.minutes * 60, args.every, report)
    finally:
        backends.close()
    result = verdict(lines)
    print(json.dumps(result), flush=True)
    return 0 if result["flat"] and result["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
