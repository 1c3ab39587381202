"""The ``network`` scenario: one allocator and one projector (of two each) in a network namespace of the run's
own, cut off from Postgres or from the broker again and again while the clients lease.

Postgres (embedded) and Apache Kafka listen on host addresses of the namespace's veth pair (``tests/netns.py``).
Every 2-5 s a cut starts: from Postgres or from the broker, both ways, only what the roles send, or only what
they would receive; it lasts 3-10 s (bounded by the run) and heals.  Packets are dropped by blackhole routes
and rules, so sockets stay open and hang, as on a real partition.  The kernel here has no ``sch_netem``:
latency and loss are not injected (``tc qdisc add ... netem`` answers "qdisc kind is unknown").

What must hold is the driver's: no MAC held twice over the whole ledger, no confirmed lease lost, the ledger
replays to the tables, every partition decides afterwards; and every request answered (2xx, or 504 at its
deadline), none left hanging.
"""

from __future__ import annotations

import asyncio
import random
import time

from .. import netns

SERVICES = ("postgres", "kafka")
DIRECTIONS = ("both", "out", "in")
INSIDE = ("allocator-2", "projector-2")  # the roles the namespace holds; their twins stay on the host


async def cut_again_and_again(ns: netns.Namespace, rng: random.Random, seconds: float) -> dict:
    """Cuts until ``seconds`` have passed; what was cut, how, and for how long."""
    cuts: list[dict] = []
    start = time.monotonic()
    while True:
        await asyncio.sleep(rng.uniform(2, 5))
        left = seconds - (time.monotonic() - start)
        if left < 3:
            break
        service, direction = rng.choice(SERVICES), rng.choice(DIRECTIONS)
        lasting = min(rng.uniform(3, 10), left)
        ns.cut(service, direction)
        try:
            await asyncio.sleep(lasting)
        finally:
            ns.heal()
        cuts.append({"from": service, "direction": direction, "seconds": round(lasting, 1)})
    return {"network_faults": len(cuts), "cuts": cuts,
            "cut_seconds": {s: round(sum(c["seconds"] for c in cuts if c["from"] == s), 1) for s in SERVICES}}
