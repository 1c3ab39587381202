"""Run the benchmarks against their own broker and database (chosen like the tests').

Scenarios:
  pipeline  leases/s sustained: commands produced straight to the commands topic, counted
            when committed in Postgres by a separate `ipam serve` process.
  ip-pipeline  IP leases/s the same way: LeaseIp commands on 16 dual-stack networks (a /16 and a /64
            each: two addresses per command), counted when committed in Postgres.
  webhook-ip  the same with the VM's two Multus networks being ipam networks: 3 MACs, 4 addresses
            (dual-stack) and cloud-init networkData per review.
  ip-latency  p50/p99/p99.9 of single POST /v1/ip-leases (dual-stack: two addresses) at fixed rates.
  takeover  seconds for an allocator to take a partition whose pool holds a million leases (bench/large_state.py)
  memory    that allocator's resident memory per live lease
  rebuild   seconds to replay a million ledger events into fresh tables, checked equal to the live ones
  baseline  the same workload done the simple way: one transaction per lease that locks
            the pool row and inserts the lease (same Postgres, same run).
  latency   p50/p99/p99.9 of single POST /v1/mac-leases at fixed offered rates.
  webhook   p50/p99/p99.9 of AdmissionReviews over HTTPS (a VM with three interfaces: three
            provisional leases each) at fixed offered rates.
  cni       pods/s of 200 concurrent ADDs through the real bridge plugin with ipam-cni, each in its own
            network namespace, and with host-local in the same run (bench/cni.py; needs root).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp
import asyncpg
from aiokafka import AIOKafkaProducer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ipam.adapters.kafka import partition_for
from ipam.devenv import free_port
from ipam.domain.commands import LeaseIp, LeaseMac
from ipam.domain.events import encoder
from ipam.domain.kinds import Owner
from ipam.service import LOCAL_TRIM_RECORDS
from tests.backends import select_backends
from tests.harness import ServiceProcess, create_database, drop_database, env_of, make_config
from tests.kubevirt import WebhookTls, review, vm_manifest

from .cni import measure_cni
from .figures import table, targets
from .large_state import BIG_POOL, BIG_RANGE, measure_rebuild, measure_takeover, populate
from .load import latency_figures, offered_load
from .log_growth import log_growth
from .metrics_scrape import measure_scrape

POOLS = [f"bench-{i:02d}" for i in range(16)]
NETWORKS = [f"net-{i:02d}" for i in range(16)]
# Requests come from 16 namespaces of each kind, one bound to each pool (and, for VMs on ipam networks,
# attached to each network), so they spread over the partitions as a real cluster's do.  Sending every
# request to one pool made one partition of the local broker grow until it slowed every later scenario.
SPREAD = 16
SCENARIOS = ("latency", "latency-https", "webhook", "webhook-ip", "ip-latency", "pipeline", "pipeline-16-pools",
             "ip-pipeline", "baseline", "takeover", "rebuild", "memory", "metrics-scrape", "cni", "log-growth")


def pool_range(i: int) -> str:
    return f"0a:{i:02x}:00:00:00:00-0a:{i:02x}:ff:ff:ff:ff"


async def create_pools(url: str, **session) -> None:
    async with aiohttp.ClientSession(**session) as http:
        for i, name in enumerate(POOLS):
            body = {"name": name, "range": pool_range(i), "default": i == 0,
                    "namespaces": [f"lat-{i}", f"hook-{i}", f"hook-ip-{i}"]}
            async with http.post(f"{url}/v1/pools", json=body) as r:
                assert r.status == 201, await r.text()


async def create_networks(url: str, **session) -> None:
    async with aiohttp.ClientSession(**session) as http:
        for i, name in enumerate(NETWORKS):
            body = {"name": name, "subnets": [{"cidr": f"10.{100 + i}.0.0/16", "gateway": f"10.{100 + i}.0.1"},
                                              {"cidr": f"fd00:{100 + i:x}::/64", "gateway": f"fd00:{100 + i:x}::1"}],
                    "attachments": [f"hook-ip-{i}/blue-net", f"hook-ip-{i}/green-net"]}
            async with http.post(f"{url}/v1/networks", json=body) as r:
                assert r.status == 201, await r.text()


def mac_command(n: int, at: int, pools: list[str] = POOLS) -> tuple[str, LeaseMac]:
    pool = pools[n % len(pools)]
    return pool, LeaseMac(command_id=f"b{uuid.uuid4().hex}", at=at, pool=pool,
                          owner=Owner(namespace="bench", vm=f"vm-{n}", vm_uid=f"u{n}", interface="eth0"))


def ip_command(n: int, at: int) -> tuple[str, LeaseIp]:
    network = NETWORKS[n % len(NETWORKS)]
    return network, LeaseIp(command_id=f"i{uuid.uuid4().hex}", at=at, network=network,
                            owner=Owner(namespace="bench", vm=f"vm-{n}", vm_uid=f"u{n}", interface="eth1"))


async def projected(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval("SELECT coalesce(sum(events_offset), 0)::bigint FROM ipam_store.partitions"))


async def pipeline(cfg, seconds: float, max_inflight: int = 40000, ip: bool = False, show_samples: bool = False,
                   one_pool: bool = True) -> dict:
    """Produce lease commands as fast as the pipeline absorbs them; count committed events in Postgres
    (one per MAC lease; two per dual-stack IP lease command).  ``one_pool``: every MAC lease on the default
    pool, as most clusters run (one partition); else spread over the 16 pools."""
    pools = POOLS[:1] if one_pool else POOLS
    make = ip_command if ip else (lambda n, at: mac_command(n, at, pools))
    per_command = 2 if ip else 1
    producer = AIOKafkaProducer(bootstrap_servers=cfg.kafka_bootstrap, linger_ms=5, max_batch_size=512 * 1024,
                                enable_idempotence=False, acks="all")
    await producer.start()
    conn = await asyncpg.connect(cfg.database_url)
    base = await projected(conn)
    parts = {p: partition_for(p, cfg.partitions) for p in (NETWORKS if ip else POOLS)}
    sent = 0
    samples: list[tuple[float, int]] = []
    start = time.perf_counter()
    stop_at = start + seconds
    done = base
    next_poll = start
    try:
        while time.perf_counter() < stop_at:
            now = time.perf_counter()
            if now >= next_poll:
                done = await projected(conn)
                samples.append((now - start, done - base))
                next_poll = now + 0.25
            if sent - (done - base) // per_command > max_inflight:
                await asyncio.sleep(0.01)
                continue
            at = int(time.time() * 1000)
            futures = []
            for _ in range(2000):
                key, cmd = make(sent, at)
                futures.append(await producer.send(cfg.commands_topic, encoder.encode(cmd), key=key.encode(),
                                                   partition=parts[key]))
                sent += 1
            await asyncio.gather(*futures)
        done = await projected(conn)
        samples.append((time.perf_counter() - start, done - base))
        # sustained rate: commits between the 20% and 100% marks of the window (skip warm-up)
        warm = [s for s in samples if s[0] >= seconds * 0.2]
        if show_samples:  # the commit timeline: (seconds, committed) every 0.25 s
            print(json.dumps({"scenario": f"{'ip-' if ip else ''}pipeline-samples",
                              "samples": [[round(t, 2), n] for t, n in samples]}), file=sys.stderr)
        rate = (warm[-1][1] - warm[0][1]) / (warm[-1][0] - warm[0][0]) if len(warm) > 1 else 0.0
        # drain: everything sent must be committed
        drain_start = time.perf_counter()
        while done - base < sent * per_command and time.perf_counter() - drain_start < 120:
            await asyncio.sleep(0.1)
            done = await projected(conn)
        if ip:
            leases = await conn.fetchval("SELECT count(*) FROM ipam_store.ip_leases WHERE namespace = 'bench'")
            distinct = await conn.fetchval("SELECT count(DISTINCT (network, address)) FROM ipam_store.ip_leases "
                                           "WHERE namespace = 'bench'")
        else:
            leases = await conn.fetchval("SELECT count(*) FROM ipam_store.mac_leases")
            distinct = await conn.fetchval("SELECT count(DISTINCT mac) FROM ipam_store.mac_leases")
    finally:
        await producer.stop()
        await conn.close()
    if ip:
        return {"scenario": "ip-pipeline", "seconds": seconds, "leases_per_s": round(rate), "commands_per_s": round(rate / 2),
                "sent_commands": sent, "committed_leases": done - base, "live_leases": leases, "distinct_addresses": distinct,
                "networks": len(NETWORKS), "partitions": cfg.partitions, "leases_per_command": 2}
    return {"scenario": "pipeline" if one_pool else "pipeline-16-pools", "seconds": seconds, "leases_per_s": round(rate),
            "sent": sent, "committed": done - base, "live_leases": leases, "distinct_macs": distinct, "pools": len(pools),
            "partitions": cfg.partitions}


async def baseline(dsn: str, seconds: float, concurrency: int = 16) -> dict:
    """One transaction per lease: lock the pool row, take its next address, insert the lease."""
    pool = await asyncpg.create_pool(dsn, min_size=concurrency, max_size=concurrency)
    async with pool.acquire() as c:
        await c.execute("""DROP SCHEMA IF EXISTS bench_baseline CASCADE; CREATE SCHEMA bench_baseline;
            CREATE TABLE bench_baseline.pools (name text PRIMARY KEY, next_mac bigint NOT NULL, last_mac bigint NOT NULL);
            CREATE TABLE bench_baseline.leases (mac bigint PRIMARY KEY, pool text NOT NULL REFERENCES bench_baseline.pools,
                namespace text NOT NULL, vm text NOT NULL, vm_uid text NOT NULL, interface text NOT NULL,
                since timestamptz NOT NULL DEFAULT now(), UNIQUE (pool, namespace, vm, vm_uid, interface));""")
        await c.executemany("INSERT INTO bench_baseline.pools VALUES ($1, $2, $3)",
                            [(p, int(f"0a{i:02x}00000000", 16), int(f"0a{i:02x}ffffffff", 16)) for i, p in enumerate(POOLS)])
    count = 0
    stop_at = time.perf_counter() + seconds

    async def worker(w: int) -> None:
        nonlocal count
        i = w
        async with pool.acquire() as c:
            take = await c.prepare("SELECT next_mac, last_mac FROM bench_baseline.pools WHERE name = $1 FOR UPDATE")
            insert = await c.prepare("INSERT INTO bench_baseline.leases (mac, pool, namespace, vm, vm_uid, interface) "
                                     "VALUES ($1, $2, 'bench', $3, $4, 'eth0')")
            bump = await c.prepare("UPDATE bench_baseline.pools SET next_mac = next_mac + 1 WHERE name = $1")
            while time.perf_counter() < stop_at:
                p = POOLS[i % len(POOLS)]
                async with c.transaction():
                    row = await take.fetchrow(p)
                    await insert.fetch(row["next_mac"], p, f"vm-{i}", f"u{i}")
                    await bump.fetch(p)
                count += 1
                i += concurrency

    start = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    elapsed = time.perf_counter() - start
    await pool.close()
    return {"scenario": "baseline", "seconds": seconds, "leases_per_s": round(count / elapsed), "concurrency": concurrency,
            "leases": count, "how": "one transaction per lease: SELECT pool FOR UPDATE, INSERT lease, UPDATE pool"}


async def latency(url: str, rate: int, seconds: float, ip: bool = False, **session) -> dict:
    """Requests at a fixed offered rate; each is one new lease (MAC, or dual-stack IP) answered after commit.
    ``session``: headers and a connector for the HTTPS-with-token variant."""
    lat: list[float] = []
    errors = 0
    path = "/v1/ip-leases" if ip else "/v1/mac-leases"
    session.setdefault("connector", aiohttp.TCPConnector(limit=1000))
    async with aiohttp.ClientSession(**session) as http:
        async def one(i: int) -> None:
            nonlocal errors
            t = time.perf_counter()
            body = {"namespace": f"lat-{i % SPREAD}", "vm": f"vm-{rate}-{i}", "vm_uid": f"u{i}", "interface": "eth0"}
            if ip:
                body["network"] = NETWORKS[i % len(NETWORKS)]
            async with http.post(f"{url}{path}", json=body) as r:
                await r.read()
                if r.status != 201:
                    errors += 1
            lat.append((time.perf_counter() - t) * 1000)

        elapsed = await offered_load(one, rate, seconds)
    scenario = f"{'ip-latency' if ip else 'latency'}{'-https' if url.startswith('https') else ''}@{rate}/s"
    return {**latency_figures(scenario, rate, lat, elapsed), "errors": errors}


async def webhook_latency(url: str, tls: WebhookTls, rate: int, seconds: float, ip: bool = False) -> dict:
    """AdmissionReviews at a fixed offered rate, as the API server sends them, over HTTPS.  With ``ip`` the
    VM's two Multus networks are ipam networks: 3 MACs, 4 addresses and cloud-init networkData per review.
    Reviews come from 16 namespaces, each bound to its own pool (and network)."""
    prefix = "hook-ip" if ip else "hook"
    lat: list[float] = []
    errors = 0
    # The API server keeps a small pool of warm connections to a webhook (HTTP/2 or keep-alive), it does
    # not open a TLS connection per review: a bounded pool models that (queueing shows in the latency).
    connector = aiohttp.TCPConnector(limit=64, ssl=tls.client_context())
    async with aiohttp.ClientSession(connector=connector) as http:
        async def one(i: int) -> None:
            nonlocal errors
            body = review(vm_manifest(f"vm-{rate}-{i}", namespace=f"{prefix}-{i % SPREAD}"))
            t = time.perf_counter()
            async with http.post(url, json=body) as r:
                answer = await r.json()
            lat.append((time.perf_counter() - t) * 1000)
            if not answer["response"]["allowed"]:
                errors += 1

        elapsed = await offered_load(one, rate, seconds)
    if ip:
        return {**latency_figures(f"webhook-ip@{rate}/s", rate, lat, elapsed), "denied": errors, "mac_leases_per_review": 3,
                "ip_leases_per_review": 4}
    return {**latency_figures(f"webhook@{rate}/s", rate, lat, elapsed), "denied": errors, "leases_per_review": 3}


async def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short runs: check the benchmarks work (CI)")
    ap.add_argument("--broker", choices=("apache-kafka", "local"), default=None,
                    help="apache-kafka (the default where Java and Maven exist) or local (the broker make run starts)")
    ap.add_argument("--seconds", type=float, default=None, help="pipeline and baseline duration (default 60, quick 2)")
    ap.add_argument("--partitions", type=int, default=8)
    ap.add_argument("--rates", default=None, help="comma-separated offered rates for latency (default 100,500,1000)")
    ap.add_argument("--webhook-rates", default=None, help="offered AdmissionReviews/s over HTTPS (default 100,200,500)")
    ap.add_argument("--webhook-ip-rates", default=None,
                    help="offered AdmissionReviews/s of VMs on ipam networks (default 100,500)")
    ap.add_argument("--ip-rates", default=None, help="offered POST /v1/ip-leases per second (default 100,500)")
    ap.add_argument("--https-rates", default=None, help="offered POST /v1/mac-leases per second over HTTPS with a bearer "
                                                        "token (default 100,500)")
    ap.add_argument("--samples", action="store_true", help="print each pipeline's commit timeline (stderr, JSON)")
    ap.add_argument("--growth-commands", type=int, default=None,
                    help="commands pushed on one pool between the two latency runs of log-growth (default 100,000)")
    ap.add_argument("--leases", type=int, default=None, help="live leases for takeover, rebuild and memory (default 1,000,000)")
    ap.add_argument("--only", default=None, help=f"comma-separated scenarios to run: {', '.join(SCENARIOS)} (default: all)")
    args = ap.parse_args(argv)
    seconds = args.seconds or (2 if args.quick else 60)
    def rates_of(given: str | None, full: str) -> list[int]:
        return [int(r) for r in (given if given is not None else ("100" if args.quick else full)).split(",") if r]

    rates = rates_of(args.rates, "100,500,1000")
    webhook_rates = rates_of(args.webhook_rates, "100,200,500")
    webhook_ip_rates = [int(r) for r in (args.webhook_ip_rates if args.webhook_ip_rates is not None
                                         else ("100" if args.quick else "100,500")).split(",") if r]
    ip_rates = rates_of(args.ip_rates, "100,500")
    https_rates = [int(r) for r in (args.https_rates if args.https_rates is not None
                                    else ("100" if args.quick else "100,500")).split(",") if r]
    lat_seconds = 1.5 if args.quick else 15
    only = set(args.only.split(",")) if args.only else set(SCENARIOS)
    leases = args.leases or (5_000 if args.quick else 1_000_000)
    webhook_ip_rates = webhook_ip_rates if "webhook-ip" in only else []
    rates = rates if "latency" in only else []
    webhook_rates = webhook_rates if "webhook" in only else []
    ip_rates = ip_rates if "ip-latency" in only else []
    https_rates = https_rates if "latency-https" in only else []

    if args.broker:
        os.environ["IPAM_TEST_BROKER"] = args.broker
    backends = select_backends()
    results: list[dict] = []
    tls = WebhookTls(Path(tempfile.mkdtemp(prefix="ipam-bench-tls-")))

    planned = (len(rates) + len(https_rates) + len(webhook_rates) + len(webhook_ip_rates) + len(ip_rates)
               + len({"pipeline", "pipeline-16-pools", "ip-pipeline", "baseline", "cni", "log-growth"} & only)
               + (1 if {"takeover", "rebuild", "memory", "metrics-scrape"} & only else 0))
    # A progress bar on stderr when it is a terminal (figures stay on stdout, one JSON object per line).
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=Console(stderr=True), transient=True, disable=not sys.stderr.isatty())
    bar = progress.add_task("bench", total=planned)
    progress.start()

    def report(result: dict) -> None:
        results.append(result)
        print(json.dumps(result), flush=True)
        if result.get("scenario") not in ("populate", "summary", "cni-host-local"):
            progress.update(bar, advance=1, description=f"bench: {result.get('scenario')} done")

    try:
        for rate in rates:
            async with Stack(backends, tls, args.partitions) as stack:
                report(await latency(stack.svc.url, rate, lat_seconds))
        for rate in https_rates:
            async with Stack(backends, tls, args.partitions, secure=True) as stack:
                report(await latency(stack.svc.url, rate, lat_seconds, **stack.session(1000)))
        for rate in webhook_rates:
            async with Stack(backends, tls, args.partitions) as stack:
                report(await webhook_latency(stack.webhook_url, tls, rate, lat_seconds))
        for rate in webhook_ip_rates:
            async with Stack(backends, tls, args.partitions) as stack:
                report(await webhook_latency(stack.webhook_url, tls, rate, lat_seconds, ip=True))
        for rate in ip_rates:
            async with Stack(backends, tls, args.partitions) as stack:
                report(await latency(stack.svc.url, rate, lat_seconds, ip=True))
        for name, ip, one_pool in (("pipeline", False, True), ("pipeline-16-pools", False, False),
                                   ("ip-pipeline", True, False)):
            if name in only:
                async with Stack(backends, tls, args.partitions, trim=False) as stack:
                    report(await pipeline(stack.cfg, seconds, ip=ip, show_samples=args.samples, one_pool=one_pool))
        if "log-growth" in only:
            async with Stack(backends, tls, args.partitions) as stack:
                report(await log_growth(stack.svc.url, args.growth_commands or (2_000 if args.quick else 100_000),
                                        rate=100, seconds=lat_seconds))
        if "cni" in only:
            async with Stack(backends, tls, args.partitions) as stack:
                for r in await measure_cni(stack.svc.url, 20 if args.quick else 200):
                    report(r)
        if {"takeover", "rebuild", "memory", "metrics-scrape"} & only:
            async with Stack(backends, tls, args.partitions, trim=False) as stack:
                for r in await large_state(stack, leases):
                    if r["scenario"] in only or (r["scenario"] == "populate"):
                        report(r)
        if "baseline" in only:
            dsn = await create_database(backends.postgres_dsn)
            try:
                report(await baseline(dsn, seconds))
            finally:
                await drop_database(backends.postgres_dsn, dsn)
            base = results[-1]["leases_per_s"]
            summary = {"scenario": "summary", "backends": backends.kind, "baseline_leases_per_s": base}
            for r in results:
                if r["scenario"] in ("pipeline", "pipeline-16-pools", "ip-pipeline"):
                    r["ratio_to_baseline"] = round(r["leases_per_s"] / max(1, base), 2)
                    summary[f"{r['scenario'].replace('-', '_')}_leases_per_s"] = r["leases_per_s"]
                    summary[f"{r['scenario'].replace('-', '_')}_ratio_to_baseline"] = r["ratio_to_baseline"]
            by = {r["scenario"]: r for r in results}
            for rate in set(rates) & set(https_rates):  # what HTTPS and a bearer token cost, measured in this run
                plain, secure = by[f"latency@{rate}/s"], by[f"latency-https@{rate}/s"]
                summary[f"https_to_plain_p50_at_{rate}"] = round(secure["p50_ms"] / max(plain["p50_ms"], 0.01), 2)
            print(json.dumps(summary), flush=True)
        print(json.dumps({**targets(results), "broker": backends.broker_name}), flush=True)
        progress.stop()
        print(table(results), file=sys.stderr)
    finally:
        progress.stop()
        backends.close()
    return 0


async def large_state(stack: Stack, leases: int) -> list[dict]:
    """A pool made through the service, a million leases written under it, then the service stopped:
    time an allocator's takeover of that partition (and its memory), and a rebuild of the ledger."""
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{stack.svc.url}/v1/pools", json={"name": BIG_POOL, "range": BIG_RANGE}) as r:
            assert r.status == 201, await r.text()
    stack.stop_service()  # nobody else owns the partition while it is taken
    partition = partition_for(BIG_POOL, stack.cfg.partitions)
    seconds = await populate(stack.dsn, partition, leases)
    out = [{"scenario": "populate", "leases": leases, "seconds": round(seconds, 1), "how": "generate_series into "
            "mac_leases and the ledger (the pool itself made through the service)"}]
    out.append(await measure_scrape(stack.dsn, leases))
    taken = await asyncio.to_thread(measure_takeover, env_of(stack.cfg), partition)
    out.append(taken)
    out.append({"scenario": "memory", "leases": taken["leases"], "bytes_per_lease": taken["bytes_per_lease"],
                "rss_before_mb": taken["rss_before_mb"], "rss_after_mb": taken["rss_after_mb"],
                "how": "allocator process resident memory after taking the partition, minus before, per live lease"})
    out.append(await measure_rebuild(stack.dsn))
    return out


