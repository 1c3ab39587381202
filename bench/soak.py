"""python -m bench.soak [--minutes M] [--broker B]: a mixed load against `ipam serve` (all roles) for M minutes.

Every second, at fixed offered rates: new MAC leases, releases and repeats (the same owner asks
again: the sticky answer) over REST, AdmissionReviews of VMs over HTTPS to the webhook, and pods
ADDed and DELed through the real bridge plugin delegating to ipam-cni (as root).  The
owners cycle through a fixed set, so live leases stay bounded and what grows, if anything, is the
service's own state.  As in a cluster, a Kubernetes API (the suite's test API server, speaking list and watch)
runs beside the service, so its watcher lapses the provisional leases of reviewed VMs that never appear
(``--pending-seconds``): without it every review of a VM name leased three more MACs that nobody released,
and that, not a leak, was the ~1 MiB a minute the first soaks grew by (docs/performance.md).  Every minute one
JSON line: RSS and open file descriptors of the service
and of the broker, p50/p99 per kind of request, errors.  At the end one line ``soak`` compares the
last minutes with the first ten (after a minute of warm-up): memory and latency must end within 10 %.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from bench.load import percentile
from bench.stack import Stack
from tests.backends import select_backends
from tests.cni import bridge_conf, netns, node_file, plugin_dir, pod_args, run_plugin
from tests.kube_api import FakeKubeApi
from tests.kubevirt import WebhookTls, review, vm_manifest

OWNERS = 3000  # owners cycle through this set: bounded live leases
NAMESPACES = 16  # the reviews' namespaces (soak-0 ... soak-15)
REST_CLUSTER = "soak-rest"  # the cluster of the REST owners


def client_sockets(pid: int) -> int:
    """How many of the process's open files are connections clients opened to its listeners.  The load's
    keep-alive pools hold as many as were ever in flight at once (up to their limits, 200 and 32), so a slow
    minute raises the count for good: that is the clients' doing, not a leak, and is counted apart."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(FileNotFoundError):  # closed since the listing
            inodes.add(os.readlink(f"/proc/{pid}/fd/{fd}").removeprefix("socket:[").removesuffix("]"))
    rows = [line.split() for name in ("tcp", "tcp6") for line in Path(f"/proc/{pid}/net/{name}").read_text().splitlines()[1:]]
    mine = [(r[1].rsplit(":", 1)[1], r[3]) for r in rows if r[9] in inodes]  # (local port, state)
    listening = {port for port, state in mine if state == "0A"}
    return sum(1 for port, state in mine if state == "01" and port in listening)


def process_figures(pid: int | None) -> dict:
    if not pid:
        return {}
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        rss_kib = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))
        fds, clients = len(os.listdir(f"/proc/{pid}/fd")), client_sockets(pid)
        return {"rss_mib": round(rss_kib / 1024, 1), "fds": fds, "own_fds": fds - clients, "client_sockets": clients}
    except (OSError, StopIteration):
        return {"gone": True}


class Pods:
    """Pods through the bridge plugin and ipam-cni, each in a network namespace of its own.

    A fixed set of slots (namespaces) is reused in turn: a slot's pod is DELed at its next turn and
    a new pod ADDed at the turn after, so the live pods stay bounded while every call is a real one."""

    def __init__(self, url: str, folder: Path, slots: int = 16) -> None:
        self.cni_path = plugin_dir(folder / "bin")
        self.env = node_file(folder, url)
        # a bridge and range of this run's own: two soaks (one per broker) may run side by side
        self.conf = bridge_conf("soak-cni", f"ipamsoak{os.getpid() % 10_000}", {"range": f"10.{70 + os.getpid() % 8}.0.0/16"})
        self.spaces = [netns("ipams") for _ in range(slots)]
        self.pods: list[str | None] = [None] * slots
        self.locks = [asyncio.Lock() for _ in range(slots)]
        self.turn = self.made = 0

    async def one(self, note) -> None:
        slot, self.turn = self.turn % len(self.spaces), self.turn + 1
        async with self.locks[slot]:
            container = self.pods[slot]
            if container is None:
                self.made += 1
                container, verb = f"soak{self.made}-{slot}", "ADD"
            else:
                verb = "DEL"
            started = time.perf_counter()
            try:
                outcome = await run_plugin(self.cni_path, "bridge", verb, self.conf, container=container,
                                           netns_path=self.spaces[slot].path, env=self.env,
                                           args=pod_args("soak-cni", f"pod-{container}", f"uid-{container}", container))
                ok = outcome.code == 0
            except TimeoutError:
                ok, outcome = False, None
            note(f"cni-{verb.lower()}", started, ok, None if ok or outcome is None else outcome.code)
            if ok:
                self.pods[slot] = container if verb == "ADD" else None

    def close(self) -> None:
        for space in self.spaces:
            space.delete()
        subprocess.run(["ip", "link", "del", self.conf["bridge"]], capture_output=True)


