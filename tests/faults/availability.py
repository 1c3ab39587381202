"""What a cluster feels during a fault run: every HTTP attempt's answer, and how long partitions went unworked.

``Tally`` counts each attempt a client makes (a retry is a new attempt: the webhook's API server
does not retry for us).  ``OwnershipSampler`` polls the partition leases every 100 ms: a
partition is worked when a live process holds an unexpired lease that it marked ready (it had
loaded the partition).  The longest stretch without that, per group, is the hand-over time the
issue asks for: from the kill to the survivor working the partition.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable

from ipam.adapters.postgres.codecs import connect


@dataclasses.dataclass
class Tally:
    attempts: int = 0
    ok: int = 0  # 2xx
    refused: int = 0  # 4xx: an answer, counted apart
    server_errors: int = 0  # 5xx, 504 at the deadline included
    no_answer: int = 0  # timeouts and connection errors
    slowest_ok_s: float = 0.0

    def answered(self, status: int, seconds: float) -> None:
        self.attempts += 1
        if status < 300:
            self.ok += 1
            self.slowest_ok_s = max(self.slowest_ok_s, seconds)
        elif status < 500:
            self.refused += 1
        else:
            self.server_errors += 1

    def failed(self) -> None:
        self.attempts += 1
        self.no_answer += 1

    def as_dict(self) -> dict:
        share = self.ok / (self.attempts - self.refused) if self.attempts > self.refused else 1.0
        return {"attempts": self.attempts, "ok_2xx": self.ok, "refused_4xx": self.refused,
                "errors_5xx": self.server_errors, "no_answer": self.no_answer,
                "availability": round(share, 5), "slowest_2xx_s": round(self.slowest_ok_s, 3)}


class OwnershipSampler:
    """Longest time each group (allocator, projector) left some partition unworked, while it runs."""

    def __init__(self, dsn: str, groups: list[str], partitions: int, alive: Callable[[str], bool]) -> None:
        self.dsn, self.groups, self.partitions, self.alive = dsn, groups, partitions, alive
        self.longest: dict[str, float] = dict.fromkeys(groups, 0.0)
        self._since: dict[tuple[str, int], float] = {}
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> dict[str, float]:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        now = time.monotonic()
        for (group, _), since in self._since.items():  # a stretch still open at the end counts too
            self.longest[group] = max(self.longest[group], now - since)
        return {g: round(s, 2) for g, s in self.longest.items()}

    async def _run(self) -> None:
        conn = None
        while True:
            try:
                conn = conn or await connect(self.dsn)
                rows = await conn.fetch('SELECT "group", partition, member FROM ipam_store.partition_leases '
                                        "WHERE expires_at > now() AND ready_at IS NOT NULL")
            except asyncio.CancelledError:
                raise
            except Exception:  # Postgres restarting: no sample, the stretch goes on
                conn = None
                await asyncio.sleep(0.1)
                continue
            self._sample({(r["group"], r["partition"]) for r in rows if self.alive(r["member"])})
            await asyncio.sleep(0.1)

    def _sample(self, worked: set[tuple[str, int]]) -> None:
        now = time.monotonic()
        for group in self.groups:
            for p in range(self.partitions):
                key = (group, p)
                if key in worked:
                    since = self._since.pop(key, None)
                    if since is not None:
                        self.longest[group] = max(self.longest[group], now - since)
                else:
                    self._since.setdefault(key, now)