class Stack:
    """A fresh database and ``ipam serve`` process, on a fresh log when the broker is the local one.

    Every scenario (and every rate) gets its own: the local broker slows down as a partition grows
    (docs/performance.md), so a scenario run after others would measure their leftovers, not itself.
    Baseline and pipelines still share the Postgres server, as the comparison requires."""

    TOKEN = "bench-admin-token-0123456789"

    def __init__(self, backends, tls: WebhookTls, partitions: int, secure: bool = False, trim: bool = True) -> None:
        """``secure``: REST over HTTPS with a bearer token (what production runs), not plain HTTP on loopback.
        ``trim``: trim the local broker's log as ``ipam serve`` does; not for scenarios that produce commands
        to the topic themselves (the trimmer holds back only the commands of the service's own API)."""
        self.backends, self.tls, self.partitions, self.secure, self.trim = backends, tls, partitions, secure, trim

    def session(self, limit: int = 100) -> dict:
        """aiohttp.ClientSession arguments that reach this stack's REST API."""
        if not self.secure:
            return {"connector": aiohttp.TCPConnector(limit=limit)}
        return {"connector": aiohttp.TCPConnector(limit=limit, ssl=self.tls.client_context()),
                "headers": {"Authorization": f"Bearer {self.TOKEN}"}}

    async def __aenter__(self) -> Stack:
        if self.backends.broker is not None:
            self.backends.broker.restart()
        self.dsn = await create_database(self.backends.postgres_dsn)
        self.cfg = make_config(self.backends.kafka_bootstrap, self.dsn, partitions=self.partitions)
        port = free_port()
        self.webhook_url = f"https://127.0.0.1:{port}/mutate-virtualmachines"
        env = {"IPAM_TLS_CERT_FILE": str(self.tls.cert_file), "IPAM_TLS_KEY_FILE": str(self.tls.key_file),
               "IPAM_WEBHOOK_ADDR": f"127.0.0.1:{port}"}
        if self.trim and self.backends.broker is not None:  # as `ipam serve` trims the local broker it starts
            env["IPAM_LOG_TRIM_RECORDS"] = str(LOCAL_TRIM_RECORDS)
        if self.secure:
            tokens = self.tls.folder / "bench-tokens"
            tokens.write_text(f"{self.TOKEN} admin bench\n")
            env |= {"IPAM_PLAIN_HTTP": "false", "IPAM_TOKEN_FILE": str(tokens)}
        self.svc = ServiceProcess(self.cfg, log_path="/tmp/ipam-bench-service.log", extra_env=env,
                                  client_ssl=self.tls.client_context() if self.secure else None).start()
        try:
            await self.svc.wait_ready()
            await create_pools(self.svc.url, **self.session())
            await create_networks(self.svc.url, **self.session())
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    def stop_service(self) -> None:
        try:
            self.svc.terminate(30)
        except subprocess.TimeoutExpired:
            self.svc.kill()

    async def __aexit__(self, *exc) -> None:
        try:
            await asyncio.to_thread(self.svc.terminate, 30)
        except subprocess.TimeoutExpired:
            pass
        self.svc.kill()
        await drop_database(self.backends.postgres_dsn, self.dsn)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
