"""networkData in the three forms a guest's cloud-init reads, for the interfaces ipam addresses.

- **version 1** (YAML ``config:`` list): what ipam writes when nobody wrote networkData (cloud-init renders
  it as written for every renderer), and what the KubeVirt user guide and many images use;
- **version 2** (netplan-like YAML): merged into when the user wrote it;
- **OpenStack network_data.json**: what a ``cloudInitConfigDrive`` volume carries (KubeVirt writes
  networkData there as ``openstack/latest/network_data.json``, which cloud-init reads as JSON).

ipam merges its leased addresses into what the user wrote, in the user's form, without dropping
anything the user wrote; an interface the user already gave addresses is a conflict unless they
are the leased ones.  What the user wrote for an interface on an ipam network is read too
(``written``): those addresses are asked for as static leases, so a user's own address is
protected like any other.  An entry is found for an interface by its MAC, else by the interface's
name, else as ``eth<N>`` for the N-th interface of the VM (how a guest names virtio NICs in order).
Pure functions over plain data.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import yaml

DEFAULT_ROUTE_METRIC = 200  # below the pod network's DHCP default route (100): the pod network stays primary
V2, V1, OPENSTACK = "v2", "v1", "openstack"


@dataclass(frozen=True)
class Addressed:
    """One interface ipam addressed: its MAC and ``address/prefix`` list, with the network's gateways and DNS;
    ``index``: its place among the VM's interfaces (the guest's eth<N>)."""

    name: str
    mac: str
    addresses: tuple[str, ...]
    gateways: tuple[str, ...] = ()
    dns: tuple[str, ...] = ()
    index: int = -1


class NetworkDataConflict(ValueError):
    pass


def form_of(data: object, config_drive: bool) -> str:
    """Which form written networkData is in; NetworkDataConflict when it is none ipam can merge into."""
    if not isinstance(data, Mapping):
        raise NetworkDataConflict("networkData is not a mapping (YAML, or JSON for a ConfigDrive)")
    if config_drive and ("links" in data or "networks" in data):
        return OPENSTACK
    if data.get("version") == 2:
        return V2
    if data.get("version") == 1:
        return V1
    raise NetworkDataConflict(f"networkData is version {data.get('version')!r}; ipam merges version 1, version 2 and "
                              "OpenStack network_data.json (ConfigDrive)")


def _plain(text: object) -> str:
    return str(text).split("/", 1)[0].strip()


def _names(entry: Addressed | tuple[str, str | None, int]) -> tuple[str, str | None, str | None]:
    name, mac, index = (entry.name, entry.mac, entry.index) if isinstance(entry, Addressed) else entry
    return name, (mac or "").lower() or None, f"eth{index}" if index >= 0 else None


def _pick(candidates: list[tuple[Any, Mapping]], name: str, mac: str | None, eth: str | None, mac_of, name_of):
    """The key of the entry for an interface: by MAC, by its name, by eth<N>; or None."""
    for wanted, get in ((mac, mac_of), (name, name_of), (eth, name_of)):
        if wanted is None:
            continue
        found = next((k for k, v in candidates if isinstance(v, Mapping) and get(k, v) == wanted), None)
        if found is not None:
            return found
    return None


# --- version 2 ----------------------------------------------------------------------------------


def _v2_entry(data: Mapping, who) -> str | None:
    ethernets = data.get("ethernets") or {}
    if not isinstance(ethernets, Mapping):
        raise NetworkDataConflict("networkData ethernets is not a mapping")
    return _pick(list(ethernets.items()), *_names(who),
                 mac_of=lambda k, v: str((v.get("match") or {}).get("macaddress") or "").lower() or None,
                 name_of=lambda k, v: v.get("set-name") or k)


def v2_ethernet(entry: Addressed) -> dict:
    eth: dict = {"match": {"macaddress": entry.mac}, "addresses": list(entry.addresses)}
    routes = [{"to": "::/0" if ":" in gw else "0.0.0.0/0", "via": gw, "metric": DEFAULT_ROUTE_METRIC} for gw in entry.gateways]
    if routes:
        eth["routes"] = routes
    if entry.dns:
        eth["nameservers"] = {"addresses": list(entry.dns)}
    return eth


def _merge_v2(data: dict, entries: Sequence[Addressed]) -> dict:
    ethernets = data["ethernets"] = {k: dict(v) if isinstance(v, Mapping) else v
                                     for k, v in (data.get("ethernets") or {}).items()}
    for entry in entries:
        ours, key = v2_ethernet(entry), _v2_entry(data, entry)
        if key is None:
            ethernets[entry.name] = ours
            continue
        theirs = ethernets[key]
        written = theirs.get("addresses")
        if written is not None and sorted(map(str, written)) != sorted(ours["addresses"]):
            raise _conflict(f"ethernets.{key}", written, entry)
        ethernets[key] = {**theirs, **{k: v for k, v in ours.items() if k not in theirs or k == "addresses"}}
    return data


# --- version 1 ----------------------------------------------------------------------------------


def _v1_config(data: Mapping) -> list:
    config = data.get("config") or []
    if not isinstance(config, list):
        raise NetworkDataConflict("networkData config is not a list")
    return config


def _v1_item(data: Mapping, who) -> int | None:
    physical = [(i, v) for i, v in enumerate(_v1_config(data)) if isinstance(v, Mapping) and v.get("type") == "physical"]
    return _pick(physical, *_names(who), mac_of=lambda i, v: str(v.get("mac_address") or "").lower() or None,
                 name_of=lambda i, v: v.get("name"))


def _v1_statics(item: Mapping) -> list[Mapping]:
    return [s for s in item.get("subnets") or [] if isinstance(s, Mapping) and s.get("type") in ("static", "static6")]


def v1_subnets(entry: Addressed) -> list[dict]:
    subnets: list[dict] = []
    for text in entry.addresses:
        v6 = ":" in text
        subnet: dict = {"type": "static6" if v6 else "static", "address": text}
        routes = [{"network": "::/0" if v6 else "0.0.0.0/0", "gateway": gw, "metric": DEFAULT_ROUTE_METRIC}
                  for gw in entry.gateways if (":" in gw) == v6]
        if routes:
            subnet["routes"] = routes
        if entry.dns and not subnets:
            subnet["dns_nameservers"] = list(entry.dns)
        subnets.append(subnet)
    return subnets


def guest_name(entry: Addressed) -> str:
    """The NIC name a version 1 entry gives (cloud-init names the NIC of that MAC so): eth<N>, the name a guest
    gives the N-th virtio NIC, so nothing is renamed where the guest names NICs that way."""
    return f"eth{entry.index}" if entry.index >= 0 else entry.name


def _merge_v1(data: dict, entries: Sequence[Addressed]) -> dict:
    config = data["config"] = [dict(v) if isinstance(v, Mapping) else v for v in _v1_config(data)]
    for entry in entries:
        i = _v1_item(data, entry)
        if i is None:
            config.append({"type": "physical", "name": guest_name(entry), "mac_address": entry.mac,
                           "subnets": v1_subnets(entry)})
            continue
        item, statics = config[i], _v1_statics(config[i])
        if statics:
            written = [s.get("address") for s in statics]
            if sorted(map(_plain, written)) != sorted(map(_plain, entry.addresses)):
                raise _conflict(f"config[{i}] ({item.get('name')})", written, entry)
            continue  # the user's own static subnets: the addresses ipam leased
        item.setdefault("mac_address", entry.mac)
        item["subnets"] = [*(item.get("subnets") or []), *v1_subnets(entry)]
    return data


# --- OpenStack network_data.json ------------------------------------------------------------


def _link(data: Mapping, who) -> str | None:
    links = data.get("links") or []
    if not isinstance(links, list):
        raise NetworkDataConflict("network_data.json links is not a list")
    found = _pick([(v.get("id"), v) for v in links if isinstance(v, Mapping)], *_names(who),
                  mac_of=lambda k, v: str(v.get("ethernet_mac_address") or "").lower() or None, name_of=lambda k, v: k)
    return found


def _link_networks(data: Mapping, link: str) -> list[Mapping]:
    return [n for n in data.get("networks") or [] if isinstance(n, Mapping) and n.get("link") == link
            and n.get("type") in ("ipv4", "ipv6")]


def openstack_networks(entry: Addressed, link: str) -> list[dict]:
    """One network per address.  No routes: the format has no metric, so a gateway would replace the pod
    network's default route; the secondary network is reached directly."""
    out = []
    for text in entry.addresses:
        iface = ipaddress.ip_interface(text)
        net = {"id": f"{link}-ipv{iface.version}", "link": link, "type": f"ipv{iface.version}"}
        if iface.version == 4:
            net.update(ip_address=str(iface.ip), netmask=str(iface.netmask))
        else:
            net.update(ip_address=text)
        out.append(net)
    return out


