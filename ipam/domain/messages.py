"""Commands and events: msgspec tagged unions with stable tags.

These types are a public API (the topics' payloads, schemas in ``schemas/``).
Evolution rules: never rename or remove a tag or field, never change a field's
type, add new fields only with defaults.  ``tests/test_schemas.py`` enforces it.
MAC addresses travel as canonical lower-case colon strings; times as integer
milliseconds since the Unix epoch.
"""

from __future__ import annotations

from typing import Annotated, Union

import msgspec
from msgspec import Meta, Struct

Name = Annotated[str, Meta(min_length=1, max_length=253)]
CommandId = Annotated[str, Meta(min_length=1, max_length=128)]
Millis = Annotated[int, Meta(ge=0, description="milliseconds since the Unix epoch")]
CanonicalMac = Annotated[str, Meta(pattern="^[0-9a-f]{2}(:[0-9a-f]{2}){5}$", description="lower-case colon form")]


# gc=False: an Owner holds only strings, so the cycle collector need not track the millions an allocator keeps.
class Owner(Struct, frozen=True, forbid_unknown_fields=True, gc=False):
    """Who holds a lease: one interface of one VM incarnation."""

    namespace: Name
    vm: Name
    vm_uid: Name
    interface: Name

    def describe(self) -> str:
        return f"{self.namespace}/{self.vm} (uid {self.vm_uid}) interface {self.interface}"


# --- commands -----------------------------------------------------------------------


class Command(Struct, tag_field="type", kw_only=True, frozen=True):
    command_id: CommandId
    at: Millis


class CreatePool(Command, tag="CreatePool", frozen=True):
    """Define a pool.  Keyed by the registry key: one writer checks overlaps."""

    name: Name
    range: str | None = None
    namespaces: tuple[str, ...] = ()
    default: bool = False
    external: bool = False


class LeaseMac(Command, tag="LeaseMac", frozen=True):
    """Lease a MAC for an owner: the one it holds, the static ``mac``, or the next free.

    ``pending_until``: the lease is provisional (made by the admission webhook before the VM
    exists) and is released at that time unless a VM is seen holding it.  ``dry_run``: decide
    and answer with ``MacLeaseOffered``, change nothing.
    """

    pool: Name
    owner: Owner
    mac: str | None = None
    pending_until: Millis = 0
    dry_run: bool = False


class ReleaseOwner(Command, tag="ReleaseOwner", frozen=True):
    """Release all of a VM's leases in a pool, or one interface's."""

    pool: Name
    namespace: Name
    vm: Name
    interface: str | None = None


class ReleaseMac(Command, tag="ReleaseMac", frozen=True):
    """Release whatever lease holds this MAC."""

    pool: Name
    mac: str


class ObservedInterface(Struct, frozen=True, forbid_unknown_fields=True):
    name: Name
    mac: CanonicalMac


class ObserveVm(Command, tag="ObserveVm", frozen=True):
    """What the watcher saw of one VM in the cluster, for the MACs of one pool.

    Confirms pending leases the VM holds, adopts MACs nobody holds, reports MACs another
    owner holds as conflicts, and releases this VM's leases on interfaces it no longer has
    (all of them when ``deleted``).  Idempotent: the id derives from uid and resourceVersion.
    """

    pool: Name
    namespace: Name
    vm: Name
    vm_uid: Name
    interfaces: tuple[ObservedInterface, ...] = ()
    deleted: bool = False


class ExpirePending(Command, tag="ExpirePending", frozen=True):
    """Release a pending lease whose VM never appeared (no-op when it was confirmed meanwhile)."""

    pool: Name
    mac: CanonicalMac
    vm_uid: Name


# --- IP commands: keyed by network, so one partition owns each network's addresses -------


class SubnetSpec(Struct, frozen=True, forbid_unknown_fields=True):
    """One subnet of a network as written by people: ``exclude`` holds addresses, ``first-last``
    ranges or CIDRs inside it; the gateway is never handed out."""

    cidr: Annotated[str, Meta(min_length=1, max_length=64)]
    gateway: str | None = None
    exclude: tuple[str, ...] = ()


class DefineNetwork(Command, tag="DefineNetwork", frozen=True):
    """Create a network, or replace its definition (``create_only``: refuse if it exists and differs).

    A new definition that would leave a live lease outside the network (or excluded, or the
    gateway) is rejected with the leases named.  ``source``: "api" or "nad:<namespace>/<name>".
    """

    name: Name
    subnets: tuple[SubnetSpec, ...]
    dns: tuple[str, ...] = ()
    attachments: tuple[str, ...] = ()
    create_only: bool = False
    source: str = "api"


