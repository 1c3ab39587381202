"""What a scrape of /metrics costs at a million leases (issue 15, item 5).

The Postgres gauges (usage views, lease counts) are what grows with the leases.  Measured on the real
code (``ipam.api.app.Metrics`` over ``ReadModel``) against the populated database, without HTTP: the
first scrape refreshes the gauges while the scrape waits; once a refresh took longer than the scrape
budget, later scrapes are answered from the last refresh and refresh in the background.
"""

from __future__ import annotations

import asyncio
import time

from ipam.adapters.postgres.codecs import create_pool
from ipam.adapters.postgres.read_model import ReadModel
from ipam.api.app import SCRAPE_BUDGET_SECONDS, Metrics

from .load import percentile


async def measure_scrape(dsn: str, leases: int, scrapes: int = 10) -> dict:
    db = await create_pool(dsn, min_size=1, max_size=4)
    try:
        read, metrics = ReadModel(db), Metrics()

        async def scrape() -> float:
            started = time.perf_counter()
            await metrics.current(read)
            metrics.render()
            return (time.perf_counter() - started) * 1000

        first = await scrape()
        later = []
        for _ in range(scrapes):
            await asyncio.sleep(0.2)
            later.append(await scrape())
        refreshed_in = await metrics.settled()
        return {"scenario": "metrics-scrape", "leases": leases, "first_scrape_ms": round(first, 1),
                "refresh_ms": round(refreshed_in * 1000, 1),
                "scrape_p50_ms": round(percentile(later, 0.5), 2), "scrape_max_ms": round(max(later), 2),
                "budget_ms": SCRAPE_BUDGET_SECONDS * 1000,
                "how": "Metrics.current + render on the populated database, 10 scrapes 0.2 s apart after the first"}
    finally:
        await db.close()
