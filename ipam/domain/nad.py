"""NetworkAttachmentDefinitions that carry ipam's annotations become network definitions.

A NAD is managed when it has ``ipam.kubevirt.io/subnets``; its network is named
``<namespace>.<name>`` (unambiguous: namespaces have no dots) unless ``ipam.kubevirt.io/network``
names it, which lets NADs in several namespaces share one address space.  Lists are comma-separated;
each gateway and exclusion belongs to the subnet that contains it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass

from .commands import SubnetSpec
from .kubevirt import SpecError

PREFIX = "ipam.kubevirt.io/"
SUBNETS = PREFIX + "subnets"
GATEWAYS = PREFIX + "gateways"
EXCLUDE = PREFIX + "exclude"
DNS = PREFIX + "dns"
NETWORK = PREFIX + "network"


@dataclass(frozen=True)
class NadNetwork:
    attachment: str  # "namespace/name"
    network: str
    subnets: tuple[SubnetSpec, ...]
    dns: tuple[str, ...]
    version: str = ""  # the NAD's resourceVersion: a definition changed back and forth is still a new command


def _items(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _field(key: str) -> str:
    return f"metadata.annotations[{key}]"


def nad_network(nad: Mapping) -> NadNetwork | None:
    """The network a NAD defines, or None when it carries no ``ipam.kubevirt.io/subnets``.  Raises SpecError."""
    meta = nad.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    if not isinstance(annotations, Mapping) or SUBNETS not in annotations:
        return None
    namespace, name = meta.get("namespace"), meta.get("name")
    texts = {k: annotations.get(k) for k in (SUBNETS, GATEWAYS, EXCLUDE, DNS, NETWORK)}
    for key, value in texts.items():
        if value is not None and not isinstance(value, str):
            raise SpecError(_field(key), "expected a string")
    subnets = subnet_specs(_items(texts[SUBNETS]), _items(texts[GATEWAYS] or ""), _items(texts[EXCLUDE] or ""),
                           (_field(SUBNETS), _field(GATEWAYS), _field(EXCLUDE)))
    network = (texts[NETWORK] or "").strip() or f"{namespace}.{name}"
    return NadNetwork(attachment=f"{namespace}/{name}", network=network, subnets=subnets, dns=tuple(_items(texts[DNS] or "")),
                      version=str(meta.get("resourceVersion") or ""))


def subnet_specs(cidrs: list[str], gateways: list[str], excludes: list[str],
                 fields: tuple[str, str, str] = ("subnets", "gateways", "exclude")) -> tuple[SubnetSpec, ...]:
    """Subnets from flat lists, each gateway and exclusion given to the subnet that contains it."""
    if not cidrs:
        raise SpecError(fields[0], "lists no subnet")
    nets = []
    for c in cidrs:
        try:
            nets.append(ipaddress.ip_network(c, strict=False))
        except ValueError:
            raise SpecError(fields[0], f"{c[:80]!r} is not a CIDR") from None
    by_subnet: dict[int, str] = {}
    for gw in gateways:
        i = _containing(nets, gw, fields[1])
        if i in by_subnet:
            raise SpecError(fields[1], f"two gateways for subnet {cidrs[i]}")
        by_subnet[i] = gw
    excluded: dict[int, list[str]] = {}
    for x in excludes:
        excluded.setdefault(_containing(nets, x.partition("-")[0].partition("/")[0], fields[2]), []).append(x)
    return tuple(SubnetSpec(cidr=c, gateway=by_subnet.get(i), exclude=tuple(excluded.get(i, ()))) for i, c in enumerate(cidrs))


def _containing(nets: list, text: str, field: str) -> int:
    try:
        addr = ipaddress.ip_address(text.strip())
    except ValueError:
        raise SpecError(field, f"{text[:80]!r} is not an address") from None
    for i, n in enumerate(nets):
        if addr.version == n.version and addr in n:
            return i
    raise SpecError(field, f"{text} is in none of the subnets")
