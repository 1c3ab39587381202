"""The fault runs' clients: REST leases and releases with retries, and what they saw confirmed."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import time
import uuid

import aiohttp

from .availability import Tally


@dataclasses.dataclass
class Counters:
    kills: int = 0
    failpoint_deaths: int = 0
    rebalances: int = 0
    duplicates: int = 0
    poison: int = 0
    postgres_restarts: int = 0
    broker_restarts: int = 0
    requests: int = 0
    confirmed: int = 0


class Client:
    """Issues leases and releases, retrying with the same command id; remembers what was confirmed."""

    def __init__(self, url: str, rng: random.Random, owners: int) -> None:
        self.url, self.rng, self.owners = url, rng, owners
        self.tally = Tally()
        self.confirmed: dict[tuple, str] = {}  # owner -> mac the service confirmed
        self.uncertain: set[tuple] = set()  # owners whose last change has an unknown outcome
        self.violations: list[str] = []
        self.locks: dict[tuple, asyncio.Lock] = {}

    def owner(self) -> dict:
        i = self.rng.randrange(self.owners)
        return {"namespace": f"ns{i % 3}", "vm": f"vm-{i}", "vm_uid": f"uid-{i}", "interface": "eth0"}

    async def call(self, http, method: str, path: str, body: dict | None, key: str) -> tuple[int, dict] | None:
        for attempt in range(8):
            sent = time.monotonic()
            try:
                async with http.request(method, self.url + path, json=body, headers={"Idempotency-Key": key},
                                        timeout=aiohttp.ClientTimeout(total=15)) as r:
                    data = await r.json(content_type=None)
                    self.tally.answered(r.status, time.monotonic() - sent)
                    if r.status < 500:
                        return r.status, data
            except (TimeoutError, aiohttp.ClientError, json.JSONDecodeError):
                self.tally.failed()
            await asyncio.sleep(0.3 * (attempt + 1))
        return None

    async def step(self, http, counters: Counters) -> None:
        o = self.owner()
        key = (o["namespace"], o["vm"], o["vm_uid"], o["interface"])
        # One request per owner at a time: with a lease and a release of the same owner in flight
        # together, answers can arrive in another order than the decisions, and the model would lie.
        async with self.locks.setdefault(key, asyncio.Lock()):
            await self._step(http, counters, o, key)

    async def _step(self, http, counters: Counters, o: dict, key: tuple) -> None:
        counters.requests += 1
        if key in self.confirmed and self.rng.random() < 0.3:
            got = await self.call(http, "DELETE", f"/v1/mac-leases/{o['namespace']}/{o['vm']}", None, f"rel-{uuid.uuid4()}")
            if got is None:
                self.uncertain.add(key)
            elif got[0] == 200:
                self.confirmed.pop(key, None)
                self.uncertain.discard(key)
            return
        got = await self.call(http, "POST", "/v1/mac-leases", o, f"lease-{uuid.uuid4()}")
        if got is None:
            self.uncertain.add(key)
            return
        status, data = got
        if status in (200, 201):
            mac = data["lease"]["mac"]
            if key in self.confirmed and key not in self.uncertain and self.confirmed[key] != mac:
                self.violations.append(f"sticky lease changed for {key}: {self.confirmed[key]} -> {mac}")
            self.confirmed[key] = mac
            self.uncertain.discard(key)
            counters.confirmed += 1
