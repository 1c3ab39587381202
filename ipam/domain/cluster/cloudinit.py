"""The VM's cloud-init volume: where networkData for its leased addresses goes (JSONPatch), and what the
user already wrote there.

Pure functions over the VM as plain JSON; the forms of networkData are ``networkdata``'s.  ipam writes
one entry per interface it addressed, matched by MAC; because cloud-init configures only the
interfaces networkData names, an interface on the pod network gets DHCP (what cloud-init's fallback
would have done).  A ``cloudInitConfigDrive`` volume gets OpenStack network_data.json, a
``cloudInitNoCloud`` one YAML; user-written networkData is merged in its own form.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import yaml

from .kubevirt import IP_ANNOTATION, SpecError, _get
from .networkdata import Addressed, NetworkDataConflict, merge, render, written

__all__ = ["Addressed", "NetworkDataConflict", "cloud_init_patch", "user_network_data", "written_addresses"]

VOLUMES_FIELD = "spec.template.spec.volumes"
CLOUD_INIT_KINDS = ("cloudInitNoCloud", "cloudInitConfigDrive")
VOLUME_NAME = "ipam-cloudinit"
MINIMAL_USER_DATA = "#cloud-config\n{}\n"


@dataclass(frozen=True)
class CloudInit:
    """The VM's cloud-init volume: its index and kind, where its networkData is (and in what encoding), what
    it holds (parsed; None when there is none), and the Secret it comes from instead (ipam cannot write it)."""

    index: int
    kind: str
    key: str | None  # "networkData", "networkDataBase64", or None: none written
    data: object
    secret: str | None = None

    @property
    def config_drive(self) -> bool:
        return self.kind == "cloudInitConfigDrive"

    @property
    def path(self) -> str:
        return f"/spec/template/spec/volumes/{self.index}/{self.kind}"


def user_network_data(vm: Mapping) -> CloudInit | None:
    """The first cloud-init volume and the networkData the user wrote in it; None without such a volume.
    Raises SpecError naming the field when the volumes or the networkData cannot be read."""
    volumes = _get(vm, ["spec", "template", "spec", "volumes"], VOLUMES_FIELD)
    if volumes is not None and not isinstance(volumes, list):
        raise SpecError(VOLUMES_FIELD, "expected a list")
    for index, volume in enumerate(volumes or []):
        kind = next((k for k in CLOUD_INIT_KINDS if isinstance(volume, Mapping) and isinstance(volume.get(k), Mapping)), None)
        if kind is None:
            continue
        source, field = volume[kind], f"{VOLUMES_FIELD}[{index}].{kind}"
        if "networkDataSecretRef" in source:
            return CloudInit(index, kind, None, None, str((source.get("networkDataSecretRef") or {}).get("name")))
        if isinstance(source.get("networkData"), str):
            return CloudInit(index, kind, "networkData", _parse(source["networkData"], f"{field}.networkData"))
        if isinstance(source.get("networkDataBase64"), str):
            try:
                text = base64.b64decode(source["networkDataBase64"], validate=True).decode()
            except (ValueError, UnicodeDecodeError):
                raise SpecError(f"{field}.networkDataBase64", "not base64 of UTF-8 text") from None
            return CloudInit(index, kind, "networkDataBase64", _parse(text, f"{field}.networkDataBase64"))
        return CloudInit(index, kind, None, None)
    return None


def written_addresses(vm: Mapping, interfaces: Sequence[tuple[str, str | None, int]]) -> dict[str, list[str]]:
    """interface -> the addresses the user's networkData gives it, for (name, MAC or None, index) of each
    interface on an ipam network: asked for as static leases.  Raises NetworkDataConflict, SpecError."""
    found = user_network_data(vm)
    if found is None or found.data is None:
        return {}
    out = {}
    for name, mac, index in interfaces:
        addresses = written(found.data, name, mac, index, found.config_drive)
        if addresses:
            out[name] = addresses
    return out


def cloud_init_patch(vm: Mapping, entries: Sequence[Addressed], dhcp_macs: Mapping[str, str]) -> tuple[list[dict], str | None]:
    """JSONPatch ops writing networkData for ``entries``, and a warning for the user (or None).

    Raises NetworkDataConflict when user-written networkData disagrees, SpecError when the spec is malformed.
    """
    if not entries:
        return [], None
    found = user_network_data(vm)
    if found is not None and found.secret is not None:
        return [], (f"networkData comes from Secret {found.secret!r}, which ipam does not write: configure the guest with "
                    f"the addresses in the {IP_ANNOTATION} annotation")
    if found is not None:
        data = merge(found.data, entries, {} if found.key else dhcp_macs, found.config_drive)
        text = render(data, found.config_drive)
        if found.key == "networkDataBase64":
            return [{"op": "replace", "path": f"{found.path}/networkDataBase64",
                     "value": base64.b64encode(text.encode()).decode()}], None
        return [{"op": "replace" if found.key else "add", "path": f"{found.path}/networkData", "value": text}], None
    # No cloud-init volume: add one with minimal user data, and its disk.
    volumes = _get(vm, ["spec", "template", "spec", "volumes"], VOLUMES_FIELD)
    volume = {"name": VOLUME_NAME, "cloudInitNoCloud": {"userData": MINIMAL_USER_DATA,
                                                        "networkData": render(merge(None, entries, dhcp_macs, False), False)}}
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