def _merge_openstack(data: dict, entries: Sequence[Addressed], dhcp_macs: Mapping[str, str]) -> dict:
    data["links"] = [dict(v) if isinstance(v, Mapping) else v for v in data.get("links") or []]
    data["networks"] = list(data.get("networks") or [])
    data["services"] = list(data.get("services") or [])
    for name, mac in dhcp_macs.items():
        data["links"].append({"id": name, "type": "phy", "ethernet_mac_address": mac})
        data["networks"].append({"id": f"{name}-dhcp", "link": name, "type": "ipv4_dhcp"})
    for entry in entries:
        link = _link(data, entry)
        if link is None:
            link = entry.name
            data["links"].append({"id": link, "type": "phy", "ethernet_mac_address": entry.mac})
        theirs = _link_networks(data, link)
        if theirs:
            written = [n.get("ip_address") for n in theirs]
            if sorted(map(_plain, written)) != sorted(map(_plain, entry.addresses)):
                raise _conflict(f"networks of link {link}", written, entry)
        else:
            data["networks"].extend(openstack_networks(entry, link))
        known = {s.get("address") for s in data["services"] if isinstance(s, Mapping) and s.get("type") == "dns"}
        data["services"].extend({"type": "dns", "address": d} for d in entry.dns if d not in known)
    return data


