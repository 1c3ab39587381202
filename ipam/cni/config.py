"""Where the plugin finds ipam and the Kubernetes API.

The ``ipam`` section of the network configuration may carry ``url``, ``token_file``, ``ca_file``,
``kubeconfig``, ``timeout_seconds`` and ``tls_server_name``; what it leaves out comes from the node file
(``/etc/cni/net.d/ipam-cni.conf``, written by the DaemonSet; ``IPAM_CNI_CONF`` names another).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from .protocol import INVALID_CONFIG, CniError

NODE_FILE = "/etc/cni/net.d/ipam-cni.conf"
KEYS = ("url", "token_file", "ca_file", "kubeconfig", "timeout_seconds", "tls_server_name")


@dataclass(frozen=True)
class Settings:
    url: str
    token: str = ""
    ca_file: str = ""
    kubeconfig: str = ""
    timeout: float = 30.0  # per request; kubelet gives a CNI ADD minutes, and 200 pods starting at once queue
    server_name: str = ""  # the name ipam's certificate carries, when ``url`` names it by address


def _read_json(path: str, what: str) -> dict:
    try:
        with open(path) as f:
            found = json.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise CniError(INVALID_CONFIG, f"{what} {path} cannot be read: {e}") from None
    if not isinstance(found, dict):
        raise CniError(INVALID_CONFIG, f"{what} {path} is not a JSON object")
    return found


def settings(section: dict) -> Settings:
    node = _read_json(os.environ.get("IPAM_CNI_CONF", NODE_FILE), "node file")
    merged = {k: section[k] if k in section else node.get(k) for k in KEYS}
    if not merged["url"]:
        raise CniError(INVALID_CONFIG, f"no ipam url: set ipam.url or `url` in {os.environ.get('IPAM_CNI_CONF', NODE_FILE)}")
    token = ""
    if merged["token_file"]:
        try:
            with open(merged["token_file"]) as f:
                token = f.read().strip()
        except OSError as e:
            raise CniError(INVALID_CONFIG, f"token_file {merged['token_file']}: {e}") from None
    try:
        timeout = float(merged["timeout_seconds"] or 30)
    except (TypeError, ValueError):
        raise CniError(INVALID_CONFIG, "timeout_seconds: expected a number of seconds") from None
    return Settings(url=str(merged["url"]).rstrip("/"), token=token, ca_file=merged["ca_file"] or "",
                    kubeconfig=merged["kubeconfig"] or "", timeout=timeout, server_name=merged["tls_server_name"] or "")
