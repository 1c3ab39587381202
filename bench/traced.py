"""python -m bench.traced DIR SECONDS -- python -m ipam serve ...: the service under tracemalloc.

What the soak uses to find what grows (``--trace-memory DIR``): tracing starts before ipam is
imported, and a thread writes a snapshot every SECONDS (``DIR/NNNN.snapshot``), so the first and
last can be compared by traceback (``python -m bench.traced --compare DIR``).  Tracing slows the
service a few times over: its latency figures are not the soak's.
"""

from __future__ import annotations

import collections
import gc
import json
import os
import runpy
import sys
import threading
import time
import tracemalloc
from pathlib import Path

FRAMES = int(os.environ.get("IPAM_TRACE_FRAMES", "12"))


def _write_snapshots(folder: Path, every: float) -> None:
    """A snapshot of traced blocks and a count of live objects by type, every ``every`` seconds: objects
    made by C or Cython code (uvloop, asyncpg's protocol) have no Python frame of their own, and show
    up by type when the traceback ends at the event loop."""
    taken = 0
    while True:
        if tracemalloc.is_tracing():
            tracemalloc.take_snapshot().dump(str(folder / f"{taken:04d}.snapshot"))
        types = collections.Counter(type(o).__qualname__ for o in gc.get_objects())
        (folder / f"{taken:04d}.types.json").write_text(json.dumps(types))
        taken += 1
        time.sleep(every)


def compare(folder: Path, top: int = 25, start: int = 1) -> list[str]:
    """What grew between snapshot ``start`` (after warm-up: the soak's is 16 minutes) and the last: objects
    by type, blocks by traceback."""
    counts = [json.loads(f.read_text()) for f in sorted(folder.glob("*.types.json"))]
    a, b = counts[min(start, len(counts) - 1)], counts[-1]
    grown = sorted(((b.get(k, 0) - a.get(k, 0), k) for k in b), reverse=True)[:top]
    lines = [f"objects by type, {len(counts)} counts: " + ", ".join(f"{k} {a.get(k, 0)}->{b[k]}" for _, k in grown)]
    files = sorted(folder.glob("*.snapshot"))
    if not files:
        return lines
    first, last = (tracemalloc.Snapshot.load(str(f)) for f in (files[min(start, len(files) - 1)], files[-1]))
    lines += [f"{len(files)} snapshots; traced {sum(s.size for s in first.statistics('filename')) / 2**20:.1f} MiB -> "
             f"{sum(s.size for s in last.statistics('filename')) / 2**20:.1f} MiB"]
    for stat in last.compare_to(first, "traceback")[:top]:
        lines.append(f"{stat.size_diff / 1024:+.1f} KiB ({stat.count_diff:+d} blocks), now {stat.size / 1024:.1f} KiB")
        lines.extend("    " + line for line in stat.traceback.format()[-8:])
    return lines


def main(argv: list[str]) -> None:
    if argv[:1] == ["--compare"]:  # --compare DIR [FROM]: from snapshot FROM (default 1) to the last
        print("\n".join(compare(Path(argv[1]), start=int(argv[2]) if len(argv) > 2 else 1)))
        return
    folder, every, rest = Path(argv[0]), float(argv[1]), argv[argv.index("--") + 1:]
    folder.mkdir(parents=True, exist_ok=True)
    if os.environ.get("IPAM_TRACE_BLOCKS", "1") != "0":
        tracemalloc.start(FRAMES)
    threading.Thread(target=_write_snapshots, args=(folder, every), daemon=True, name="tracemalloc").start()
    module = rest[rest.index("-m") + 1]  # `python -m ipam serve ...`: run that module as the main one
    sys.argv = [module, *rest[rest.index("-m") + 2:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