# --- all forms ----------------------------------------------------------------------------


def _unwrapped(data: object) -> tuple[object, bool]:
    """cloud-init also reads networkData under a top-level ``network:`` key (the KubeVirt user guide writes it so)."""
    if isinstance(data, Mapping) and set(data) == {"network"} and isinstance(data["network"], Mapping):
        return data["network"], True
    return data, False


def merge(existing: object, entries: Sequence[Addressed], dhcp_macs: Mapping[str, str], config_drive: bool) -> dict:
    """networkData with ``entries`` merged into ``existing`` (None: fresh; ConfigDrive: network_data.json).
    Raises NetworkDataConflict."""
    existing, wrapped = _unwrapped(existing)
    merged = _merge(existing, entries, dhcp_macs, config_drive)
    return {"network": merged} if wrapped else merged


def _merge(existing: object, entries: Sequence[Addressed], dhcp_macs: Mapping[str, str], config_drive: bool) -> dict:
    if existing is None:
        if config_drive:
            return _merge_openstack({}, entries, dhcp_macs)
        # Version 1: cloud-init (22.4, Debian 12) renders a version 2 route's metric only for netplan, and ::/0 as
        # ::/64; version 1 comes out as written for netplan, networkd and sysconfig alike (tests/test_network_data).
        fresh = {"version": 1, "config": [{"type": "physical", "name": name, "mac_address": mac, "subnets": [{"type": "dhcp"}]}
                                          for name, mac in dhcp_macs.items()]}
        return _merge_v1(fresh, entries)
    form = form_of(existing, config_drive)
    data = dict(cast(Mapping, existing))  # form_of refused anything but a mapping
    return _merge_openstack(data, entries, {}) if form == OPENSTACK else \
        _merge_v1(data, entries) if form == V1 else _merge_v2(data, entries)


def written(existing: object, interface: str, mac: str | None, index: int, config_drive: bool) -> list[str]:
    """The addresses (without prefix) the user's networkData gives one interface."""
    existing = _unwrapped(existing)[0]
    if existing is None:
        return []
    form, who = form_of(existing, config_drive), (interface, mac, index)
    data = cast(Mapping, existing)  # form_of refused anything but a mapping
    if form == V2:
        key = _v2_entry(data, who)
        found = [] if key is None else (data["ethernets"][key].get("addresses") or [])
    elif form == V1:
        i = _v1_item(data, who)
        found = [] if i is None else [s.get("address") for s in _v1_statics(data["config"][i])]
    else:
        link = _link(data, who)
        found = [] if link is None else [n.get("ip_address") for n in _link_networks(data, link)]
    return [_plain(a) for a in found if a]


def render(data: Mapping, config_drive: bool) -> str:
    if config_drive and "links" in data:
        return json.dumps(dict(data), indent=2)
    return yaml.safe_dump(dict(data), sort_keys=False, default_flow_style=False)


def _conflict(where: str, written_addresses, entry: Addressed) -> NetworkDataConflict:
    return NetworkDataConflict(
        f"networkData {where} sets addresses {list(map(str, written_addresses))} for interface {entry.name}, but ipam "
        f"leased {list(entry.addresses)}; remove them, or write only addresses of the network")
