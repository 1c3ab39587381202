"""ADDs per second through the real bridge plugin, each pod in its own network namespace: ipam-cni
against host-local (the reference plugins' node-local IPAM, which coordinates with nothing) in the
same run, so the ratio says what asking ipam costs.  Needs root (``ip netns``)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from tests.cni import bridge_conf, netns, node_file, plugin_dir, pod_args, run_plugin


def _percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


async def _round(cni_path: Path, conf: dict, env: dict, pods: int, label: str) -> dict:
    spaces = [netns("ipamb") for _ in range(pods + 1)]
    try:
        async def one(i: int) -> float:
            started = time.monotonic()
            container = f"b{i}-{uuid.uuid4().hex[:6]}"
            outcome = await run_plugin(cni_path, "bridge", "ADD", conf, container=container, netns_path=spaces[i].path,
                                       args=pod_args("bench", f"pod-{i}", f"uid-{i}-{container}", container), env=env)
            assert outcome.code == 0, outcome
            return time.monotonic() - started

        await one(pods)  # the first ADD makes the bridge (and, for ipam, defines the network): not timed
        started = time.monotonic()
        took = await asyncio.gather(*(one(i) for i in range(pods)))
        elapsed = time.monotonic() - started
        configured = {a for ns in spaces[:pods] for a in ns.addresses("net1")}
        assert len(configured) == pods, f"{len(configured)} distinct addresses configured for {pods} pods"
        return {"scenario": f"cni-{label}", "pods": pods, "concurrent": pods, "seconds": round(elapsed, 2),
                "pods_per_s": round(pods / elapsed, 1), "add_p50_ms": round(_percentile(took, 0.5) * 1000, 1),
                "add_p99_ms": round(_percentile(took, 0.99) * 1000, 1)}
    finally:
        for ns in spaces:
            ns.delete()
        subprocess.run(["ip", "link", "del", conf["bridge"]], capture_output=True)


async def measure_cni(url: str, pods: int = 200) -> list[dict]:
    if os.geteuid() != 0:
        return [{"scenario": "cni", "skipped": "needs root for network namespaces"}]
    folder = Path(tempfile.mkdtemp(prefix="ipam-bench-cni-"))
    cni_path = plugin_dir(folder / "bin")
    ipam = await _round(cni_path, bridge_conf("bench-cni", "ipambench0", {"range": "10.88.0.0/20"}),
                        node_file(folder, url), pods, "ipam")
    local = await _round(cni_path, {**bridge_conf("bench-local", "ipambench1", {}), "ipam": {
        "type": "host-local", "subnet": "10.87.0.0/20", "dataDir": str(folder / "host-local")}}, {}, pods, "host-local")
    ipam["ratio_to_host_local"] = round(ipam["pods_per_s"] / max(local["pods_per_s"], 0.01), 2)
    ipam["how"] = (f"{pods} concurrent bridge ADDs delegating to ipam-cni (a zipapp under the system python3), each in its "
                   "own netns; host-local the same in this run")
    return [ipam, local]
