"""One seeded fault-injection run, and the invariants checked after it.

Processes: one API, two allocators, two projectors (each `ipam serve --role ...`), on a
broker and a Postgres of the run's own (so both can be restarted). While clients lease,
release and repeat, the chaos loop kill -9s allocators and projectors at random moments and
restarts them, adds and removes group members (rebalances), re-sends recorded commands with
the same bytes (duplicate delivery), feeds malformed records into both topics, restarts
Postgres once and the broker once (memory lost: a log reset).

Scenario ``kills`` does only the kills, one every 8-12 s, and measures availability under them.
Every run reports each client attempt's answer (2xx, 4xx, 5xx, none) and how long a partition
went unworked (``availability.py``); a run below its scenario's target fails ``make faults``.

Afterwards, from Postgres: no MAC was ever leased to two live owners (checked over the
whole ledger, not just the final table); every lease a client saw confirmed is present
unless that client released it; replaying the ledger gives exactly the lease tables;
every partition still moves (a probe lease on each partition commits).
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp
from aiokafka import AIOKafkaProducer

from ipam.adapters import kafka
from ipam.adapters.postgres.codecs import connect
from ipam.adapters.postgres.rebuild import rebuild
from ipam.devenv import EmbeddedPostgres, ThrowawayPostgres, free_port
from ipam.domain.events import AnyEvent

from .. import netns
from ..apache_kafka import KafkaCluster
from ..backends import local_broker
from ..harness import ServiceProcess, create_database, make_config
from ..kubevirt import WebhookTls
from .availability import OwnershipSampler
from .broker_kills import ride_broker_kills
from .clients import Client, Counters
from .network import INSIDE, cut_again_and_again

# What each scenario does, and the share of attempts it must answer 2xx (make faults fails a run below it).
SCENARIOS = {
    # everything at once: kills, failpoints, rebalances, duplicates, poison, a Postgres and a broker restart
    "chaos": {"clients": 12, "request_timeout": 5, "failpoints": True, "target": 0.95},
    # the issue's measure: one allocator or projector (of two each) kill -9'd every 8-12 s, 8 REST clients
    "kills": {"clients": 8, "request_timeout": 10, "failpoints": False, "target": 0.999},
    # three Apache Kafka nodes (replication 3, min.insync.replicas 2): the busiest leader kill -9'd every 20-30 s,
    # under 8 REST clients and 20 AdmissionReviews/s (broker_kills.py)
    "broker-kills": {"clients": 8, "request_timeout": 10, "failpoints": False, "target": 0.999, "brokers": 3,
                     "reviews_per_s": 20},
    # the same cluster, each node in a namespace of its own on one bridge: the busiest leader cut from the other
    # two nodes (not from ipam) for 10-20 s every 20-30 s (broker_kills.py)
    "broker-partition": {"clients": 8, "request_timeout": 10, "failpoints": False, "target": 0.999, "brokers": 3,
                         "reviews_per_s": 20, "segment": True},
    # one allocator and one projector in a network namespace, cut from Postgres or the broker (network.py)
    "network": {"clients": 8, "request_timeout": 10, "failpoints": False, "target": 0.9, "brokers": 1, "netns": True},
}

_decode_event = __import__("msgspec").json.Decoder(AnyEvent)


FAILPOINTS = {
    "allocator": "allocator.before_produce:0.003,allocator.after_produce:0.003,allocator.raise_before_produce:0.003",
    "projector": "projector.mid_batch:0.003,projector.after_commit:0.003,projector.raise_mid_batch:0.003",
}


class Run:
    def __init__(self, seed: int, seconds: float, base_pg: ThrowawayPostgres | None, scenario: str = "chaos") -> None:
        """``base_pg``: the Postgres server the run's database goes on (None for the network scenario, which
        starts one on its namespace's host side)."""
        self.seed, self.seconds, self.pg = seed, seconds, base_pg
        self.scenario, self.plan = scenario, SCENARIOS[scenario]
        self.rng = random.Random(seed)
        self.counters = Counters()
        self.procs: dict[str, ServiceProcess] = {}
        self.extras: list[ServiceProcess] = []
        self.leaving: list[ServiceProcess] = []
        self.log_dir = f"/tmp/ipam-faults-{seed}-{uuid.uuid4().hex[:6]}"
        self.broker, self.cluster, self.tls = None, None, None
        self.ns: netns.Namespace | None = None
        self.segment: netns.Segment | None = None  # the broker-partition scenario's namespaces, one per node
        self.own_pg: EmbeddedPostgres | None = None
        self.extra_figures: dict = {}

    def spawn(self, name: str, role: str) -> ServiceProcess:
        import os

        os.makedirs(self.log_dir, exist_ok=True)
        env = {"IPAM_FAILPOINTS": FAILPOINTS[role]} if role in FAILPOINTS and self.plan["failpoints"] else {}
        if role == "api" and self.tls is not None:  # the webhook too, for the scenarios that send reviews
            env |= {"IPAM_TLS_CERT_FILE": str(self.tls.cert_file), "IPAM_TLS_KEY_FILE": str(self.tls.key_file),
                    "IPAM_WEBHOOK_ADDR": self.webhook_addr}
        inside = self.ns is not None and name in INSIDE
        proc = ServiceProcess(self.cfg, (role,), log_path=f"{self.log_dir}/{name}.log", extra_env=env,
                              wrapper=self.ns.run if inside else ()).start()
        return proc

    def restart_the_dead(self) -> None:
        """Processes a failpoint killed come back, as a Deployment would bring them back."""
        for p in [*self.procs.values(), *self.extras]:
            if p.proc.poll() is not None:
                self.counters.failpoint_deaths += 1
                p.start()

    def failpoint_hits(self) -> dict[str, int]:
        import glob

        hits: dict[str, int] = {}
        for path in glob.glob(f"{self.log_dir}/*.log"):
            with open(path, errors="replace") as f:
                for line in f:
                    if '"failpoint hit"' in line:
                        name = json.loads(line)["failpoint"]
                        hits[name] = hits.get(name, 0) + 1
        return dict(sorted(hits.items()))

    def _own_network(self) -> str:
        """The network scenario's namespace, and a Postgres of the run's own on its host side: the host address
        the broker is to listen on."""
        self.ns = netns.Namespace().__enter__()
        trusted = f"{self.ns.inside.rsplit('.', 1)[0]}.0/24"
        self.own_pg = EmbeddedPostgres(Path(self.log_dir) / "pg", addr=f"{self.ns.host['postgres']}:{free_port()}",
                                       durable=False, tied=False, trust=(trusted,)).start()
        self.pg = self.own_pg
        return self.ns.host["kafka"]

    async def run(self) -> dict:
        host = await asyncio.to_thread(self._own_network) if self.plan.get("netns") else "127.0.0.1"
        if self.plan.get("brokers"):
            places = None
            if self.plan.get("segment"):  # every node in a namespace of its own
                self.segment = netns.Segment(self.plan["brokers"]).__enter__()
                places = [(a, self.segment.run(i)) for i, a in enumerate(self.segment.addresses)]
            self.cluster = await asyncio.to_thread(KafkaCluster(self.plan["brokers"], host=host, places=places).start)
            bootstrap, topics = self.cluster.bootstrap, self.cluster.topic_settings
            self.tls = WebhookTls(Path(tempfile.mkdtemp(prefix="ipam-faults-tls-")))
            self.webhook_addr = f"127.0.0.1:{free_port()}"
        else:
            self.broker = local_broker()
            bootstrap, topics = self.broker.bootstrap, {}
        dsn = await create_database(self.pg.dsn)
        self.cfg = make_config(bootstrap, dsn, partitions=4, quarantine_seconds=2, log_level="info",
                               request_timeout_seconds=self.plan["request_timeout"], **topics)
        try:
            return await self._run()
        finally:
            for p in [*self.procs.values(), *self.extras, *self.leaving]:
                p.kill()
            if self.broker is not None:
                self.broker.stop()
            if self.cluster is not None:
                self.cluster.destroy()
            if self.own_pg is not None:
                self.own_pg.stop("immediate")
            if self.ns is not None:
                self.ns.__exit__()
            if self.segment is not None:
                self.segment.__exit__()

    async def _run(self) -> dict:
        self.procs["api"] = self.spawn("api", "api")
        for name in ("allocator-1", "allocator-2"):
            self.procs[name] = self.spawn(name, "allocator")
        for name in ("projector-1", "projector-2"):
            self.procs[name] = self.spawn(name, "projector")
        await self._wait_api()
        async with aiohttp.ClientSession() as http:
            await self._create_pools(http)
            # chaos starts once every partition decides and commits (otherwise runs measure start-up)
            not_ready = await self._probe_partitions(http, "warmup")
            if not_ready:
                raise RuntimeError(f"partitions {not_ready} never became ready")
            client = Client(self.procs["api"].url, random.Random(self.seed * 7919), owners=400)
            stop = asyncio.Event()

            async def load() -> None:
                while not stop.is_set():
                    await client.step(http, self.counters)

            producer = AIOKafkaProducer(bootstrap_servers=self.cfg.kafka_bootstrap, enable_idempotence=False)
            await producer.start()
            groups = [f"{self.cfg.group_prefix}-{r}" for r in ("allocator", "projector")]
            sampler = OwnershipSampler(self.cfg.database_url, groups, self.cfg.partitions, self._alive)
            sampler.start()
            try:
                workers = [asyncio.create_task(load()) for _ in range(self.plan["clients"])]
                if self.scenario in ("broker-kills", "broker-partition"):
                    self.extra_figures = await ride_broker_kills(self, self.rng, self.tls,
                                                                 f"https://{self.webhook_addr}/mutate-virtualmachines")
                elif self.scenario == "network":
                    self.extra_figures = await cut_again_and_again(self.ns, self.rng, self.seconds)
                else:
                    await (self._chaos(producer) if self.scenario == "chaos" else self._kills())
                stop.set()
                await asyncio.gather(*workers)
            finally:
                unworked = await sampler.stop()
                await producer.stop()
            # from here on no process may die: the probe and the checks need a quiet system
            for p in [*self.procs.values(), *self.extras]:
                p.env.pop("IPAM_FAILPOINTS", None)
                if p.proc.poll() is not None:
                    self.counters.failpoint_deaths += 1
                    p.start()
            stuck = await self._probe_partitions(http)
        violations = await self._check(client, stuck)
        c = self.counters
        availability = client.tally.as_dict()
        if "webhook" in self.extra_figures:  # REST and webhook attempts together against the target
            hooks = self.extra_figures["webhook"]
            answered = availability["attempts"] - availability["refused_4xx"] + hooks["attempts"] - hooks["refused_4xx"]
            availability["availability"] = round((availability["ok_2xx"] + hooks["ok_2xx"]) / max(1, answered), 5)
        return {"network_faults": 0, "broker_kills": 0, **self.extra_figures, "seed": self.seed, "scenario": self.scenario,
                "seconds": self.seconds,
                **availability, "target": self.plan["target"],
                "below_target": availability["availability"] < self.plan["target"],
                "longest_unworked_s": unworked, "kills": c.kills, "failpoint_deaths": c.failpoint_deaths,
                "failpoints": self.failpoint_hits(), "rebalances": c.rebalances,
                "duplicates_injected": c.duplicates, "poison_records": c.poison, "postgres_restarts": c.postgres_restarts,
                "broker_restarts": c.broker_restarts, "requests": c.requests, "confirmed": c.confirmed,
                "violations": violations, "database": self.cfg.database_url, "logs": self.log_dir}

    def _alive(self, member: str) -> bool:
        """Is the process behind a lease's member id (host/role-pid-random) still running?"""
        try:
            pid = int(member.rsplit("/", 1)[1].split("-")[1])
        except (IndexError, ValueError):
            return False
        return any(p.proc and p.proc.pid == pid and p.proc.poll() is None for p in [*self.procs.values(), *self.extras])

    async def _kills(self) -> None:
        """One allocator or projector (of two each) kill -9'd every 8-12 s and started again at once."""
        start = time.monotonic()
        while True:
            gap, left = self.rng.uniform(8, 12), self.seconds - (time.monotonic() - start)
            await asyncio.sleep(min(gap, max(0.0, left)))  # the run ends at its length, not a gap after the last kill
            if gap >= left:
                return
            name = self.rng.choice([n for n in self.procs if n != "api"])
            self.procs[name].kill()
            self.counters.kills += 1
            self.procs[name].start()

    async def _wait_api(self) -> None:
        deadline = time.monotonic() + 120
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                try:
                    async with http.get(self.procs["api"].url + "/healthz") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.2)
        # the API alone has no partitions; wait for the roles by leasing nothing until pools can be created
        await asyncio.sleep(1)

    async def _create_pools(self, http) -> None:
        # one pool per partition at least, so the probe can reach every partition
        self.pools: dict[int, str] = {}
        i = 0
        while len(self.pools) < self.cfg.partitions:
            name = f"pool-{i}"
            part = kafka.partition_for(name, self.cfg.partitions)
            if part not in self.pools:
                self.pools[part] = name
            i += 1
        names = sorted(self.pools.values())
        for n, name in enumerate(names):
            body = {"name": name, "range": f"0a:00:00:{n:02x}:00:00-0a:00:00:{n:02x}:ff:ff",
                    "namespaces": [f"ns{n}"] if n < 3 else [], "default": n == 3}
            for _ in range(120):
                try:
                    async with http.post(self.procs["api"].url + "/v1/pools", json=body,
                                         headers={"Idempotency-Key": f"pool-{name}"}) as r:
                        if r.status in (201, 409):
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(1)
            else:
                raise RuntimeError(f"could not create {name}")

    async def _chaos(self, producer: AIOKafkaProducer) -> None:
        rng = self.rng
        start = time.monotonic()
        pg_at = start + self.seconds * rng.uniform(0.3, 0.5)
        broker_at = start + self.seconds * rng.uniform(0.6, 0.75)
        while time.monotonic() - start < self.seconds:
            await asyncio.sleep(rng.uniform(0.3, 1.5))
            self.restart_the_dead()
            now = time.monotonic()
            if pg_at and now >= pg_at:
                pg_at = 0
                await asyncio.to_thread(self.pg.restart)
                self.counters.postgres_restarts += 1
                continue
            if broker_at and now >= broker_at:
                broker_at = 0
                await asyncio.to_thread(self.broker.restart)
                self.counters.broker_restarts += 1
                continue
            if time.monotonic() - start >= self.seconds:
                break
            action = rng.choice(["kill", "kill", "rebalance", "duplicate", "poison"])
            if action == "kill":
                name = rng.choice([n for n in self.procs if n != "api"])
                self.procs[name].kill()
                self.counters.kills += 1
                await asyncio.sleep(rng.uniform(0, 1))
                self.procs[name].start()
            elif action == "rebalance":
                if self.extras and rng.random() < 0.5:
                    extra = self.extras.pop()
                    extra.proc.send_signal(signal.SIGTERM)  # leaves the group; reaped at the end
                    self.leaving.append(extra)
                else:
                    role = rng.choice(["allocator", "projector"])
                    self.extras.append(self.spawn(f"extra-{role}-{len(self.extras)}-{uuid.uuid4().hex[:4]}", role))
                self.counters.rebalances += 1
            elif action == "duplicate":
                self.counters.duplicates += await self._resend(producer)
            else:
                for topic in (self.cfg.commands_topic, self.cfg.events_topic):
                    junk = rng.choice([b"not json", b'{"type": "LeaseMac"}', b"\xff\xfe", b'{"partition": "x"}'])
                    try:
                        await producer.send_and_wait(topic, junk, partition=rng.randrange(self.cfg.partitions))
                        self.counters.poison += 1
                    except Exception:
                        pass

        # every run restarts Postgres and the broker once, even if the loop ran long
        if pg_at:
            await asyncio.to_thread(self.pg.restart)
            self.counters.postgres_restarts += 1
        if broker_at:
            await asyncio.to_thread(self.broker.restart)
            self.counters.broker_restarts += 1

    async def _resend(self, producer: AIOKafkaProducer) -> int:
        """Re-send recorded commands byte for byte: what a producer retry does."""
        part = self.rng.randrange(self.cfg.partitions)
        sent = 0
        try:
            async with kafka.LogReader(self.cfg) as reader:
                start = await reader.beginning(self.cfg.commands_topic, part)
                async for batch in reader.read_to_end(self.cfg.commands_topic, part, start, idle=0.1):
                    for _offset, raw in self.rng.sample(batch, min(5, len(batch))):
                        await producer.send_and_wait(self.cfg.commands_topic, raw, partition=part)
                        sent += 1
                    break
        except Exception:
            pass
        return sent

    async def _probe_partitions(self, http, name: str = "probe") -> list[int]:
        """Every partition must still decide and commit: one lease on each partition's pool."""
        stuck = []
        for part, pool in sorted(self.pools.items()):
            body = {"namespace": name, "vm": f"{name}-{part}", "vm_uid": name, "interface": "eth0", "pool": pool}
            ok = False
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not ok:
                try:
                    async with http.post(self.procs["api"].url + "/v1/mac-leases", json=body,
                                         headers={"Idempotency-Key": f"{name}-{part}"}) as r:
                        ok = r.status in (200, 201)
                except aiohttp.ClientError:
                    pass
                if not ok:
                    self.restart_the_dead()
                    await asyncio.sleep(1)
            if not ok:
                stuck.append(part)
        return stuck

    async def _check(self, client: Client, stuck: list[int]) -> list[str]:
        violations = [f"partition {p} stuck" for p in stuck] + client.violations
        conn = await connect(self.cfg.database_url)
        try:
            live = {(r["namespace"], r["vm"], r["vm_uid"], r["interface"]): r["mac"]
                    for r in await conn.fetch("SELECT mac, namespace, vm, vm_uid, interface FROM ipam_store.mac_leases")}
            for owner, mac in client.confirmed.items():
                if owner in client.uncertain:
                    continue
                if live.get(owner) != mac:
                    violations.append(f"confirmed lease lost: {owner} {mac} (now {live.get(owner)})")
            # over the whole ledger: a MAC is never leased while another owner holds it
            held: dict[str, tuple] = {}
            rows = await conn.fetch("SELECT body::text FROM ipam_store.ledger WHERE \"offset\" IS NOT NULL "
                                    "AND type IN ('MacLeased', 'MacReleased') ORDER BY id")
            for r in rows:
                ev = _decode_event.decode(r["body"])
                o = ev.owner
                who = (o.namespace, o.vm, o.vm_uid, o.interface)
                if type(ev).__name__ == "MacLeased":
                    if ev.mac in held and held[ev.mac] != who:
                        violations.append(f"{ev.mac} leased to {who} while held by {held[ev.mac]}")
                    held[ev.mac] = who
                else:
                    held.pop(ev.mac, None)
            report = await rebuild(conn)
            if not report.equal:
                violations.append(f"ledger replay differs from the live tables: {report.differences}")
        finally:
            await conn.close()
        return violations
