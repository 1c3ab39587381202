"""CNI network configurations that use ``ipam-cni``: which ipam network they name, and the network
a section written for Whereabouts defines.

Read by the CNI plugin on the node (a zipapp of the standard library: this module imports nothing
else) and by the watcher, which defines the networks of NetworkAttachmentDefinitions it sees.

The network is the section's ``network`` (or Whereabouts' ``network_name``), else the
configuration's ``name``.  A Whereabouts section (``range``, ``range_start``, ``range_end``,
``exclude``, ``ipRanges``, ``gateway``) becomes one ipam subnet per range, the addresses outside
range_start..range_end excluded; ipam then hands out one address per family, from the first of
the subnets that has one free.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping

from ..errors import ConfigError

PLUGIN_TYPE = "ipam-cni"


def ipam_section(conf: Mapping) -> dict:
    section = conf.get("ipam")
    if not isinstance(section, dict):
        raise ConfigError("ipam", "the configuration has no ipam section")
    return section


def network_name(conf: Mapping, section: Mapping) -> str:
    name = section.get("network") or section.get("network_name") or conf.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError("ipam.network", "no network: set ipam.network or the configuration's name")
    return name


def _subnet(spec: Mapping, field: str, gateway: str | None) -> dict:
    """One Whereabouts range as an ipam subnet: addresses outside range_start..range_end are excluded."""
    text = spec.get("range")
    if not isinstance(text, str) or "/" not in text:
        raise ConfigError(f"{field}.range", "expected a CIDR such as 192.168.2.0/24")
    bounds, _, prefix = text.rpartition("/")
    first_text, _, last_text = bounds.partition("-")
    try:
        net = ipaddress.ip_network(f"{first_text}/{prefix}", strict=False)
        first = ipaddress.ip_address(spec.get("range_start") or (first_text if last_text else net[0]))
        last = ipaddress.ip_address(spec.get("range_end") or last_text or net[-1])
        excluded = [str(ipaddress.ip_network(x, strict=False)) for x in spec.get("exclude") or []]
    except (ValueError, TypeError) as e:
        raise ConfigError(field, str(e)) from None
    if first not in net or last not in net or int(first) > int(last):
        raise ConfigError(field, f"range_start..range_end ({first}..{last}) is not inside {net}")
    if int(first) > int(net[0]):
        excluded.append(f"{net[0]}-{first - 1}")
    if int(last) < int(net[-1]):
        excluded.append(f"{last + 1}-{net[-1]}")
    in_net = gateway is not None and ipaddress.ip_address(gateway) in net
    return {"cidr": str(net), "exclude": excluded} | ({"gateway": gateway} if in_net else {})


def whereabouts_subnets(section: Mapping) -> list[dict]:
    """The subnets a Whereabouts-style section defines (empty when it defines none)."""
    gateway = section.get("gateway")
    if gateway is not None:
        try:
            ipaddress.ip_address(gateway)
        except ValueError:
            raise ConfigError("ipam.gateway", f"{gateway!r} is not an address") from None
    ranges = section.get("ipRanges") or []
    if not isinstance(ranges, list) or not all(isinstance(r, dict) for r in ranges):
        raise ConfigError("ipam.ipRanges", "expected a list of objects with a range")
    specs = [(r, f"ipam.ipRanges[{i}]") for i, r in enumerate(ranges)]
    if section.get("range"):
        specs.insert(0, (section, "ipam"))
    return [_subnet(spec, field, gateway) for spec, field in specs]


def nad_config(nad: Mapping) -> tuple[dict, dict] | None:
    """(configuration, ipam section) of a NetworkAttachmentDefinition whose plugin delegates IPAM to
    ipam-cni (a single plugin, or one of a ``plugins`` list), else None.  Raises ConfigError."""
    text = (nad.get("spec") or {}).get("config")
    if not isinstance(text, str) or PLUGIN_TYPE not in text:
        return None
    try:
        conf = json.loads(text)
    except ValueError as e:
        raise ConfigError("spec.config", f"not JSON: {e}") from None
    if not isinstance(conf, dict):
        raise ConfigError("spec.config", "expected a JSON object")
    for plugin in [conf, *(p for p in conf.get("plugins") or [] if isinstance(p, dict))]:
        section = plugin.get("ipam")
        if isinstance(section, dict) and section.get("type") == PLUGIN_TYPE:
            return conf, section
    return None
