"""CI runs the benchmarks in their quick form only to check that they still run and report (figures are not
asserted: timing assertions do not belong in a test suite).  To keep ``make test`` short it runs the scenarios
of every kind of measurement once (plain latency, webhook, the MAC pipeline, baseline, CNI, the large-state ones);
``make bench-quick`` runs every scenario, the HTTPS, webhook-IP, IP-latency and IP-pipeline variants too."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from .apache_kafka import kafka_version

ROOT = Path(__file__).resolve().parents[1]
ONLY = "latency,webhook,pipeline,baseline,cni,takeover,rebuild,memory,metrics-scrape,log-growth"
SCENARIOS = {"latency@100/s", "webhook@100/s", "pipeline", "cni-ipam", "cni-host-local",
             "populate", "takeover", "memory", "rebuild", "baseline", "summary", "log-growth",
             "metrics-scrape", "targets"}


def test_bench_quick_runs_every_scenario():
    out = subprocess.run([sys.executable, "-m", "bench", "--quick", "--only", ONLY], cwd=ROOT, capture_output=True, text=True,
                         timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    results = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert {r["scenario"] for r in results} == SCENARIOS
    by = {r["scenario"]: r for r in results}
    assert by["pipeline"]["committed"] == by["pipeline"]["sent"] == by["pipeline"]["distinct_macs"]
    assert by["takeover"]["leases"] == by["populate"]["leases"] == 5_000
    assert by["rebuild"]["equal"] is True and by["rebuild"]["events"] >= 5_000
    assert by["cni-ipam"]["pods"] == by["cni-host-local"]["pods"] == 20
    assert by["log-growth"]["commands"] == 2_000 and by["log-growth"]["push_errors"] == 0
    assert all(r.get("errors", 0) == 0 and r.get("denied", 0) == 0 for r in results)
    assert by["targets"]["broker"] in ("local", f"apache-kafka {kafka_version()}")  # what the figures were measured on
