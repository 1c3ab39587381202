"""What the latency scenarios share: offered load at a fixed rate, and the figures of its answers."""

from __future__ import annotations

import asyncio
import time


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


async def offered_load(one, rate: int, seconds: float) -> float:
    """Start ``one(i)`` at a fixed offered rate (open loop: never waits for answers to send more);
    return the seconds until every request was answered."""
    tasks = []
    start = time.perf_counter()
    for i in range(int(rate * seconds)):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i)))
    await asyncio.gather(*tasks)
    return time.perf_counter() - start


def latency_figures(scenario: str, rate: int, lat: list[float], elapsed: float) -> dict:
    return {"scenario": scenario, "offered_per_s": rate, "achieved_per_s": round(len(lat) / elapsed),
            "p50_ms": round(percentile(lat, 0.5), 2), "p99_ms": round(percentile(lat, 0.99), 2),
            "p999_ms": round(percentile(lat, 0.999), 2), "requests": len(lat)}