class Load:
    def __init__(self, stack: Stack, tls: WebhookTls, rest_rate: int, review_rate: int,
                 pods: Pods | None = None, cni_rate: int = 0) -> None:
        self.stack, self.tls, self.rest_rate, self.review_rate = stack, tls, rest_rate, review_rate
        self.pods, self.cni_rate = pods, cni_rate if pods is not None else 0
        self.rng = random.Random(7)
        self.held: set[int] = set()
        self.in_flight: set[int] = set()  # owners with a REST request under way
        self.minute: dict[str, list[float]] = {}
        self.errors: dict[str, int] = {}
        self.reviews = 0

    def _note(self, kind: str, started: float, ok: bool, status: int | None = None) -> None:
        self.minute.setdefault(kind, []).append((time.perf_counter() - started) * 1000)
        if not ok:  # counted by kind and HTTP status ("release:404"), so a minute's errors say what they were
            key = kind if status is None else f"{kind}:{status}"
            self.errors[key] = self.errors.get(key, 0) + 1

    async def rest_one(self, http) -> None:
        i = self.rng.randrange(OWNERS)
        # of another cluster sharing the pool: this cluster's watcher (which releases VMs it does not list) leaves
        # them to that cluster's, so they live until the soak releases them
        body = {"namespace": f"soak-{i % 16}", "vm": f"vm-{i}", "vm_uid": f"u{i}", "interface": "eth0", "cluster": REST_CLUSTER}
        if i in self.in_flight:  # one request per owner at a time: a repeat answered after a release re-marked the
            return  # owner held, and its next release was a 404 (the load generator's race, ~1 in 3 minutes)
        self.in_flight.add(i)
        started = time.perf_counter()
        try:
            if i in self.held and self.rng.random() < 0.4:
                # taken out before the DELETE is sent: two releases of one VM in flight made the second a 404,
                # the load generator's race, counted as the service's error in the first soak of 2026-12-07
                self.held.discard(i)
                async with http.delete(f"{self.stack.svc.url}/v1/mac-leases/soak-{i % 16}/vm-{i}",
                                       params={"cluster": REST_CLUSTER}) as r:
                    await r.read()
                    self._note("release", started, r.status == 200, r.status)
                return
            kind = "repeat" if i in self.held else "lease"
            async with http.post(f"{self.stack.svc.url}/v1/mac-leases", json=body) as r:
                await r.read()
                if r.status in (200, 201):
                    self.held.add(i)
                self._note(kind, started, r.status in (200, 201), r.status)
        except (aiohttp.ClientError, TimeoutError):
            self._note("rest", started, False)
        finally:
            self.in_flight.discard(i)

    async def review_one(self, http) -> None:
        self.reviews += 1
        body = review(vm_manifest(f"soak-vm-{self.reviews % OWNERS}", namespace=f"soak-{self.reviews % NAMESPACES}"))
        started = time.perf_counter()
        try:
            async with http.post(self.stack.webhook_url, json=body) as r:
                answer = await r.json()
                self._note("review", started, bool(answer["response"]["allowed"]))
        except (aiohttp.ClientError, TimeoutError, KeyError):
            self._note("review", started, False)

    async def run(self, seconds: float, every: float, report) -> None:
        rest = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=200))
        hook = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=32, ssl=self.tls.client_context()))
        tasks: set[asyncio.Task] = set()
        start = next_report = time.perf_counter()
        sent, total = 0, self.rest_rate + self.review_rate + self.cni_rate
        try:
            while (now := time.perf_counter()) - start < seconds:
                due = int((now - start) * total)
                while sent < due:  # open loop: fixed offered rates, answers never hold up the next request
                    one = self._next(sent % total, rest, hook)
                    task = asyncio.create_task(one)
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                    sent += 1
                if now >= next_report + every:
                    next_report += every
                    report(self.take_minute())
                await asyncio.sleep(0.005)
            await asyncio.gather(*tasks)
            report(self.take_minute())
        finally:
            await rest.close()
            await hook.close()

    def _next(self, turn: int, rest, hook):
        """The request for this turn of the second: reviews first, then CNI calls, then REST."""
        if turn < self.review_rate:
            return self.review_one(hook)
        if turn < self.review_rate + self.cni_rate:
            return self.pods.one(self._note)
        return self.rest_one(rest)

    def take_minute(self) -> dict:
        lat, self.minute = self.minute, {}
        errors, self.errors = self.errors, {}
        every = [v for values in lat.values() for v in values]
        return {"requests": len(every), "p50_ms": round(percentile(every, 0.5), 2) if every else None,
                "p99_ms": round(percentile(every, 0.99), 2) if every else None,
                "by_kind": {k: {"n": len(v), "p50_ms": round(percentile(v, 0.5), 2), "p99_ms": round(percentile(v, 0.99), 2)}
                            for k, v in sorted(lat.items())},
                "errors": errors}


# The service's bounded state fills for this long before it is steady: a released address stays quarantined
# IPAM_QUARANTINE_SECONDS (600) and a review's provisional lease lapses after IPAM_PENDING_SECONDS (300),
# and each is forgotten after; comparing memory before that would measure the filling, not a leak.
WARMUP_MINUTES = (600 + 300) // 60 + 1


