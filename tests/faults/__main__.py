"""python -m tests.faults [--runs N] [--seconds S] [--seed FIRST]: one JSON line per run, then a total."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from ipam import telemetry

from ..backends import PrivatePostgres
from .driver import Run


async def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.faults")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--seed", type=int, default=1, help="seed of the first run; run k uses seed + k")
    ap.add_argument("--keep", action="store_true", help="keep the Postgres server when a run finds violations")
    ap.add_argument("--keep-postgres", action="store_true",
                    help="always keep the Postgres server (to inspect or `ipam rebuild` it)")
    args = ap.parse_args(argv)
    telemetry.configure_logs("error", "console")
    pg = PrivatePostgres().start()
    totals = {"runs": 0, "kills": 0, "failpoint_deaths": 0, "failpoints": {}, "rebalances": 0, "duplicates_injected": 0,
              "poison_records": 0, "violations": 0,
              "seeds": []}
    try:
        for k in range(args.runs):
            try:
                result = await Run(args.seed + k, args.seconds, pg).run()
            except Exception as e:  # a run that cannot finish is a failure, not the end of the batch
                result = {"seed": args.seed + k, "kills": 0, "failpoint_deaths": 0, "failpoints": {}, "rebalances": 0,
                          "duplicates_injected": 0, "poison_records": 0, "violations": [f"run failed: {e!r}"]}
            print(json.dumps(result), flush=True)
            totals["runs"] += 1
            totals["seeds"].append(result["seed"])
            for key in ("kills", "failpoint_deaths", "rebalances", "duplicates_injected", "poison_records"):
                totals[key] += result[key]
            for name, count in result["failpoints"].items():
                totals["failpoints"][name] = totals["failpoints"].get(name, 0) + count
            totals["violations"] += len(result["violations"])
    finally:
        if args.keep_postgres or (args.keep and totals["violations"]):
            print(json.dumps({"kept_postgres": pg.dsn, "data": pg.dir}), flush=True)
        else:
            pg.destroy()
    print(json.dumps({"total": totals}), flush=True)
    return 0 if totals["violations"] == 0 else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
