"""Vegeta (github.com/tsenart/vegeta, Go), the open-loop load generator of the overload run.

Why not aiohttp: at twice the service's capacity on two shared cores the Python client became the
bottleneck itself (its own loop fell behind: requests it never sent timed out on its side, and the
cancellations of tens of thousands of them stalled it for seconds), so the run measured the client.
Vegeta sends at the asked rate from a few goroutines for a fraction of the CPU.  It is built once from
Go's module proxy into ``.cache/bin`` (``go install``; ``IPAM_VEGETA`` names another binary).
"""

from __future__ import annotations

import asyncio
import base64
import csv
import io
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

VERSION = "v12.13.0"
ROOT = Path(__file__).resolve().parents[1]


def binary() -> str:
    """The vegeta binary, built on first use (needs Go)."""
    if os.environ.get("IPAM_VEGETA"):
        return os.environ["IPAM_VEGETA"]
    folder = ROOT / ".cache" / "bin"
    built = folder / "vegeta"
    if not built.exists():
        go = shutil.which("go") or "/usr/local/go/bin/go"
        folder.mkdir(parents=True, exist_ok=True)
        subprocess.run([go, "install", f"github.com/tsenart/vegeta/v12@{VERSION}"], check=True, capture_output=True,
                       env={**os.environ, "GOBIN": str(folder), "GOFLAGS": "-mod=mod"}, timeout=900)
    return str(built)


def targets(url: str, bodies: Iterable[dict]) -> bytes:
    """Vegeta's JSON target format: one POST per body, in order."""
    header = {"Content-Type": ["application/json"]}
    return b"".join(json.dumps({"method": "POST", "url": url, "header": header,
                                "body": base64.b64encode(json.dumps(b).encode()).decode()}).encode() + b"\n"
                    for b in bodies)


async def attack(targets_file: Path, rate: int, seconds: float, timeout_s: float, workers: int = 0) -> bytes:
    """Send the targets at ``rate`` a second for ``seconds`` (``rate`` 0: ``workers`` clients as fast as each
    is answered); vegeta's results, to ``decode`` once the run's other clients are done (decoding holds the
    event loop for a while, which would stall the probes sent beside it)."""
    args = [binary(), "attack", "-format=json", "-lazy", f"-targets={targets_file}", f"-rate={rate}/1s",
            f"-duration={seconds}s", f"-timeout={timeout_s}s", "-keepalive=true"]
    if rate == 0:
        args += [f"-workers={workers}", f"-max-workers={workers}"]
    attack_proc = await asyncio.create_subprocess_exec(*args, stdout=asyncio.subprocess.PIPE,
                                                       stderr=asyncio.subprocess.PIPE)
    results, err = await attack_proc.communicate()
    if attack_proc.returncode != 0:
        raise RuntimeError(f"vegeta attack failed: {err.decode()[-2000:]}")
    return results


def decode(results: bytes, errors: dict[str, int] | None = None) -> list[tuple[float, float, int | None]]:
    """One (sent at, seconds to answer, HTTP status or None when no answer came) per request, ``sent at`` on
    ``time.perf_counter``'s clock like the probes'.  ``errors``: counts of the client's errors (a timeout, a
    reset connection), by their last detail."""
    wall_to_mono = time.perf_counter() - time.time()
    encoded = subprocess.run([binary(), "encode", "--to", "csv"], input=results, capture_output=True, check=True).stdout
    out = []
    for row in csv.reader(io.StringIO(encoded.decode())):
        sent_ns, code, latency_ns = int(row[0]), int(row[1]), int(row[2])
        out.append((sent_ns / 1e9 + wall_to_mono, latency_ns / 1e9, code or None))
        if row[5] and errors is not None:
            reason = row[5].rsplit(": ", 1)[-1][:80]
            errors[reason] = errors.get(reason, 0) + 1
    return out
