"""The vocabulary of commands and events: who holds an address, the scalar types, and the two kinds of address.

Nested structs here follow the schema-evolution policy (docs/events.md#schema-evolution): they may
gain fields with defaults, so decoders never forbid unknown fields, and a consumer built on an older
schema reads a newer owner and ignores what it does not know.

Leasing, releasing, reconciling what the cluster shows, expiry, quarantine, the projection, REST,
the CLI and the watcher are written once; what a MAC and an IP address differ in for those is read
from a ``Kind``: what their spaces and addresses are called in messages, the tags of their commands
and events, the extra fields their events carry.  Arithmetic (MAC ranges, subnets) lives in
``pools``, ``networks`` and ``ip``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from msgspec import Meta, Struct

Name = Annotated[str, Meta(min_length=1, max_length=253)]
CommandId = Annotated[str, Meta(min_length=1, max_length=128)]
Millis = Annotated[int, Meta(ge=0, description="milliseconds since the Unix epoch")]
CanonicalMac = Annotated[str, Meta(pattern="^[0-9a-f]{2}(:[0-9a-f]{2}){5}$", description="lower-case colon form")]

# Owners made by the admission webhook before the VM has a uid carry this prefix on vm_uid.
PROVISIONAL_UID_PREFIX = "admission:"
# A reservation (an address set aside for a VM that does not exist yet) is a provisional owner too, of
# this prefix: never released by a watcher's list, lapsing only if asked to (its pending_until), handed
# over to the VM of that namespace and name (and interface, unless ANY_INTERFACE) when it shows up.
RESERVATION_UID_PREFIX = "admission:reserved:"
ANY_INTERFACE = "*"
NEVER = 253_402_300_799_000  # 9999-12-31T23:59:59Z in ms: the pending_until of a reservation that does not lapse


# What holds leases: the Kubernetes kind of the object an owner is (``Owner.workload``).
VM_WORKLOAD, POD_WORKLOAD, CLAIM_WORKLOAD = "VirtualMachine", "Pod", "IPAMClaim"
# The cluster an owner lives in (``Owner.cluster``; IPAM_CLUSTER), when one ipam serves several.
DEFAULT_CLUSTER = "default"


# gc=False: an Owner holds only strings, so the cycle collector need not track the millions an allocator keeps.
# omit_defaults: a VM's owner is encoded as it was before ``workload`` existed.
class Owner(Struct, frozen=True, gc=False, omit_defaults=True):
    """Who holds a lease: one interface of one incarnation (uid) of a VM, a pod or an IPAMClaim.

    ``vm`` and ``vm_uid`` name the object whatever its kind (the names predate pods and claims);
    ``workload`` says which kind it is, as free text so that a consumer on an older schema still
    reads an owner of a kind added later.  A pod's interface is its CNI_IFNAME; a claim's, the
    interface its spec names.  ``cluster`` names the Kubernetes cluster the object lives in when one
    ipam is the address space of several (MACs are then unique across all of them)."""

    namespace: Name
    vm: Name
    vm_uid: Name
    interface: Name
    workload: Name = VM_WORKLOAD
    cluster: Name = DEFAULT_CLUSTER

    def describe(self) -> str:
        what = "" if self.workload == VM_WORKLOAD else f"{self.workload} "
        where = "" if self.cluster == DEFAULT_CLUSTER else f" in cluster {self.cluster}"
        if self.vm_uid.startswith(RESERVATION_UID_PREFIX):
            interface = "any interface" if self.interface == ANY_INTERFACE else f"interface {self.interface}"
            return f"a reservation for {what}{self.namespace}/{self.vm} {interface}{where}"
        return f"{what}{self.namespace}/{self.vm} (uid {self.vm_uid}) interface {self.interface}{where}"


def moves(holder: Owner, owner: Owner) -> bool:
    """Whether ``owner`` is ``holder``'s VM received in another cluster (or namespace) by a decentralized live
    migration: the same VM name, interface and kind elsewhere.  Asked only for a receiving VM
    (runStrategy WaitAsReceiver), which carries the source's MACs."""
    return (holder.vm == owner.vm and holder.interface == owner.interface and holder.workload == owner.workload
            and (holder.cluster, holder.namespace) != (owner.cluster, owner.namespace))


def reserves(holder: Owner, owner: Owner) -> bool:
    """Whether ``holder`` is a reservation for ``owner``: the same namespace, name, kind and cluster, and
    the same interface unless the reservation names none (``ANY_INTERFACE``)."""
    return (
        holder.vm_uid.startswith(RESERVATION_UID_PREFIX)
        and not owner.vm_uid.startswith(RESERVATION_UID_PREFIX)
        and (holder.namespace, holder.vm, holder.workload, holder.cluster) == (owner.namespace, owner.vm, owner.workload,
                                                                                owner.cluster)
        and holder.interface in (ANY_INTERFACE, owner.interface)
    )