class DeleteNetwork(Command, tag="DeleteNetwork", frozen=True):
    """Remove a network; refused while it holds live leases (they are named)."""

    name: Name
    source: str = "api"


class LeaseIp(Command, tag="LeaseIp", frozen=True):
    """Lease an interface its addresses in a network: one per family the network has (both for
    dual-stack).  Per family: the address in ``addresses`` (static), else the one it holds
    (sticky), else the next free.  All or nothing: one refusal rejects the command."""

    network: Name
    owner: Owner
    addresses: tuple[str, ...] = ()
    pending_until: Millis = 0
    dry_run: bool = False


class ReleaseIps(Command, tag="ReleaseIps", frozen=True):
    """Release a VM's addresses in a network, or one interface's."""

    network: Name
    namespace: Name
    vm: Name
    interface: str | None = None


class ReleaseIp(Command, tag="ReleaseIp", frozen=True):
    """Release whatever lease holds this address."""

    network: Name
    address: str


class ObservedAddresses(Struct, frozen=True, forbid_unknown_fields=True):
    name: Name
    addresses: tuple[str, ...] = ()


class ObserveVmIps(Command, tag="ObserveVmIps", frozen=True):
    """What the watcher saw of one VM for one network: the addresses each interface carries in its
    ``ipam.kubevirt.io/ip-addresses`` annotation.  Confirms pending leases, adopts addresses nobody
    holds, reports conflicts, releases interfaces the VM no longer has (everything when ``deleted``).
    An interface listed without addresses keeps what it holds."""

    network: Name
    namespace: Name
    vm: Name
    vm_uid: Name
    interfaces: tuple[ObservedAddresses, ...] = ()
    deleted: bool = False


class ExpirePendingIp(Command, tag="ExpirePendingIp", frozen=True):
    network: Name
    address: str
    vm_uid: Name


class ObserveGuestIps(Command, tag="ObserveGuestIps", frozen=True):
    """Addresses a running guest reports on one interface (VMI status, from the guest agent).
    Those inside the network that are not this interface's lease become ``IpDrift``."""

    network: Name
    namespace: Name
    vm: Name
    vm_uid: Name
    interface: Name
    addresses: tuple[str, ...] = ()


AnyCommand = Union[
    CreatePool, LeaseMac, ReleaseOwner, ReleaseMac, ObserveVm, ExpirePending,
    DefineNetwork, DeleteNetwork, LeaseIp, ReleaseIps, ReleaseIp, ObserveVmIps, ExpirePendingIp, ObserveGuestIps,
]


# --- events -------------------------------------------------------------------------


class Event(Struct, tag_field="type", kw_only=True, frozen=True):
    command_id: CommandId
    at: Millis


class PoolCreated(Event, tag="PoolCreated", frozen=True):
    name: Name
    range: str | None
    namespaces: tuple[str, ...] = ()
    default: bool = False
    start: int = 0


class MacLeased(Event, tag="MacLeased", frozen=True):
    pool: Name
    mac: CanonicalMac
    owner: Owner
    static: bool = False
    pending_until: Millis = 0  # non-zero: provisional until a VM is seen holding it
    adopted: bool = False  # found in a VM's spec by the watcher, not requested


class MacLeaseOffered(Event, tag="MacLeaseOffered", frozen=True):
    """Answer to a dry run: the MAC the owner would get.  Nothing changed."""

    pool: Name
    mac: CanonicalMac
    owner: Owner


class MacLeaseConfirmed(Event, tag="MacLeaseConfirmed", frozen=True):
    """A pending lease was seen on a real VM: it is now that VM's (``owner``), no longer pending."""

    pool: Name
    mac: CanonicalMac
    owner: Owner
    previous: Owner


class MacConflict(Event, tag="MacConflict", frozen=True):
    """A VM's spec carries a MAC that another owner holds.  Recorded, nothing changed."""

    pool: Name
    mac: CanonicalMac
    owner: Owner
    holder: Owner


class MacLeaseReturned(Event, tag="MacLeaseReturned", frozen=True):
    """The owner already held this MAC: sticky answer, state unchanged."""

    pool: Name
    mac: CanonicalMac
    owner: Owner


class MacReleased(Event, tag="MacReleased", frozen=True):
    pool: Name
    mac: CanonicalMac
    owner: Owner
    quarantined_until: Millis = 0
    reason: str = "requested"


