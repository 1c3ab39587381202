"""Request and response bodies of the REST API (the OpenAPI document is generated from these)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from msgspec import Meta, Struct

Name = Annotated[str, Meta(min_length=1, max_length=253)]


class PoolRequest(Struct, forbid_unknown_fields=True):
    name: Annotated[str, Meta(min_length=1, max_length=63, description="Pool name (lower-case, digits, '-', '.').")]
    range: Annotated[str | None, Meta(description="first-last MAC, e.g. 02:00:00:00:00:00-02:ff:ff:ff:ff:ff")] = None
    namespaces: Annotated[list[Annotated[str, Meta(min_length=1, max_length=63)]], Meta(max_length=1000)] = []
    default: bool = False
    external: Annotated[bool, Meta(description="The pool of static MACs outside every range; has no range.")] = False
    command_id: Annotated[str, Meta(min_length=1, max_length=128)] | None = None


class PoolUpdate(Struct, forbid_unknown_fields=True):
    range: Annotated[str | None, Meta(description="A new first-last range: grown, shrunk, or both (it must share an "
                                                  "address with the current one)")] = None
    namespaces: Annotated[list[Annotated[str, Meta(min_length=1, max_length=63)]],
                          Meta(max_length=1000, description="The namespaces bound to the pool (replaces the list)")] | None = None
    default: bool | None = None
    command_id: Annotated[str, Meta(min_length=1, max_length=128)] | None = None


class PoolDeleted(Struct):
    deleted: str


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
    source: Annotated[Literal["api", "cni"], Meta(description=(
        "cni: defined by the CNI plugin from a Whereabouts-style range; the watcher takes it over (and lists the "
        "NetworkAttachmentDefinitions) when it sees a NAD naming the network."))] = "api"
    command_id: Annotated[str, Meta(min_length=1, max_length=128)] | None = None


class NetworkUpdate(Struct, forbid_unknown_fields=True):
    subnets: Annotated[list[SubnetRequest], Meta(min_length=1, max_length=16)]
    dns: Annotated[list[Annotated[str, Meta(min_length=1, max_length=64)]], Meta(max_length=8)] = []
    attachments: Annotated[list[Annotated[str, Meta(min_length=3, max_length=127)]], Meta(max_length=256)] = []
    command_id: Annotated[str, Meta(min_length=1, max_length=128)] | None = None


class NetworkChange(Struct, forbid_unknown_fields=True):
    """PATCH of a network: what is given replaces that part of its definition, the rest stays."""

    subnets: Annotated[list[SubnetRequest], Meta(min_length=1, max_length=16)] | None = None
    dns: Annotated[list[Annotated[str, Meta(min_length=1, max_length=64)]], Meta(max_length=8)] | None = None
    attachments: Annotated[list[Annotated[str, Meta(min_length=3, max_length=127)]], Meta(max_length=256)] | None = None
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


# --- leases, of every kind ------------------------------------------------------------------
# Declared statically, a MAC's and an IP's side by side, their shared parts in kw-only bases: msgspec puts a base's
# kw-only fields after the class's own, so a lease still reads address first, holder after (as the event does).

Namespace = Annotated[str, Meta(min_length=1, max_length=63)]
Uid = Annotated[str, Meta(min_length=1, max_length=128)]
Interface = Annotated[str, Meta(min_length=1, max_length=63)]
RetryKey = Annotated[str, Meta(min_length=1, max_length=128, description="Retry key; also the Idempotency-Key header.")]
Workload = Annotated[Literal["VirtualMachine", "Pod", "IPAMClaim"], Meta(
    description="What holds the lease; vm and vm_uid name that object (a pod: its name and uid, interface its CNI_IFNAME).")]
Cluster = Annotated[str, Meta(min_length=1, max_length=63, description="The Kubernetes cluster of the holder; default: the "
                                                                       "API replica's IPAM_CLUSTER.")]
PoolName = Annotated[str, Meta(min_length=1, max_length=63)]
AskedMac = Annotated[str | None, Meta(description="Ask for this MAC (static request).")]
AskedAddresses = Annotated[list[Annotated[str, Meta(min_length=1, max_length=64)]],
                           Meta(max_length=2, description="Ask for these addresses (static; at most one per family).")]
Gateway = Annotated[str | None, Meta(description="The gateway of the address's subnet when its network has one: set in the "
                                                 "answers to a lease request and a release (from their events), null in lists "
                                                 "(the network's definition has it).")]


class _Asking(Struct, kw_only=True, forbid_unknown_fields=True):
    """What every lease request and reservation says beside its holder: the kind of holder, its cluster, a retry key."""

    workload: Workload = "VirtualMachine"
    cluster: Cluster | None = None
    command_id: RetryKey | None = None


class _HolderAsking(_Asking, kw_only=True):
    """A lease request: the interface that will hold the lease, named in full."""

    namespace: Namespace
    vm: Name
    vm_uid: Uid
    interface: Interface


class _Reserving(_Asking, kw_only=True):
    """A reservation: held for a VM that does not exist yet, so no uid, the interface optional."""

    namespace: Namespace
    vm: Name
    interface: Annotated[Interface, Meta(description="The interface it is for; absent: the first of the VM's interfaces "
                                                     "that asks")] | None = None
    expires_in_seconds: Annotated[int, Meta(ge=1, le=10 * 365 * 86400)] | None = None


class _Leased(Struct, kw_only=True):
    """Who holds a lease and how: what every kind's lease says after its address."""

    namespace: str
    vm: str
    vm_uid: str
    interface: str
    static: bool = False
    since: str | None = None
    state: str = "confirmed"
    pending_until: str | None = None
    workload: str = "VirtualMachine"
    cluster: str = "default"


