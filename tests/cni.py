"""The CNI reference plugins (Debian's containernetworking-plugins), network namespaces, and running a
plugin the way Multus does: the verb and the container in the environment, the configuration on stdin.

The plugins and ``ping`` are fetched from Debian once (``apt-get download`` + ``dpkg -x``, no
installation) into ``.cache/debian`` of the checkout, or ``IPAM_TEST_CACHE``.  ``ipam-cni`` is
built as the DaemonSet builds it (a zipapp of the standard library) and run by the system's own
``python3``, not the test virtualenv: what runs on a node is exactly what is tested.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

from ipam.cni.install import install_plugin

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("IPAM_TEST_CACHE", ROOT / ".cache" / "debian"))
PACKAGES = {"containernetworking-plugins": "usr/lib/cni/bridge", "iputils-ping": "bin/ping",
            "cloud-init": "usr/lib/python3/dist-packages/cloudinit/cmd/main.py"}


def debian_tool(package: str) -> Path:
    """The root a Debian package was unpacked into, fetched on first use."""
    root = CACHE / package
    if (root / PACKAGES[package]).exists():
        return root
    CACHE.mkdir(parents=True, exist_ok=True)
    download = CACHE / "downloads"
    download.mkdir(exist_ok=True)
    subprocess.run(["apt-get", "download", package], cwd=download, check=True, capture_output=True)
    (deb,) = download.glob(f"{package}_*.deb")
    tmp = CACHE / f".{package}.{uuid.uuid4().hex[:6]}"
    subprocess.run(["dpkg", "-x", str(deb), str(tmp)], check=True)
    tmp.rename(root)
    return root


def plugin_dir(folder: Path) -> Path:
    """A CNI_PATH: the reference plugins and ipam-cni, run by the system's python3."""
    folder.mkdir(parents=True, exist_ok=True)
    for plugin in (debian_tool("containernetworking-plugins") / "usr/lib/cni").iterdir():
        shutil.copy(plugin, folder / plugin.name)
    system_python = shutil.which("python3", path="/usr/bin:/bin") or sys.executable
    install_plugin(str(folder), system_python + " -I")
    return folder


def ping_binary() -> str:
    return str(debian_tool("iputils-ping") / "bin/ping")


@dataclass
class Netns:
    name: str

    @property
    def path(self) -> str:
        return f"/var/run/netns/{self.name}"

    def run(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", self.name, *args], capture_output=True, text=True, timeout=30)

    def addresses(self, ifname: str) -> set[str]:
        """Global addresses on an interface, as ``address/prefix`` (``ip -j addr``)."""
        shown = json.loads(self.run("ip", "-j", "addr", "show", "dev", ifname).stdout or "[]")
        return {f"{a['local']}/{a['prefixlen']}" for link in shown for a in link.get("addr_info", [])
                if a.get("scope") == "global"}

    def delete(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)


def netns(prefix: str = "ipamt") -> Netns:
    ns = Netns(f"{prefix}-{uuid.uuid4().hex[:8]}")
    subprocess.run(["ip", "netns", "add", ns.name], check=True)
    return ns


@dataclass
class Outcome:
    code: int  # exit status
    answer: dict | None  # stdout as JSON (a result, or an error object)
    stderr: str

    @property
    def ips(self) -> set[str]:
        return {ip["address"] for ip in (self.answer or {}).get("ips", [])}


async def run_plugin(cni_path: Path, plugin: str, command: str, conf: dict, *, container: str, netns_path: str = "",
                     ifname: str = "net1", args: dict[str, str] | None = None, env: dict[str, str] | None = None
                     ) -> Outcome:
    """One CNI call, as a runtime makes it."""
    environ = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CNI_COMMAND": command, "CNI_CONTAINERID": container,
               "CNI_NETNS": netns_path, "CNI_IFNAME": ifname, "CNI_PATH": str(cni_path),
               "CNI_ARGS": ";".join(["IgnoreUnknown=1", *(f"{k}={v}" for k, v in (args or {}).items())]), **(env or {})}
    proc = await asyncio.create_subprocess_exec(str(cni_path / plugin), stdin=asyncio.subprocess.PIPE,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                                                env=environ)
    out, err = await asyncio.wait_for(proc.communicate(json.dumps(conf).encode()), 60)
    try:
        answer = json.loads(out) if out.strip() else None
    except ValueError:
        answer = {"unparsed": out.decode(errors="replace")}
    return Outcome(proc.returncode, answer, err.decode(errors="replace"))


def pod_args(namespace: str, name: str, uid: str, container: str) -> dict[str, str]:
    """CNI_ARGS as Multus passes them for a pod."""
    return {"K8S_POD_NAMESPACE": namespace, "K8S_POD_NAME": name, "K8S_POD_INFRA_CONTAINER_ID": container,
            "K8S_POD_UID": uid}


def bridge_conf(name: str, bridge: str, ipam: dict, version: str = "1.0.0") -> dict:
    return {"cniVersion": version, "name": name, "type": "bridge", "bridge": bridge, "ipam": {"type": "ipam-cni", **ipam}}


def node_file(folder: Path, url: str, kubeconfig: str = "") -> dict[str, str]:
    """The node file the DaemonSet writes, and the environment that makes the plugin read it."""
    path = folder / "ipam-cni.conf"
    path.write_text(json.dumps({"url": url, **({"kubeconfig": kubeconfig} if kubeconfig else {})}))
    return {"IPAM_CNI_CONF": str(path)}


def kubeconfig(folder: Path, server: str) -> str:
    """A kubeconfig in JSON (the form the DaemonSet writes) for the test API server."""
    path = folder / "kubeconfig.json"
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "t",
        "clusters": [{"name": "c", "cluster": {"server": server}}], "users": [{"name": "u", "user": {"token": "x"}}],
        "contexts": [{"name": "t", "context": {"cluster": "c", "user": "u"}}]}))
    return str(path)
