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
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from tests.backends import select_backends
from tests.harness import create_database, drop_database
from tests.kubevirt import WebhookTls

from .cni import measure_cni
from .figures import table, targets
from .large_state import large_state
from .log_growth import log_growth
from .profile import Profiler
from .rates import latency, webhook_latency
from .stack import Stack
from .throughput import baseline, pipeline

SCENARIOS = ("latency", "latency-https", "webhook", "webhook-ip", "ip-latency", "pipeline", "pipeline-16-pools",
             "ip-pipeline", "baseline", "takeover", "rebuild", "memory", "metrics-scrape", "cni", "log-growth")


LARGE_STATE = {"takeover", "rebuild", "memory", "metrics-scrape"}


PROFILE_DIR: Path | None = None  # --profile: py-spy records ``ipam serve`` through each scenario


async def with_cpu(stack: Stack, scenario) -> dict:
    """Run a scenario and add the CPU µs a lease its stack's processes used (total and per process)."""
    spy = Profiler(PROFILE_DIR, "running", stack.svc.proc.pid).start() if PROFILE_DIR else None
    window = stack.cpu().start()
    try:
        result = await scenario
    finally:
        window.stop()
        if spy is not None:
            spy.stop()
    if spy is not None:
        for made in (spy.raw, spy.folder / "running.top.txt"):
            if made.exists():
                made.rename(made.with_name(made.name.replace("running", result["scenario"].replace("/", "_"))))
    return {**result, **window.per_lease(result["leases"], "cpu_us_per_lease")}


def parse(argv: list[str]) -> argparse.Namespace:
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
    ap.add_argument("--profile", type=Path, default=None, metavar="DIR",
                    help="record ipam serve with py-spy through each latency and pipeline scenario into DIR (bench/profile.py)")
    ap.add_argument("--only", default=None, help=f"comma-separated scenarios to run: {', '.join(SCENARIOS)} (default: all)")
    return ap.parse_args(argv)


