"""Latency on one pool fresh, and again after many more commands on that pool (issue 15, item 4).

The local broker's fetches cost time in proportion to the records a partition holds, so without
trimming the same offered load answers slower the longer ``make run`` runs.  The scenario measures
REST leases on the default pool (one partition) at a fixed rate on a fresh log, pushes ``commands``
commands through the API onto that pool (a lease and a release per owner: live leases stay few),
then measures again at the same rate; ``growth_p50`` is the second p50 over the first.
"""

from __future__ import annotations

import asyncio
import re
import time

import aiohttp

from .load import latency_figures, offered_load

NAMESPACE = "growth"  # bound to no pool: every request goes to the default pool, one partition


async def one_pool_latency(url: str, rate: int, seconds: float, tag: str) -> dict:
    lat: list[float] = []
    errors = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1000)) as http:
        async def one(i: int) -> None:
            nonlocal errors
            started = time.perf_counter()
            body = {"namespace": NAMESPACE, "vm": f"{tag}-{i}", "vm_uid": f"{tag}-u{i}", "interface": "eth0"}
            async with http.post(f"{url}/v1/mac-leases", json=body) as r:
                await r.read()
                errors += r.status != 201
            lat.append((time.perf_counter() - started) * 1000)

        elapsed = await offered_load(one, rate, seconds)
    return {**latency_figures(f"one-pool-{tag}@{rate}/s", rate, lat, elapsed), "errors": errors}


async def push(url: str, commands: int, concurrency: int = 64) -> dict:
    """``commands`` commands through the API as fast as it answers: lease then release, owner after owner."""
    pairs = commands // 2
    next_owner, errors = 0, 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as http:
        async def worker() -> None:
            nonlocal next_owner, errors
            while next_owner < pairs:
                i, next_owner = next_owner, next_owner + 1
                body = {"namespace": NAMESPACE, "vm": f"push-{i}", "vm_uid": f"push-u{i}", "interface": "eth0"}
                async with http.post(f"{url}/v1/mac-leases", json=body) as r:
                    await r.read()
                    errors += r.status != 201
                async with http.delete(f"{url}/v1/mac-leases/{NAMESPACE}/push-{i}") as r:
                    await r.read()
                    errors += r.status != 200

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    return {"commands": 2 * pairs, "push_seconds": round(elapsed, 1), "push_per_s": round(2 * pairs / elapsed),
            "push_errors": errors}


async def log_trims(url: str) -> int | None:
    async with aiohttp.ClientSession() as http, http.get(f"{url}/metrics") as r:
        found = re.search(r"^ipam_log_trims_total (\S+)$", await r.text(), re.MULTILINE)
    return int(float(found.group(1))) if found else None


async def log_growth(url: str, commands: int, rate: int, seconds: float) -> dict:
    fresh = await one_pool_latency(url, rate, seconds, "fresh")
    pushed = await push(url, commands)
    after = await one_pool_latency(url, rate, seconds, "after")
    return {"scenario": "log-growth", "offered_per_s": rate, **pushed, "log_trims": await log_trims(url),
            "fresh_p50_ms": fresh["p50_ms"], "fresh_p99_ms": fresh["p99_ms"],
            "after_p50_ms": after["p50_ms"], "after_p99_ms": after["p99_ms"],
            "growth_p50": round(after["p50_ms"] / max(fresh["p50_ms"], 0.01), 2),
            "growth_p99": round(after["p99_ms"] / max(fresh["p99_ms"], 0.01), 2),
            "errors": fresh["errors"] + after["errors"]}
