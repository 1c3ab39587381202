"""The CNI protocol as an IPAM plugin sees it (CNI spec 1.1, and the 0.3/0.4 results before it).

The runtime (Multus, or the main plugin delegating to us) passes the verb and the container in
the environment and the network configuration on stdin; the plugin answers a result or an error
object on stdout.  Only this module knows how those look in each ``cniVersion``.
"""

from __future__ import annotations

import ipaddress
import json

SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")

# Well-known error codes of the spec; 100 and up are this plugin's own.
INCOMPATIBLE_VERSION, UNSUPPORTED_FIELD, UNKNOWN_CONTAINER, INVALID_ENVIRONMENT = 1, 2, 3, 4
IO_FAILURE, DECODING_FAILURE, INVALID_CONFIG, TRY_AGAIN_LATER = 5, 6, 7, 11
NOT_AVAILABLE = 50  # STATUS: the plugin cannot serve ADDs now
EXHAUSTED, ADDRESS_HELD, REFUSED = 100, 101, 102


class CniError(Exception):
    """An error the plugin answers as a CNI error object (and a non-zero exit)."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code, self.msg, self.details = code, msg, details

    def answer(self, version: str) -> dict:
        body = {"cniVersion": version, "code": self.code, "msg": self.msg}
        return body | ({"details": self.details} if self.details else {})


def read_config(text: str) -> dict:
    """The network configuration from stdin, with a supported ``cniVersion``."""
    try:
        conf = json.loads(text)
    except ValueError as e:
        raise CniError(DECODING_FAILURE, f"network configuration on stdin is not JSON: {e}") from None
    if not isinstance(conf, dict):
        raise CniError(DECODING_FAILURE, "network configuration on stdin is not a JSON object")
    version = conf.get("cniVersion")
    if version not in SUPPORTED_VERSIONS:
        raise CniError(INCOMPATIBLE_VERSION, f"cniVersion {version!r} is not supported",
                       f"supported: {', '.join(SUPPORTED_VERSIONS)}")
    return conf


def cni_args(text: str) -> dict[str, str]:
    """``CNI_ARGS``: ``K=V;K=V`` (Multus passes K8S_POD_NAMESPACE, K8S_POD_NAME, K8S_POD_UID, ...)."""
    args = {}
    for item in text.split(";"):
        key, sep, value = item.partition("=")
        if item.strip() and not sep:
            raise CniError(INVALID_ENVIRONMENT, f"CNI_ARGS: {item!r} is not KEY=VALUE")
        if key.strip():
            args[key.strip()] = value.strip()
    return args


def version_answer(version: str) -> dict:
    return {"cniVersion": version, "supportedVersions": list(SUPPORTED_VERSIONS)}


def result(version: str, ips: list[tuple[str, str | None]], routes: list, dns: dict) -> dict:
    """An IPAM result: ``ips`` as (address/prefix, gateway); 0.3.x and 0.4.0 also carry each one's family."""
    entries = []
    for address, gateway in ips:
        entry = {"address": address} | ({"gateway": gateway} if gateway else {})
        if not version.startswith("1."):
            entry = {"version": str(ipaddress.ip_interface(address).version)} | entry
        entries.append(entry)
    out = {"cniVersion": version, "ips": entries}
    return out | ({"routes": routes} if routes else {}) | ({"dns": dns} if dns else {})


def result_addresses(prev: object) -> set[str]:
    """The addresses (without prefix) a previous result (CHECK's ``prevResult``) configured."""
    ips = prev.get("ips") if isinstance(prev, dict) else None
    found = set()
    for entry in ips if isinstance(ips, list) else []:
        if isinstance(entry, dict) and isinstance(entry.get("address"), str):
            found.add(str(ipaddress.ip_interface(entry["address"]).ip))
    return found
