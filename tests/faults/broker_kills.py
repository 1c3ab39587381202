"""The ``broker-kills`` scenario: a three-node Apache Kafka cluster whose busiest leader is kill -9'd; and
``broker-partition``: the same cluster, each node in a network namespace of its own, its busiest leader cut from
the other two (not from ipam) for 10-20 s at a time.

Topics have replication 3 and ``min.insync.replicas=2``, the producers ``acks=all`` and idempotence, so
losing one broker loses no confirmed write: the controller moves leadership to an in-sync follower, and
clients retry on the new leader.  Every 20-30 s the broker that leads the most ipam partitions (commands
and events topics) is killed and started again 5-10 s later (its log kept, as a node an orchestrator
restarts in place).  Started again at once, the new JVM (7-20 s of a core to listen again here) competed
for this 2-core machine with the very failover being measured: a slice (fresh clone, 2026-12-07) left partitions
unanswered past the webhook's 8 s (10.3 s; 6.9 s in one run with the node kept down 15 s).

Besides the REST clients the driver runs, 20 AdmissionReviews a second go to the webhook (3 MACs each),
and ``PartitionProbe`` leases on every partition's pool every 0.5 s: the longest time any partition went
without a committed answer is the figure ``longest_unanswered_after_kill_s``.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Awaitable, Callable

import aiohttp

from ..apache_kafka import KafkaCluster, Node
from ..kubevirt import WebhookTls, review, vm_manifest
from .availability import Tally


async def leaders(cfg, cluster: KafkaCluster) -> dict[int, int]:
    """node id -> how many partitions of ipam's commands and events topics it leads."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=cluster.bootstrap, request_timeout_ms=5000)
    await admin.start()
    try:
        counts = dict.fromkeys((n.node_id for n in cluster.nodes), 0)
        for desc in await admin.describe_topics([cfg.commands_topic, cfg.events_topic]):
            for p in desc["partitions"]:
                if p["leader"] in counts:
                    counts[p["leader"]] += 1
        return counts
    finally:
        await admin.close()


DOWN_SECONDS = (5.0, 10.0)  # how long a killed node stays down before it is started again
CUT_SECONDS = (10.0, 20.0)  # how long a partitioned node stays cut from its peers


async def at_the_busiest_leader(cfg, cluster: KafkaCluster, rng: random.Random, seconds: float, log: list[dict],
                                fault: Callable[[Node], Awaitable[dict]]) -> None:
    """Every 20-30 s, ``fault`` the node that leads the most ipam partitions; ``log`` gets one entry per fault
    (which node, how many it led, whether it was the active controller, when, and what ``fault`` returns).  A run
    shorter than a minute (the slices in make test) faults first at 30-50 % of its length, so it can be short and
    still see the cluster ride over one."""
    start = time.monotonic()
    first = seconds < 60
    while True:
        gap = rng.uniform(20, 30)
        gap = min(gap, seconds * rng.uniform(0.3, 0.5)) if first else gap
        first = False
        left = seconds - (time.monotonic() - start)
        await asyncio.sleep(min(gap, max(0.0, left)))  # the run ends at its length, not a gap after the last fault
        if gap >= left:
            return
        try:
            counts = await leaders(cfg, cluster)
        except Exception as e:  # the cluster is still settling from the last fault: skip this round
            log.append({"skipped": repr(e)})
            continue
        busiest = max(counts, key=counts.get)
        node = next(n for n in cluster.nodes if n.node_id == busiest)
        controller = cluster.quorum_leader() == busiest
        at = time.monotonic()
        done = await fault(node)
        log.append({"node": busiest, "led": counts[busiest], "controller": controller, "at_s": round(at - start, 1), **done})


def kill_and_restart(cluster: KafkaCluster, rng: random.Random) -> Callable[[Node], Awaitable[dict]]:
    """kill -9 the node and start it again ``DOWN_SECONDS`` later (its log kept, as an orchestrator restarts it)."""
    async def fault(node: Node) -> dict:
        at = time.monotonic()
        await asyncio.to_thread(cluster.kill_node, node)
        down = rng.uniform(*DOWN_SECONDS)
        await asyncio.sleep(down)
        await asyncio.to_thread(cluster.start_node, node)
        return {"down_s": round(down, 1), "restart_s": round(time.monotonic() - at - down, 2)}
    return fault


def cut_from_peers(segment, rng: random.Random) -> Callable[[Node], Awaitable[dict]]:
    """Cut the node from the other nodes, both ways, for ``CUT_SECONDS``; ipam's processes still reach it.  It
    cannot heartbeat to the controller quorum (or, as the active controller, lead it), so after
    ``broker.session.timeout.ms`` the others fence it and move its leaderships, while clients holding the old
    metadata keep sending it requests that ``acks=all`` can no longer acknowledge."""
    async def fault(node: Node) -> dict:
        lasting = rng.uniform(*CUT_SECONDS)
        segment.isolate(node.node_id - 1)
        try:
            await asyncio.sleep(lasting)
        finally:
            segment.rejoin(node.node_id - 1)
        return {"cut_s": round(lasting, 1)}
    return fault


