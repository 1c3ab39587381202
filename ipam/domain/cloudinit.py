"""cloud-init networkData (version 2) for a VM's leased addresses, and the JSONPatch that puts it
into the VM's cloud-init volume.

Pure functions over the VM as plain JSON.  ipam writes one ``ethernets`` entry per interface it
addressed, matched by MAC; because cloud-init configures only the interfaces networkData names,
an interface on the pod network gets ``dhcp4: true`` (what cloud-init's fallback would have done).
User-written networkData is merged: an entry for the same interface (same id or same MAC) that
sets other addresses is a conflict, reported so the webhook can deny the request.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import yaml

from .kubevirt import IP_ANNOTATION, SpecError, _get

VOLUMES_FIELD = "spec.template.spec.volumes"
CLOUD_INIT_KINDS = ("cloudInitNoCloud", "cloudInitConfigDrive")
VOLUME_NAME = "ipam-cloudinit"
DEFAULT_ROUTE_METRIC = 200  # below the pod network's DHCP default route (100): the pod network stays primary
MINIMAL_USER_DATA = "#cloud-config\n{}\n"


@dataclass(frozen=True)
class Addressed:
    """One interface ipam addressed: its MAC and ``address/prefix`` list, with the network's gateways and DNS."""

    name: str
    mac: str
    addresses: tuple[str, ...]
    gateways: tuple[str, ...] = ()
    dns: tuple[str, ...] = ()


def ethernet(entry: Addressed) -> dict:
    eth: dict = {"match": {"macaddress": entry.mac}, "addresses": list(entry.addresses)}
    routes = [{"to": "::/0" if ":" in gw else "0.0.0.0/0", "via": gw, "metric": DEFAULT_ROUTE_METRIC} for gw in entry.gateways]
    if routes:
        eth["routes"] = routes
    if entry.dns:
        eth["nameservers"] = {"addresses": list(entry.dns)}
    return eth


class NetworkDataConflict(ValueError):
    pass


def merge(existing: object, entries: Sequence[Addressed], dhcp_macs: Mapping[str, str]) -> dict:
    """networkData with ``entries`` merged into ``existing`` (None: fresh).  Raises NetworkDataConflict."""
    if existing is None:
        data: dict = {"version": 2, "ethernets": {}}
        for name, mac in dhcp_macs.items():
            data["ethernets"][name] = {"match": {"macaddress": mac}, "dhcp4": True}
    else:
        if not isinstance(existing, Mapping):
            raise NetworkDataConflict("networkData is not a YAML mapping")
        if existing.get("version") != 2:
            raise NetworkDataConflict(f"networkData is version {existing.get('version')!r}; ipam merges only version 2 "
                                      "(write it as version 2, or let ipam write it)")
        ethernets = existing.get("ethernets") or {}
        if not isinstance(ethernets, Mapping):
            raise NetworkDataConflict("networkData ethernets is not a mapping")
        data = {**existing, "ethernets": {k: dict(v) if isinstance(v, Mapping) else v for k, v in ethernets.items()}}
    ethernets = data["ethernets"]
    for entry in entries:
        ours = ethernet(entry)
        key = next((k for k, v in ethernets.items() if isinstance(v, Mapping)
                    and str((v.get("match") or {}).get("macaddress") or "").lower() == entry.mac), None)
        if key is None and entry.name in ethernets:
            key = entry.name
        if key is None:
            ethernets[entry.name] = ours
            continue
        theirs = ethernets[key]
        if not isinstance(theirs, Mapping):
            raise NetworkDataConflict(f"networkData ethernets.{key} is not a mapping")
        written = theirs.get("addresses")
        if written is not None and sorted(map(str, written)) != sorted(ours["addresses"]):
            raise NetworkDataConflict(
                f"networkData ethernets.{key} sets addresses {list(written)} for interface {entry.name}, but ipam leased "
                f"{ours['addresses']}; remove them (or ask for those addresses in the {IP_ANNOTATION} annotation)")
        ethernets[key] = {**theirs, **{k: v for k, v in ours.items() if k not in theirs or k == "addresses"}}
    return data


def render(data: Mapping) -> str:
    return yaml.safe_dump(dict(data), sort_keys=False, default_flow_style=False)


def cloud_init_patch(vm: Mapping, entries: Sequence[Addressed], dhcp_macs: Mapping[str, str]) -> tuple[list[dict], str | None]:
    """JSONPatch ops writing networkData for ``entries``, and a warning for the user (or None).

    Raises NetworkDataConflict when user-written networkData disagrees, SpecError when the spec is malformed.
    """
    if not entries:
        return [], None
    volumes = _get(vm, ["spec", "template", "spec", "volumes"], VOLUMES_FIELD)
    if volumes is not None and not isinstance(volumes, list):
        raise SpecError(VOLUMES_FIELD, "expected a list")
    for index, volume in enumerate(volumes or []):
        if not isinstance(volume, Mapping):
            continue
        kind = next((k for k in CLOUD_INIT_KINDS if isinstance(volume.get(k), Mapping)), None)
        if kind is None:
            continue
        source = volume[kind]
        path = f"/spec/template/spec/volumes/{index}/{kind}"
        if "networkDataSecretRef" in source:
            secret = (source.get("networkDataSecretRef") or {}).get("name")
            return [], (f"networkData comes from Secret {secret!r}, which ipam does not write: configure the guest with the "
                        f"addresses in the {IP_ANNOTATION} annotation")
        if isinstance(source.get("networkData"), str):
            data = merge(_parse(source["networkData"], f"{VOLUMES_FIELD}[{index}].{kind}.networkData"), entries, {})
            return [{"op": "replace", "path": f"{path}/networkData", "value": render(data)}], None
        if isinstance(source.get("networkDataBase64"), str):
            field = f"{VOLUMES_FIELD}[{index}].{kind}.networkDataBase64"
            try:
                text = base64.b64decode(source["networkDataBase64"], validate=True).decode()
            except (ValueError, UnicodeDecodeError):
                raise SpecError(field, "not base64 of UTF-8 text") from None
            data = merge(_parse(text, field), entries, {})
            return [{"op": "replace", "path": f"{path}/networkDataBase64",
                     "value": base64.b64encode(render(data).encode()).decode()}], None
        data = merge(None, entries, dhcp_macs)
        return [{"op": "add", "path": f"{path}/networkData", "value": render(data)}], None
    # No cloud-init volume: add one with minimal user data, and its disk.
    data = merge(None, entries, dhcp_macs)
    volume = {"name": VOLUME_NAME, "cloudInitNoCloud": {"userData": MINIMAL_USER_DATA, "networkData": render(data)}}
    ops = [{"op": "add", "path": "/spec/template/spec/volumes", "value": [volume]} if volumes is None else
           {"op": "add", "path": "/spec/template/spec/volumes/-", "value": volume}]
    disks = _get(vm, ["spec", "template", "spec", "domain", "devices", "disks"], "spec.template.spec.domain.devices.disks")
    disk = {"name": VOLUME_NAME, "disk": {"bus": "virtio"}}
    if disks is None:
        ops.append({"op": "add", "path": "/spec/template/spec/domain/devices/disks", "value": [disk]})
    elif isinstance(disks, list):
        ops.append({"op": "add", "path": "/spec/template/spec/domain/devices/disks/-", "value": disk})
    else:
        raise SpecError("spec.template.spec.domain.devices.disks", "expected a list")
    return ops, None


def _parse(text: str, field: str) -> object:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise SpecError(field, f"not YAML: {str(e).splitlines()[0]}") from None