def verdict(lines: list[dict], warmup: int = WARMUP_MINUTES) -> dict:
    """Ten minutes after the warm-up against the last ten (halves of what follows a shorter warm-up when the
    run is short): memory, open files, and p50/p99 over all requests and of each kind (a CNI call costs
    two process starts, so the mix alone would make p99 a CNI figure)."""
    if len(lines) < warmup + 20:
        warmup = min(1, len(lines) - 1)
    body = lines[warmup:]
    span = 10 if len(body) >= 20 else max(1, len(body) // 2)
    first, last = body[:span], body[-span:]

    def mean(rows, pick):
        values = [v for r in rows if (v := pick(r)) is not None]
        return sum(values) / len(values) if values else None

    def compare(pick) -> dict:
        a, b = mean(first, pick), mean(last, pick)
        return {"first": round(a, 2) if a else a, "last": round(b, 2) if b else b,
                "growth": round(b / a, 3) if a and b else None}

    out = {"scenario": "soak", "minutes": len(lines), "compared": [warmup + 1, warmup + span, len(lines) - span + 1, len(lines)],
           "errors": sum(sum(r["errors"].values()) for r in lines)}
    for key in ("service_rss_mib", "service_fds", "service_own_fds", "service_client_sockets", "broker_rss_mib",
                "broker_fds", "p50_ms", "p99_ms"):
        out[key] = compare(lambda r, key=key: r.get(key))
    kinds = sorted({k for r in lines for k in r.get("by_kind", {})})
    out["by_kind"] = {k: {q: compare(lambda r, k=k, q=q: r.get("by_kind", {}).get(k, {}).get(q))
                          for q in ("p50_ms", "p99_ms")} for k in kinds}
    growths = [out[k]["growth"] for k in ("service_rss_mib", "p50_ms", "p99_ms")] + \
        [v["growth"] for kind in out["by_kind"].values() for v in kind.values()]
    own = out["service_own_fds"] if out["service_own_fds"]["first"] else out["service_fds"]  # runs before it was counted
    out["flat"] = all((g or 0) <= 1.10 for g in growths) and own["last"] <= own["first"] + 20
    return out


async def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    ap.add_argument("--minutes", type=float, default=60)
    ap.add_argument("--rest-rate", type=int, default=40, help="REST requests per second (leases, releases, repeats)")
    ap.add_argument("--review-rate", type=int, default=10, help="AdmissionReviews per second")
    ap.add_argument("--cni-rate", type=int, default=5, help="CNI calls per second (ADD and DEL in turn; as root)")
    ap.add_argument("--every", type=float, default=60, help="seconds between JSON lines")
    ap.add_argument("--broker", choices=("apache-kafka", "local"), default=None, help="as python -m bench")
    ap.add_argument("--trace-memory", metavar="DIR", help="run the service under tracemalloc, a snapshot a minute in DIR")
    ap.add_argument("--pending-seconds", type=int, default=60,
                    help="IPAM_PENDING_SECONDS: how long a reviewed VM that never appears keeps its provisional leases "
                         "(short, so the soak reaches its steady state within the warm-up)")
    args = ap.parse_args(argv)
    if args.broker:
        os.environ["IPAM_TEST_BROKER"] = args.broker
    backends = select_backends()
    tls = WebhookTls(Path(tempfile.mkdtemp(prefix="ipam-soak-tls-")))
    lines: list[dict] = []
    kube = await FakeKubeApi().start()
    try:
        for i in range(NAMESPACES):
            await kube.put("namespaces", {"metadata": {"name": f"soak-{i}"}})
        wrapper = (sys.executable, "-m", "bench.traced", args.trace_memory, "60", "--") if args.trace_memory else ()
        cluster = {"IPAM_KUBE_API": kube.url, "IPAM_PENDING_SECONDS": str(args.pending_seconds)}
        async with Stack(backends, tls, partitions=8, wrapper=wrapper, extra_env=cluster) as stack:
            broker_pid = backends.process_roots().get("broker")
            pods = Pods(stack.svc.url, Path(tls.folder) / "cni") if args.cni_rate and os.geteuid() == 0 else None

            def report(minute: dict) -> None:
                service, broker = process_figures(stack.svc.proc.pid), process_figures(broker_pid)
                line = {"minute": len(lines) + 1, "service_rss_mib": service.get("rss_mib"), "service_fds": service.get("fds"),
                        "service_own_fds": service.get("own_fds"), "service_client_sockets": service.get("client_sockets"),
                        "broker_rss_mib": broker.get("rss_mib"), "broker_fds": broker.get("fds"), **minute}
                lines.append(line)
                print(json.dumps(line), flush=True)

            try:
                await Load(stack, tls, args.rest_rate, args.review_rate, pods, args.cni_rate).run(
                    args.minutes * 60, args.every, report)
            finally:
                if pods is not None:
                    pods.close()
    finally:
        await kube.stop()
        backends.close()
    result = verdict(lines)
    print(json.dumps(result), flush=True)
    return 0 if result["flat"] and result["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