class WebhookLoad:
    """AdmissionReviews of new VMs at a fixed rate, each answered within the API server's deadline or not."""

    def __init__(self, url: str, tls: WebhookTls, rate: float, deadline: float = 10.0) -> None:
        self.url, self.tls, self.rate, self.deadline = url, tls, rate, deadline
        self.tally = Tally()
        self.denied: list[str] = []

    async def run(self, stop: asyncio.Event) -> None:
        connector = aiohttp.TCPConnector(limit=64, ssl=self.tls.client_context())
        async with aiohttp.ClientSession(connector=connector) as http:
            pending: set[asyncio.Task] = set()
            i = 0
            while not stop.is_set():
                i += 1
                task = asyncio.create_task(self._one(http, i))
                pending.add(task)
                task.add_done_callback(pending.discard)
                await asyncio.sleep(1 / self.rate)
            await asyncio.gather(*pending)

    async def _one(self, http, i: int) -> None:
        body = review(vm_manifest(f"kvm-{i}-{uuid.uuid4().hex[:4]}", namespace=f"ns{i % 3}"))
        sent = time.monotonic()
        try:
            async with http.post(self.url, json=body, timeout=aiohttp.ClientTimeout(total=self.deadline)) as r:
                answer = await r.json()
                if r.status == 200 and not answer["response"]["allowed"]:
                    self.denied.append(answer["response"].get("status", {}).get("message", ""))
                    self.tally.answered(503, time.monotonic() - sent)  # denied is a failed VM creation
                else:
                    self.tally.answered(r.status, time.monotonic() - sent)
        except (TimeoutError, aiohttp.ClientError):
            self.tally.failed()


class PartitionProbe:
    """A new lease on every partition's pool every ``every`` seconds: the longest gap between committed
    answers per partition, while brokers are killed."""

    def __init__(self, url: str, pools: dict[int, str], every: float = 0.5) -> None:
        self.url, self.pools, self.every = url, pools, every
        self.longest: dict[int, float] = dict.fromkeys(pools, 0.0)
        self.last_ok: dict[int, float] = {}

    async def run(self, stop: asyncio.Event) -> None:
        async with aiohttp.ClientSession() as http:
            while not stop.is_set():
                await asyncio.gather(*(self._probe(http, p, pool) for p, pool in self.pools.items()))
                await asyncio.sleep(self.every)
        now = time.monotonic()
        for p, since in self.last_ok.items():
            self.longest[p] = max(self.longest[p], now - since)

    async def _probe(self, http, partition: int, pool: str) -> None:
        n = uuid.uuid4().hex[:8]
        body = {"namespace": "probe", "vm": f"probe-{partition}-{n}", "vm_uid": n, "interface": "eth0", "pool": pool}
        try:
            async with http.post(self.url + "/v1/mac-leases", json=body, timeout=aiohttp.ClientTimeout(total=10),
                                 headers={"Idempotency-Key": f"probe-{n}"}) as r:
                ok = r.status in (200, 201)
            if ok:
                async with http.delete(f"{self.url}/v1/mac-leases/probe/probe-{partition}-{n}",
                                       timeout=aiohttp.ClientTimeout(total=10)):
                    pass
        except (TimeoutError, aiohttp.ClientError):
            ok = False
        if ok:
            now = time.monotonic()
            since = self.last_ok.get(partition, now)
            self.longest[partition] = max(self.longest[partition], now - since)
            self.last_ok[partition] = now

    def figures(self) -> dict:
        return {"longest_unanswered_after_kill_s": round(max(self.longest.values(), default=0.0), 2),
                "longest_unanswered_by_partition_s": {p: round(s, 2) for p, s in sorted(self.longest.items())}}


async def ride_broker_kills(run, rng: random.Random, tls: WebhookTls, webhook_url: str) -> dict:
    """The scenario's chaos: leader kills (or, with the run's ``segment``, leaders cut from their peers) under
    webhook reviews and partition probes; the run's extra figures."""
    stop = asyncio.Event()
    hooks = WebhookLoad(webhook_url, tls, run.plan["reviews_per_s"])
    probe = PartitionProbe(run.procs["api"].url, run.pools)
    faults: list[dict] = []
    loads = [asyncio.create_task(hooks.run(stop)), asyncio.create_task(probe.run(stop))]
    try:
        fault = cut_from_peers(run.segment, rng) if run.segment is not None else kill_and_restart(run.cluster, rng)
        await at_the_busiest_leader(run.cfg, run.cluster, rng, run.seconds, faults, fault)
    finally:
        stop.set()
        await asyncio.gather(*loads)
    done = len([f for f in faults if "node" in f])
    counted = {"network_faults": done, "broker_partition_log": faults} if run.segment is not None else \
        {"broker_kills": done, "broker_kill_log": faults}
    return {**counted, "webhook": hooks.tally.as_dict(), "webhook_denials": hooks.denied[:5], **probe.figures()}