class Bench:
    """One run: what it measures (from the arguments), where (the backends), and the figures so far."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args, quick = args, args.quick
        self.only = set(args.only.split(",")) if args.only else set(SCENARIOS)
        self.seconds = args.seconds or (2 if quick else 60)
        self.lat_seconds = 1.5 if quick else 15
        self.leases = args.leases or (5_000 if quick else 1_000_000)

        def rates_of(scenario: str, given: str | None, full: str) -> list[int]:
            text = given if given is not None else ("100" if quick else full)
            return [int(r) for r in text.split(",") if r] if scenario in self.only else []

        self.rates = rates_of("latency", args.rates, "100,500,1000")
        self.https_rates = rates_of("latency-https", args.https_rates, "100,500")
        self.webhook_rates = rates_of("webhook", args.webhook_rates, "100,200,500")
        self.webhook_ip_rates = rates_of("webhook-ip", args.webhook_ip_rates, "100,500")
        self.ip_rates = rates_of("ip-latency", args.ip_rates, "100,500")
        self.results: list[dict] = []
        self.tls = WebhookTls(Path(tempfile.mkdtemp(prefix="ipam-bench-tls-")))
        if args.broker:
            os.environ["IPAM_TEST_BROKER"] = args.broker
        self.backends = select_backends()
        # A progress bar on stderr when it is a terminal (figures stay on stdout, one JSON object per line).
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                 console=Console(stderr=True), transient=True, disable=not sys.stderr.isatty())
        self.bar = self.progress.add_task("bench", total=self.planned())

    def planned(self) -> int:
        """One step per figure reported (a rate of a latency scenario, each other scenario asked for)."""
        return (len(self.rates) + len(self.https_rates) + len(self.webhook_rates) + len(self.webhook_ip_rates)
                + len(self.ip_rates) + len({"pipeline", "pipeline-16-pools", "ip-pipeline", "baseline", "cni", "log-growth"}
                                           & self.only) + len(LARGE_STATE & self.only))

    def stack(self, **options) -> Stack:
        return Stack(self.backends, self.tls, self.args.partitions, **options)

    def report(self, result: dict) -> None:
        self.results.append(result)
        print(json.dumps(result), flush=True)
        if result.get("scenario") not in ("populate", "summary", "cni-host-local"):
            self.progress.update(self.bar, advance=1, description=f"bench: {result.get('scenario')} done")

    async def latencies(self) -> None:
        for rate in self.rates:
            async with self.stack() as stack:
                self.report(await with_cpu(stack, latency(stack.svc.url, rate, self.lat_seconds)))
        for rate in self.https_rates:
            async with self.stack(secure=True) as stack:
                self.report(await with_cpu(stack, latency(stack.svc.url, rate, self.lat_seconds, **stack.session(1000))))
        for rate, ip in [(r, False) for r in self.webhook_rates] + [(r, True) for r in self.webhook_ip_rates]:
            async with self.stack() as stack:
                self.report(await with_cpu(stack, webhook_latency(stack.webhook_url, self.tls, rate, self.lat_seconds, ip=ip)))
        for rate in self.ip_rates:
            async with self.stack() as stack:
                self.report(await with_cpu(stack, latency(stack.svc.url, rate, self.lat_seconds, ip=True)))

    async def throughputs(self) -> None:
        for name, ip, one_pool in (("pipeline", False, True), ("pipeline-16-pools", False, False),
                                   ("ip-pipeline", True, False)):
            if name in self.only:
                async with self.stack(trim=False) as stack:
                    self.report(await with_cpu(stack, pipeline(stack.cfg, self.seconds, ip=ip, show_samples=self.args.samples,
                                                               one_pool=one_pool)))

    async def the_rest(self) -> None:
        quick = self.args.quick
        if "log-growth" in self.only:
            async with self.stack() as stack:
                self.report(await log_growth(stack.svc.url, self.args.growth_commands or (2_000 if quick else 100_000),
                                             rate=100, seconds=self.lat_seconds))
        if "cni" in self.only:
            async with self.stack() as stack:
                for r in await measure_cni(stack.svc.url, 20 if quick else 200):
                    self.report(r)
        if LARGE_STATE & self.only:
            async with self.stack(trim=False) as stack:
                for r in await large_state(stack, self.leases):
                    if r["scenario"] in self.only or r["scenario"] == "populate":
                        self.report(r)

    async def baseline_and_summary(self) -> None:
        """The baseline, measured on the same Postgres after the pipelines, and the ratios to it."""
        dsn = await create_database(self.backends.postgres_dsn)
        try:
            self.report(await baseline(dsn, self.seconds))
        finally:
            await drop_database(self.backends.postgres_dsn, dsn)
        base = self.results[-1]["leases_per_s"]
        summary = {"scenario": "summary", "backends": self.backends.kind, "baseline_leases_per_s": base}
        for r in self.results:
            if r["scenario"] in ("pipeline", "pipeline-16-pools", "ip-pipeline"):
                name = r["scenario"].replace("-", "_")
                r["ratio_to_baseline"] = round(r["leases_per_s"] / max(1, base), 2)
                summary[f"{name}_leases_per_s"], summary[f"{name}_ratio_to_baseline"] = r["leases_per_s"], r["ratio_to_baseline"]
        by = {r["scenario"]: r for r in self.results}
        for rate in set(self.rates) & set(self.https_rates):  # what HTTPS and a bearer token cost, measured in this run
            plain, secure = by[f"latency@{rate}/s"], by[f"latency-https@{rate}/s"]
            summary[f"https_to_plain_p50_at_{rate}"] = round(secure["p50_ms"] / max(plain["p50_ms"], 0.01), 2)
        print(json.dumps(summary), flush=True)


async def main(argv: list[str]) -> int:
    global PROFILE_DIR
    bench = Bench(parse(argv))
    PROFILE_DIR = bench.args.profile
    bench.progress.start()
    try:
        await bench.latencies()
        await bench.throughputs()
        await bench.the_rest()
        if "baseline" in bench.only:
            await bench.baseline_and_summary()
        print(json.dumps({**targets(bench.results), "broker": bench.backends.broker_name}), flush=True)
        bench.progress.stop()
        print(table(bench.results), file=sys.stderr)
    finally:
        bench.progress.stop()
        bench.backends.close()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