def binds(holder: Owner, owner: Owner) -> bool:
    """Whether a provisional holder (made at admission, before the VM had a uid, and perhaps a
    name: generateName; or a reservation) is the VM ``owner`` that now shows up holding its address."""
    if holder.vm_uid.startswith(RESERVATION_UID_PREFIX):
        return reserves(holder, owner) and not owner.vm_uid.startswith(PROVISIONAL_UID_PREFIX)
    return (
        holder.vm_uid.startswith(PROVISIONAL_UID_PREFIX)
        and not owner.vm_uid.startswith(PROVISIONAL_UID_PREFIX)
        and holder.namespace == owner.namespace
        and holder.interface == owner.interface
        and holder.workload == owner.workload
        and holder.cluster == owner.cluster
        and owner.vm.startswith(holder.vm)
    )


def is_provisional(uid: str) -> bool:
    return uid.startswith(PROVISIONAL_UID_PREFIX)


def supersedes(holder: Owner, owner: Owner) -> bool:
    """Whether ``owner``, a VM (or pod) admitted again under a new provisional uid, takes over what an earlier
    admission of the same name left pending (``holder``).  A create the API server never persisted (a quota,
    another webhook's denial) and then sent again, by a user or a GitOps controller retrying, gets the
    addresses the first attempt was answered with, rather than a second set held until the first lapses.  If
    the first did persist, the retry fails (AlreadyExists) and the VM still confirms the lease (``binds``
    matches it by name).  Reservations are not superseded: they lapse only when asked to."""
    return (
        is_provisional(holder.vm_uid) and is_provisional(owner.vm_uid) and holder.vm_uid != owner.vm_uid
        and not holder.vm_uid.startswith(RESERVATION_UID_PREFIX)
        and not owner.vm_uid.startswith(RESERVATION_UID_PREFIX)
        and (holder.namespace, holder.vm, holder.interface, holder.workload, holder.cluster)
        == (owner.namespace, owner.vm, owner.interface, owner.workload, owner.cluster)
    )


class ObservedInterface(Struct, frozen=True):
    """One interface of a VM as the watcher saw it: the MAC in its spec."""

    name: Name
    mac: CanonicalMac

    @property
    def addresses(self) -> tuple[str, ...]:
        return (self.mac,)


class ObservedAddresses(Struct, frozen=True):
    """One interface of a VM as the watcher saw it: the addresses its annotation gives it."""

    name: Name
    addresses: tuple[str, ...] = ()


@dataclass(frozen=True, eq=False)  # kinds are singletons: compared and hashed by identity
class Kind:
    name: str  # "mac" or "ip": metric labels, REST paths, CLI words, Postgres tables
    word: str  # what people call it: "MAC", "IP"
    space: str  # the field naming the address space: "pool" or "network"
    address: str  # the field naming one address: "mac" or "address"
    address_type: object
    prefix: str  # of event tags: MacLeased, IpLeased
    detail: tuple[tuple[str, type], ...]  # fields of the events that hand out an address, after the address (and at
    # the end of a confirmation, which gained them later)
    extra: tuple[tuple[str, object, object], ...]  # (name, type, default) added later to the leased, returned,
    # offered, confirmed and released events, at their end: what answers report besides the address (older consumers
    # ignore them)
    requested: tuple[str, object, object]  # the lease command's field asking for addresses: name, type, default
    observed: type  # one observed interface
    holds: str  # what one interface holds in one space, for people
    tags: dict  # command role -> tag (the tags are public and predate this table: they are irregular)

    def __repr__(self) -> str:
        return f"Kind({self.name})"

    def in_space(self, name: str) -> dict[str, Any]:
        """The keyword naming a space in this kind's commands and events (``pool=`` or ``network=``)."""
        return {self.space: name}


MAC = Kind(
    name="mac", word="MAC", space="pool", address="mac", address_type=CanonicalMac, prefix="Mac", detail=(), extra=(),
    requested=("mac", str | None, None), observed=ObservedInterface, holds="one MAC per pool",
    tags={"lease": "LeaseMac", "release_owner": "ReleaseOwner", "release_address": "ReleaseMac", "observe": "ObserveVm",
          "expire": "ExpirePending"},
)
IP = Kind(
    name="ip", word="IP", space="network", address="address", address_type=str, prefix="Ip",
    detail=(("prefix_length", int),), extra=(("gateway", str | None, None),), requested=("addresses", tuple[str, ...], ()),
    observed=ObservedAddresses,
    holds="one address per family of the network (two for dual-stack)",
    tags={"lease": "LeaseIp", "release_owner": "ReleaseIps", "release_address": "ReleaseIp", "observe": "ObserveVmIps",
          "expire": "ExpirePendingIp"},
)
KINDS = (MAC, IP)
