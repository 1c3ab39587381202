"""Request and response bodies of the REST API (the OpenAPI document is generated from these)."""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta, Struct

Name = Annotated[str, Meta(min_length=1, max_length=253)]


class PoolRequest(Struct, forbid_unknown_fields=True):
    name: Annotated[str, Meta(min_length=1, max_length=63, description="Pool name (lower-case, digits, '-', '.').")]
    range: Annotated[str | None, Meta(description="first-last MAC, e.g. 02:00:00:00:00:00-02:ff:ff:ff:ff:ff")] = None
    namespaces: Annotated[list[Annotated[str, Meta(min_length=1, max_length=63)]], Meta(max_length=1000)] = []
    default: bool = False
    external: Annotated[bool, Meta(description="The pool of static MACs outside every range; has no range.")] = False
    command_id: Annotated[str, Meta(min_length=1, max_length=128)] | None = None


class Pool(Struct):
    name: str
    range: str
    size: int
    used: int
    quarantined: int
    free: int | None
    percent: float | None
    namespaces: list[str]
    default: bool


class PoolList(Struct):
    pools: list[Pool]


class LeaseRequest(Struct, forbid_unknown_fields=True):
    namespace: Annotated[str, Meta(min_length=1, max_length=63)]
    vm: Name
    vm_uid: Annotated[str, Meta(min_length=1, max_length=128)]
    interface: Annotated[str, Meta(min_length=1, max_length=63)]
    pool: Annotated[str, Meta(min_length=1, max_length=63)] | None = None
    mac: Annotated[str | None, Meta(description="Ask for this MAC (static request).")] = None
    command_id: Annotated[str, Meta(min_length=1, max_length=128, description="Retry key; also the Idempotency-Key header.")] | None = None


class Lease(Struct):
    mac: str
    pool: str
    namespace: str
    vm: str
    vm_uid: str
    interface: str
    static: bool = False
    since: str | None = None
    state: str = "confirmed"  # "pending": leased at admission, its VM not seen yet
    pending_until: str | None = None


class LeaseAnswer(Struct):
    lease: Lease
    existing: bool
    command_id: str


class LeaseList(Struct):
    leases: list[Lease]


class Released(Struct):
    released: list[Lease]
    quarantined_until: list[str]


class ErrorBody(Struct):
    code: str
    message: str
    field: str | None = None


class Error(Struct):
    error: ErrorBody


# --- IP networks and leases ---------------------------------------------------------

NetworkName = Annotated[str, Meta(min_length=1, max_length=63, description="Network name (lower-case, digits, '-', '.').")]


class SubnetRequest(Struct, forbid_unknown_fields=True):
    cidr: Annotated[str, Meta(min_length=1, max_length=64, description="e.g. 10.20.0.0/24 or fd00:20::/64")]
    gateway: Annotated[str | None, Meta(description="Reserved; written to cloud-init as the default route.")] = None
    exclude: Annotated[list[Annotated[str, Meta(min_length=1, max_length=100)]],
                       Meta(max_length=256, description="Addresses, first-last ranges or CIDRs never handed out.")] = []


class NetworkRequest(Struct, forbid_unknown_fields=True):
    name: NetworkName
    subnets: Annotated[list[SubnetRequest], Meta(min_length=1, max_length=16)]
    dns: Annotated[list[Annotated[str, Meta(min_length=1, max_length=64)]], Meta(max_length=8)] = []
    attachments: Annotated[list[Annotated[str, Meta(min_length=3, max_length=127)]],
                           Meta(max_length=256, description="NetworkAttachmentDefinitions (namespace/name) served by it.")] = []
    command_id: Annotated[str, Meta(min_length=1, max_length=128)] | None = None


class NetworkUpdate(Struct, forbid_unknown_fields=True):
    subnets: Annotated[list[SubnetRequest], Meta(min_length=1, max_length=16)]
    dns: Annotated[list[Annotated[str, Meta(min_length=1, max_length=64)]], Meta(max_length=8)] = []
    attachments: Annotated[list[Annotated[str, Meta(min_length=3, max_length=127)]], Meta(max_length=256)] = []
    command_id: Annotated[str, Meta(min_length=1, max_length=128)] | None = None


class SubnetUsage(Struct):
    cidr: str
    family: int
    gateway: str | None
    exclude: list[str]
    size: int
    used: int
    quarantined: int
    free: int
    percent: float


class Network(Struct):
    name: str
    subnets: list[SubnetUsage]
    dns: list[str]
    attachments: list[str]
    source: str


class NetworkList(Struct):
    networks: list[Network]


class NetworkDeleted(Struct):
    deleted: str


class IpLeaseRequest(Struct, forbid_unknown_fields=True):
    network: NetworkName
    namespace: Annotated[str, Meta(min_length=1, max_length=63)]
    vm: Name
    vm_uid: Annotated[str, Meta(min_length=1, max_length=128)]
    interface: Annotated[str, Meta(min_length=1, max_length=63)]
    addresses: Annotated[list[Annotated[str, Meta(min_length=1, max_length=64)]],
                         Meta(max_length=2, description="Ask for these addresses (static; at most one per family).")] = []
    command_id: Annotated[str, Meta(min_length=1, max_length=128, description="Retry key; also the Idempotency-Key header.")] | None = None


class IpLease(Struct):
    network: str
    address: str
    prefix_length: int
    namespace: str
    vm: str
    vm_uid: str
    interface: str
    static: bool = False
    since: str | None = None
    state: str = "confirmed"
    pending_until: str | None = None


class IpLeaseAnswer(Struct):
    leases: list[IpLease]
    existing: bool
    command_id: str


class IpLeaseList(Struct):
    leases: list[IpLease]


class IpReleased(Struct):
    released: list[IpLease]
    quarantined_until: list[str]


class PartitionStatus(Struct):
    partition: int
    generation: int
    epoch: int
    owner: str | None
    caught_up: bool
    commands_decided: int
    events_projected: int
    commands_end: int | None = None
    commands_waiting: int | None = None  # commands on the topic whose decision is not projected yet
    events_end: int | None = None
    events_waiting: int | None = None  # events on the topic not projected yet


class PendingCounts(Struct):
    mac: int
    ip: int


class Status(Struct):
    broker: bool
    partitions: list[PartitionStatus]
    pools: list[Pool]
    networks: list[Network]
    pending: PendingCounts
