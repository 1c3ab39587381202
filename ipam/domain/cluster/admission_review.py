"""The parts of an AdmissionReview ipam reads, as msgspec structs: checked by type before anything reads
them, so a review carrying a list where a name belongs (or any other wrong type) is denied naming the field
and its problem, never met by an exception halfway through.  Fields ipam does not read are not looked at
(structs ignore unknown fields), so what Kubernetes adds later passes through."""

from __future__ import annotations

import msgspec
from msgspec import Struct


class _Multus(Struct):
    networkName: str = ""


class _Network(Struct):
    name: str
    multus: _Multus | None = None
    pod: dict | None = None


class _Interface(Struct):
    name: str
    macAddress: str | None = None


class _Devices(Struct):
    interfaces: list[_Interface] = []
    disks: list[dict] = []


class _Domain(Struct):
    devices: _Devices = msgspec.field(default_factory=_Devices)


class _CloudInit(Struct):
    networkData: str | None = None
    networkDataBase64: str | None = None
    networkDataSecretRef: dict | None = None


class _Volume(Struct):
    name: str = ""
    cloudInitNoCloud: _CloudInit | None = None
    cloudInitConfigDrive: _CloudInit | None = None


class _TemplateSpec(Struct):
    domain: _Domain = msgspec.field(default_factory=_Domain)
    networks: list[_Network] = []
    volumes: list[_Volume] = []


class _Template(Struct):
    spec: _TemplateSpec = msgspec.field(default_factory=_TemplateSpec)


class _Metadata(Struct):
    name: str | None = None
    generateName: str | None = None
    namespace: str | None = None
    uid: str | None = None
    resourceVersion: str | None = None
    annotations: dict[str, str] = {}
    labels: dict[str, str] = {}


class _VmSpec(Struct):
    template: _Template = msgspec.field(default_factory=_Template)
    runStrategy: str | None = None


class VirtualMachine(Struct):
    metadata: _Metadata = msgspec.field(default_factory=_Metadata)
    spec: _VmSpec = msgspec.field(default_factory=_VmSpec)


class Pod(Struct):
    metadata: _Metadata = msgspec.field(default_factory=_Metadata)


class _Kind(Struct):
    group: str = ""
    version: str = ""
    kind: str = ""


class Request(Struct):
    uid: str
    kind: _Kind
    operation: str = ""
    namespace: str | None = None
    object: dict | None = None
    oldObject: dict | None = None
    dryRun: bool | None = None


def problem(value: object, shape: type, root: str) -> str | None:
    """Why ``value`` is not shaped as ``shape`` ("field: reason", the field a path under ``root``), or None."""
    try:
        msgspec.convert(value, shape, strict=True)
    except msgspec.ValidationError as e:
        text = str(e)
        reason, _, where = text.partition(" - at `$")
        field = root + where.rstrip("`") if where else root
        return f"{field}: {reason[0].lower()}{reason[1:]}".replace("`", "")
    return None