class CommandRejected(Event, tag="CommandRejected", frozen=True):
    """The command was decided and refused; ``code`` is stable, ``reason`` is for people."""

    command: str
    code: str
    reason: str
    field: str | None = None
    pool: str | None = None
    holder: Owner | None = None
    network: str | None = None


# --- IP events ------------------------------------------------------------------------


class NetworkDefined(Event, tag="NetworkDefined", frozen=True):
    """A network was created (``created``) or its definition replaced."""

    name: Name
    subnets: tuple[SubnetSpec, ...]
    dns: tuple[str, ...] = ()
    attachments: tuple[str, ...] = ()
    source: str = "api"
    created: bool = True


class NetworkDeleted(Event, tag="NetworkDeleted", frozen=True):
    name: Name
    source: str = "api"


class IpLeased(Event, tag="IpLeased", frozen=True):
    network: Name
    address: str
    prefix_length: int
    owner: Owner
    static: bool = False
    pending_until: Millis = 0
    adopted: bool = False


class IpLeaseReturned(Event, tag="IpLeaseReturned", frozen=True):
    """The interface already held this address: sticky answer, state unchanged."""

    network: Name
    address: str
    prefix_length: int
    owner: Owner


class IpLeaseOffered(Event, tag="IpLeaseOffered", frozen=True):
    """Answer to a dry run: the address the interface would get.  Nothing changed."""

    network: Name
    address: str
    prefix_length: int
    owner: Owner


class IpLeaseConfirmed(Event, tag="IpLeaseConfirmed", frozen=True):
    """A pending lease was seen on a real VM: it is now that VM's (``owner``)."""

    network: Name
    address: str
    owner: Owner
    previous: Owner


class IpReleased(Event, tag="IpReleased", frozen=True):
    network: Name
    address: str
    owner: Owner
    quarantined_until: Millis = 0
    reason: str = "requested"


class IpConflict(Event, tag="IpConflict", frozen=True):
    """A VM's annotation carries an address another interface holds.  Recorded, nothing changed."""

    network: Name
    address: str
    owner: Owner
    holder: Owner


class IpDrift(Event, tag="IpDrift", frozen=True):
    """A guest uses an address of a managed network that is not its lease.  ``kind``: "unleased"
    (nobody holds it) or "held-by-other" (``holder`` does).  Recorded, nothing changed."""

    network: Name
    address: str
    owner: Owner
    kind: str
    holder: Owner | None = None


AnyEvent = Union[
    PoolCreated, MacLeased, MacLeaseReturned, MacReleased, CommandRejected, MacLeaseOffered, MacLeaseConfirmed, MacConflict,
    NetworkDefined, NetworkDeleted, IpLeased, IpLeaseReturned, IpLeaseOffered, IpLeaseConfirmed, IpReleased, IpConflict,
    IpDrift,
]

COMMAND_TYPES: tuple[type, ...] = (
    CreatePool, LeaseMac, ReleaseOwner, ReleaseMac, ObserveVm, ExpirePending,
    DefineNetwork, DeleteNetwork, LeaseIp, ReleaseIps, ReleaseIp, ObserveVmIps, ExpirePendingIp, ObserveGuestIps,
)
EVENT_TYPES: tuple[type, ...] = (
    PoolCreated, MacLeased, MacLeaseReturned, MacReleased, CommandRejected, MacLeaseOffered, MacLeaseConfirmed, MacConflict,
    NetworkDefined, NetworkDeleted, IpLeased, IpLeaseReturned, IpLeaseOffered, IpLeaseConfirmed, IpReleased, IpConflict,
    IpDrift,
)

command_decoder = msgspec.json.Decoder(AnyCommand)
event_decoder = msgspec.json.Decoder(AnyEvent)
encoder = msgspec.json.Encoder()


def nul_field(message: Struct, prefix: str = "") -> str | None:
    """The first field (dotted path) whose text holds U+0000, or None.

    JSON allows "\\u0000" in strings but Postgres text cannot store it; a command carrying one
    is refused where it is decided, so it never reaches (and stalls) the projection."""
    for name in message.__struct_fields__:
        value = getattr(message, name)
        path = f"{prefix}{name}"
        if isinstance(value, str):
            if "\x00" in value:
                return path
        elif isinstance(value, Struct):
            found = nul_field(value, path + ".")
            if found:
                return found
        elif isinstance(value, (tuple, list)):
            for i, item in enumerate(value):
                if isinstance(item, str) and "\x00" in item:
                    return f"{path}[{i}]"
                if isinstance(item, Struct):
                    found = nul_field(item, f"{path}[{i}].")
                    if found:
                        return found
    return None
