"""/metrics at scale: once refreshing the Postgres gauges costs more than the scrape budget, a scrape is
answered from the last refresh and the next refresh runs behind it (ipam/api/app.py, ``Metrics``).

A small database refreshes well within the budget, so here the budget is set to zero to make the
service behave as it does at a million leases."""

from __future__ import annotations

import asyncio
import re

from ipam.api import app

from .kinds import MAC, create_space, lease


async def _leases_gauge(http, url: str) -> float | None:
    async with http.get(url + "/metrics") as r:
        found = re.search(r'^ipam_mac_leases\{pool="crash",state="confirmed"\} (\S+)$', await r.text(), re.M)
    return float(found.group(1)) if found else None


async def test_a_slow_refresh_is_served_from_the_last_one_and_done_behind_the_scrape(service, http, monkeypatch):
    await create_space(http, service.url, MAC)
    assert (await lease(http, service.url, MAC, 1))[0] == 201
    assert await _leases_gauge(http, service.url) == 1.0  # cheap refresh: every scrape is fresh
    monkeypatch.setattr(app, "SCRAPE_BUDGET_SECONDS", 0.0)
    assert await _leases_gauge(http, service.url) == 1.0  # from now on a refresh counts as too slow
    await asyncio.sleep(0.3)  # the refresh that scrape started is done
    assert (await lease(http, service.url, MAC, 2))[0] == 201
    assert await _leases_gauge(http, service.url) == 1.0  # the last refresh's figure; a new one starts behind it
    for _ in range(50):
        await asyncio.sleep(0.05)
        if await _leases_gauge(http, service.url) == 2.0:  # a later scrape shows what the background refresh read
            break
    else:
        raise AssertionError("the gauges never caught up")
