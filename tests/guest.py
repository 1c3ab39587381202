"""networkData rendered the way a guest renders it: Debian's cloud-init (fetched like the CNI plugins, with
``apt-get download`` + ``dpkg -x``), ``cloud-init devel net-convert`` into netplan, systemd-networkd and
sysconfig files, run by the test interpreter with cloud-init's own modules on its path."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from .cni import debian_tool

RENDERERS = {"netplan": "debian", "networkd": "debian", "sysconfig": "rhel"}  # renderer -> the distro that uses it


def net_convert(network_data: str, kind: str, renderer: str, out: Path, macs: dict[str, str] | None = None) -> dict[str, str]:
    """Render ``network_data`` (``kind``: yaml for version 1 and 2, network_data.json for a ConfigDrive) with
    cloud-init's ``renderer``; the files written, by path relative to ``out``.  ``macs``: the guest's NICs
    (name -> MAC), which a ConfigDrive's links are matched to."""
    root = debian_tool("cloud-init") / "usr/lib/python3/dist-packages"
    source = out / f"network-data.{'json' if kind == 'network_data.json' else 'yaml'}"
    out.mkdir(parents=True, exist_ok=True)
    source.write_text(network_data)
    args = [sys.executable, "-m", "cloudinit.cmd.main", "devel", "net-convert", "-p", str(source), "-k", kind,
            "-d", str(out / renderer), "-D", RENDERERS[renderer], "-O", renderer]
    for name, mac in (macs or {}).items():
        args += ["-m", f"{name},{mac}"]
    done = subprocess.run(args, env={**os.environ, "PYTHONPATH": str(root)}, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return {str(p.relative_to(out / renderer)): p.read_text() for p in (out / renderer).rglob("*") if p.is_file()}
