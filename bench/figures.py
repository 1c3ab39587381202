"""The figures of a run, for people (a table on stderr) and for issue 15's targets (one JSON line)."""

from __future__ import annotations


def table(results: list[dict]) -> str:
    lines = [f"{'scenario':<18} {'figure':<40}"]
    for r in results:
        if r["scenario"] in ("takeover", "rebuild", "populate"):
            fig = f"{r['seconds']} s for {r.get('leases', r.get('events')):,}"
        elif r["scenario"] == "memory":
            fig = f"{r['bytes_per_lease']} bytes per live lease ({r['leases']:,})"
        elif "pods_per_s" in r:
            fig = f"{r['pods_per_s']} pods/s, ADD p50 {r['add_p50_ms']} ms p99 {r['add_p99_ms']} ms ({r['pods']} at once)"
        elif r["scenario"] == "metrics-scrape":
            fig = f"scrape p50 {r['scrape_p50_ms']} ms (first {r['first_scrape_ms']} ms) at {r['leases']:,} leases"
        elif r["scenario"] == "log-growth":
            fig = (f"p50 {r['fresh_p50_ms']} -> {r['after_p50_ms']} ms ({r['growth_p50']}x) after {r['commands']:,} commands, "
                   f"{r['log_trims']} trims")
        elif "skipped" in r:
            fig = f"skipped: {r['skipped']}"
        elif "leases_per_s" in r:
            fig = f"{r['leases_per_s']:,} leases/s"
            if "ratio_to_baseline" in r:
                fig += f"  ({r['ratio_to_baseline']}x baseline)"
        else:
            fig = f"p50 {r['p50_ms']} ms  p99 {r['p99_ms']} ms  p99.9 {r['p999_ms']} ms  at {r['achieved_per_s']}/s"
        lines.append(f"{r['scenario']:<18} {fig}")
    return "\n".join(lines)


def targets(results: list[dict]) -> dict:
    """Issue 15's figures in one line, None where this run did not measure one (see docs/performance.md)."""
    by = {r["scenario"]: r for r in results}

    def get(scenario: str, key: str):
        return by.get(scenario, {}).get(key)

    one, base = get("pipeline", "leases_per_s"), get("baseline", "leases_per_s")
    return {"scenario": "targets", "pipeline_one_pool_leases_per_s": one,
            "pipeline_16_pools_leases_per_s": get("pipeline-16-pools", "leases_per_s"), "baseline_leases_per_s": base,
            "ratio_to_baseline": round(one / base, 2) if one and base else None,
            "rest_p50_ms_at_500": get("latency@500/s", "p50_ms"), "rest_p99_ms_at_500": get("latency@500/s", "p99_ms"),
            "webhook_p99_ms_at_200": get("webhook@200/s", "p99_ms"),
            "webhook_answers_over_deadline_at_500": get("webhook@500/s", "answers_over_deadline"),
            "webhook_denied_busy_at_500": get("webhook@500/s", "denied_busy"),
            **_cpu(by.get("pipeline", {}), "pipeline"), **_cpu(by.get("latency@500/s", {}), "rest_at_500"),
            **_cpu(by.get("webhook@200/s", {}), "webhook_at_200"),
            "latency_growth_after_100k": get("log-growth", "growth_p50") if get("log-growth", "commands") == 100_000 else None,
            "bytes_per_lease": get("memory", "bytes_per_lease") or get("takeover", "bytes_per_lease"),
            "takeover_s_1m": _at_1m(by, "takeover", "seconds"),
            "rebuild_s_1m": _at_1m(by, "rebuild", "seconds"),
            "metrics_scrape_ms_1m": _at_1m(by, "metrics-scrape", "scrape_p50_ms")}


def _cpu(result: dict, name: str) -> dict:
    """CPU µs a lease of one scenario, in total and per process (service, broker, postgres)."""
    figures = {key.replace("cpu_us_per_lease", f"cpu_us_per_lease_{name}", 1): value
               for key, value in result.items() if key.startswith("cpu_us_per_lease")}
    return figures or {f"cpu_us_per_lease_{name}": None}


def _at_1m(by: dict, scenario: str, key: str):
    r = by.get(scenario, {})
    return r.get(key) if r.get("leases", 0) >= 1_000_000 else None
