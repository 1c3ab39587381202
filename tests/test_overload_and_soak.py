"""The overload run and the soak in short form, on the suite's broker: they run, and what they report
holds (figures are not asserted; `make overload` and `make soak` measure at full length)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(backends, *args: str) -> list[dict]:
    """Run a bench module on the session's broker and Postgres (its own topics and database), not on a stack of
    its own: starting another broker and server took about half of each slice's time."""
    env = os.environ | {"IPAM_TEST_KAFKA_BOOTSTRAP": backends.kafka_bootstrap,
                        "IPAM_TEST_DATABASE_URL": backends.postgres_dsn}
    out = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    lines = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert lines, out.stderr[-3000:]
    return lines


def test_overload_answers_every_request_within_its_deadline(backends):
    (result,) = _run(backends, "-m", "bench.overload", "--seconds", "6", "--warmup-seconds", "3", "--capacity-seconds", "4",
                     "--normal-seconds", "4",
                     "--recovery-seconds", "6", "--probe-rate", "20")
    assert result["service_alive"]
    assert result["sent"] >= 0.9 * result["offered_per_s"] * 6  # vegeta kept up with the offer
    assert result["unanswered"] == 0, result  # every request answered, refusals included
    # the target is none past the deadline; measured at full length by `make overload` (docs/performance.md)
    assert result["over_deadline"] <= 0.01 * result["sent"], result
    assert set(result["answers"]) <= {"201", "429", "504"}, result["answers"]
    assert result["answers"].get("429", 0) > 0, result  # twice the capacity was refused in part, at once
    assert result["service_rss_mib"]["peak"] >= result["service_rss_mib"]["start"] > 0


def test_soak_reports_every_kind_of_request_and_no_errors(backends):
    lines = _run(backends, "-m", "bench.soak", "--minutes", "0.25", "--every", "5")
    minutes, verdict = lines[:-1], lines[-1]
    assert len(minutes) >= 3 and verdict["scenario"] == "soak"
    kinds = {"lease", "review"} | ({"cni-add", "cni-del"} if os.geteuid() == 0 else set())
    assert kinds <= set(verdict["by_kind"]), verdict["by_kind"]
    assert verdict["errors"] == 0, [m["errors"] for m in minutes]
    assert all(m["service_rss_mib"] and m["service_fds"] for m in minutes)
