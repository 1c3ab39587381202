"""python -m tests.faults [--scenario chaos|kills|broker-kills|broker-partition|network] [--runs N] [--seconds S] [--seed FIRST]:
one JSON line per run, then a total."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from ipam import telemetry

from ..backends import PrivatePostgres
from .driver import SCENARIOS, Run

COUNTED = ("kills", "broker_kills", "network_faults", "failpoint_deaths", "rebalances", "duplicates_injected",
           "poison_records", "attempts", "ok_2xx", "refused_4xx", "errors_5xx", "no_answer")


async def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.faults")
    ap.add_argument("--scenario", choices=sorted(SCENARIOS), default="chaos")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--seed", type=int, default=1, help="seed of the first run; run k uses seed + k")
    ap.add_argument("--keep", action="store_true", help="keep the Postgres server when a run finds violations")
    ap.add_argument("--keep-postgres", action="store_true",
                    help="always keep the Postgres server (to inspect or `ipam rebuild` it)")
    args = ap.parse_args(argv)
    telemetry.configure_logs("error", "console")
    pg = PrivatePostgres().start()
    totals = {"scenario": args.scenario, "runs": 0, **dict.fromkeys(COUNTED, 0), "failpoints": {}, "violations": 0,
              "runs_below_target": 0, "longest_unworked_s": {}, "seeds": []}
    try:
        for k in range(args.runs):
            try:
                result = await Run(args.seed + k, args.seconds, pg, args.scenario).run()
            except Exception as e:  # a run that cannot finish is a failure, not the end of the batch
                result = {"seed": args.seed + k, **dict.fromkeys(COUNTED, 0), "failpoints": {}, "below_target": True,
                          "longest_unworked_s": {}, "violations": [f"run failed: {e!r}"]}
            print(json.dumps(result), flush=True)
            add(totals, result)
    finally:
        if args.keep_postgres or (args.keep and totals["violations"]):
            print(json.dumps({"kept_postgres": pg.dsn, "data": pg.dir}), flush=True)
        else:
            pg.destroy()
    answered = totals["attempts"] - totals["refused_4xx"]
    totals["availability"] = round(totals["ok_2xx"] / answered, 5) if answered else 1.0
    print(json.dumps({"total": totals}), flush=True)
    return 0 if totals["violations"] == 0 and totals["runs_below_target"] == 0 else 1


def add(totals: dict, result: dict) -> None:
    totals["runs"] += 1
    totals["seeds"].append(result["seed"])
    for key in COUNTED:
        totals[key] += result.get(key, 0)
    for name, count in result["failpoints"].items():
        totals["failpoints"][name] = totals["failpoints"].get(name, 0) + count
    for group, seconds in result["longest_unworked_s"].items():  # <run's prefix>-allocator -> allocator
        role = group.rsplit("-", 1)[-1]
        totals["longest_unworked_s"][role] = max(totals["longest_unworked_s"].get(role, 0), seconds)
    totals["violations"] += len(result["violations"])
    totals["runs_below_target"] += bool(result["below_target"])


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
