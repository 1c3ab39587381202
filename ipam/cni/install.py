"""What the DaemonSet does on every node: put ``ipam-cni`` into the CNI bin directory, and write the
node file (where ipam is, the token and CA to reach it, a kubeconfig to read pods) next to the
CNI configurations, as Whereabouts does.

The plugin is written as a zipapp of the modules it needs (this package and the domain
modules it reads: multus, cniconf and errors, all standard library) run by the node's ``python3``.  The service account's
token is copied again whenever it rotates (``--watch``)."""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import socket
import tempfile
import time
import urllib.parse
import zipapp
import zipfile
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent  # ipam/
MODULES = ["__init__.py", "domain/__init__.py", "domain/cluster/__init__.py", "domain/cluster/multus.py",
           "domain/cluster/cniconf.py", "domain/errors.py",
           *(f"cni/{p.name}" for p in sorted((PACKAGE / "cni").glob("*.py")))]
SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")


def _replace(path: Path, data: bytes, mode: int) -> None:
    """Atomically: a runtime executing the old plugin meanwhile never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def plugin_archive(interpreter: str = "/usr/bin/env python3") -> bytes:
    """The plugin as one executable file."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "src"
        for module in MODULES:
            (root / "ipam" / module).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(PACKAGE / module, root / "ipam" / module)
        (root / "__main__.py").write_text("from ipam.cni.plugin import main\n\nmain()\n")
        out = io.BytesIO()
        zipapp.create_archive(root, out, interpreter=interpreter, compressed=True)
        return out.getvalue()


def install_plugin(bin_dir: str, interpreter: str) -> Path:
    target = Path(bin_dir) / "ipam-cni"
    _replace(target, plugin_archive(interpreter), 0o755)
    with zipfile.ZipFile(target) as z:  # refuse to leave a broken plugin behind
        assert "ipam/cni/plugin.py" in z.namelist()
    return target


def write_node_files(conf_dir: str, host_conf_dir: str, url: str, ipam_ca: str = "",
                     service_account: Path = SERVICE_ACCOUNT) -> Path:
    """The node file, and beside it the token, the CAs and a JSON kubeconfig for the in-cluster API.
    ``conf_dir`` is where this container sees the node's CNI configuration directory, ``host_conf_dir``
    where the node (and so the plugin) sees it: the files name each other by the latter."""
    private, seen = Path(conf_dir) / "ipam-cni.d", Path(host_conf_dir) / "ipam-cni.d"
    _replace(private / "token", (service_account / "token").read_bytes(), 0o600)
    _replace(private / "ca.crt", (service_account / "ca.crt").read_bytes(), 0o644)
    _replace(private / "ipam-ca.crt", Path(ipam_ca or service_account / "ca.crt").read_bytes(), 0o644)
    host, port = os.environ["KUBERNETES_SERVICE_HOST"], os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    server = f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"
    kubeconfig = {"apiVersion": "v1", "kind": "Config", "current-context": "ipam-cni",
                  "clusters": [{"name": "local", "cluster": {"server": server, "certificate-authority": str(seen / "ca.crt")}}],
                  "users": [{"name": "ipam-cni", "user": {"tokenFile": str(seen / "token")}}],
                  "contexts": [{"name": "ipam-cni", "context": {"cluster": "local", "user": "ipam-cni"}}]}
    _replace(private / "ipam-cni.kubeconfig", json.dumps(kubeconfig, indent=2).encode(), 0o600)
    parts = urllib.parse.urlsplit(url)  # the node cannot resolve cluster DNS names: write the address
    address = str(socket.getaddrinfo(parts.hostname, parts.port or 443, proto=socket.IPPROTO_TCP)[0][4][0])
    netloc = f"[{address}]" if ":" in address else address
    node = {"url": parts._replace(netloc=f"{netloc}:{parts.port or 443}").geturl(), "tls_server_name": parts.hostname,
            "token_file": str(seen / "token"), "ca_file": str(seen / "ipam-ca.crt"),
            "kubeconfig": str(seen / "ipam-cni.kubeconfig")}
    node_file = Path(conf_dir) / "ipam-cni.conf"
    _replace(node_file, json.dumps(node, indent=2).encode(), 0o600)
    return node_file


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="ipam-cni-install", description=__doc__.splitlines()[0])
    parser.add_argument("--bin-dir", default="/host/opt/cni/bin")
    parser.add_argument("--conf-dir", default="/host/etc/cni/net.d", help="the node's CNI configuration directory, here")
    parser.add_argument("--host-conf-dir", default="/etc/cni/net.d", help="the same directory as the node sees it")
    parser.add_argument("--ipam-ca", default="", help="CA of ipam's serving certificate (default: the cluster's)")
    parser.add_argument("--url", required=True, help="ipam's REST API as nodes reach it")
    parser.add_argument("--interpreter", default="/usr/bin/env python3", help="the node's Python (3.9 or newer)")
    parser.add_argument("--watch", action="store_true", help="keep running, copying the token again when it rotates")
    args = parser.parse_args(argv)
    print(f"installed {install_plugin(args.bin_dir, args.interpreter)}", flush=True)
    stamp = None
    while True:
        current = (SERVICE_ACCOUNT / "token").stat().st_mtime_ns
        if current != stamp:
            print(f"wrote {write_node_files(args.conf_dir, args.host_conf_dir, args.url, args.ipam_ca)}", flush=True)
            stamp = current
        if not args.watch:
            return
        time.sleep(30)