class _IpLeased(_Leased, kw_only=True):
    gateway: Gateway = None


class LeaseRequest(_HolderAsking):
    pool: PoolName | None = None
    mac: AskedMac = None


class ReservationRequest(_Reserving):
    pool: PoolName | None = None
    mac: AskedMac = None


class Lease(_Leased):
    mac: str
    pool: str


class LeaseAnswer(Struct):
    lease: Lease
    existing: bool
    command_id: str


class LeaseList(Struct):
    leases: list[Lease]


class Released(Struct):
    released: list[Lease]
    quarantined_until: list[str]


class IpLeaseRequest(_HolderAsking):
    network: NetworkName
    addresses: AskedAddresses = []


class IpReservationRequest(_Reserving):
    network: NetworkName
    addresses: AskedAddresses = []


class IpLease(_IpLeased):
    network: str
    address: str
    prefix_length: int


class IpLeaseAnswer(Struct):
    leases: list[IpLease]
    existing: bool
    command_id: str


class IpLeaseList(Struct):
    leases: list[IpLease]


class IpReleased(Struct):
    released: list[IpLease]
    quarantined_until: list[str]


@dataclass(frozen=True)
class LeaseModels:
    """One kind's REST bodies, for the handlers and the OpenAPI document written once for both kinds (which of a
    kind's structs a field holds is the kind's data, so they are typed as structs)."""

    request: type[Struct]
    lease: type[Struct]
    answer: type[Struct]
    listing: type[Struct]
    released: type[Struct]
    reservation: type[Struct]


MAC_MODELS = LeaseModels(LeaseRequest, Lease, LeaseAnswer, LeaseList, Released, ReservationRequest)
IP_MODELS = LeaseModels(IpLeaseRequest, IpLease, IpLeaseAnswer, IpLeaseList, IpReleased, IpReservationRequest)


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


class Refusal(Struct):
    """An entry of the declared configuration that could not be applied, and why (as REST would say)."""

    entry: str  # "pools[0] (name)"
    code: str
    reason: str
    field: str | None = None


class ConfigStatus(Struct):
    """The declared configuration (IPAM_CONFIG_FILE) as this replica last reconciled it."""

    file: str
    applied_at: str | None = None  # the last reconcile that read the file
    error: str | None = None  # the file could not be read or parsed: nothing was changed
    refusals: list[Refusal] = []


class Status(Struct):
    broker: bool
    partitions: list[PartitionStatus]
    pools: list[Pool]
    networks: list[Network]
    pending: PendingCounts
    config: ConfigStatus | None = None
    database: str = ""  # the DSN this service uses, without its password (psql can use it as it is)
    kafka_bootstrap: str = ""
