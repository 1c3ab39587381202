"""CI runs the benchmarks in their quick form only to check that they still run and report (figures are not
asserted: timing assertions do not belong in a test suite).  To keep ``make test`` short it runs the scenarios
of every kind of measurement once (plain latency, webhook, the MAC pipeline, baseline, CNI, the large-state ones);
``make bench-quick`` runs every scenario, the HTTPS, webhook-IP, IP-latency and IP-pipeline variants too."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from bench.cpu import CpuWindow

from .apache_kafka import kafka_version

ROOT = Path(__file__).resolve().parents[1]
ONLY = "latency,webhook,pipeline,baseline,cni,takeover,rebuild,memory,metrics-scrape,log-growth"
SCENARIOS = {"latency@100/s", "webhook@100/s", "pipeline", "cni-ipam", "cni-host-local",
             "populate", "takeover", "memory", "rebuild", "baseline", "summary", "log-growth",
             "metrics-scrape", "targets"}
# issue 24's "Done when": the keys of the targets line (None where a quick run does not measure the figure)
TARGET_KEYS = {"pipeline_one_pool_leases_per_s", "ratio_to_baseline", "cpu_us_per_lease_pipeline",
               "cpu_us_per_lease_rest_at_500", "rest_p50_ms_at_500", "rest_p99_ms_at_500", "webhook_p99_ms_at_200",
               "webhook_answers_over_deadline_at_500", "latency_growth_after_100k", "bytes_per_lease", "takeover_s_1m",
               "rebuild_s_1m", "broker"}


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
    assert TARGET_KEYS <= set(by["targets"])
    for scenario in ("latency@100/s", "webhook@100/s", "pipeline"):  # CPU a lease, per process of the stack
        figures = by[scenario]
        assert figures["cpu_us_per_lease_service"] > 0 and figures["cpu_us_per_lease_postgres"] > 0
        parts = sum(v for k, v in figures.items() if k.startswith("cpu_us_per_lease_"))
        assert abs(figures["cpu_us_per_lease"] - parts) < 1
    assert by["targets"]["cpu_us_per_lease_pipeline"] == by["pipeline"]["cpu_us_per_lease"]
    assert by["targets"]["broker"] in ("local", f"apache-kafka {kafka_version()}")  # what the figures were measured on


def test_cpu_window_counts_descendants_that_exited():
    """A grandchild that burns CPU and exits inside the window is counted (reaped children's time)."""
    parent = subprocess.Popen(["sh", "-c", f"{sys.executable} -c 'import time\nt=time.process_time()\n"
                                           "while time.process_time() - t < 0.5: pass'; sleep 30"])
    window = CpuWindow({"parent": parent.pid, "gone": 2 ** 22 + 1}).start()
    time.sleep(2)  # the grandchild has run and exited; the shell is sleeping
    used = window.stop()
    parent.kill()
    parent.wait()
    assert used["gone"] == 0.0
    assert 0.3 <= used["parent"] < 2.0, used
