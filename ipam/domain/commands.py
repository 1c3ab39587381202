"""Commands: what the API, the webhook and the watcher ask the allocators to decide.

msgspec tagged unions with stable tags, a public API (the commands topic, ``schemas/commands``).
The five lease commands exist once per kind of address, declared side by side: the same fields,
named for that kind (``pool``/``mac``, ``network``/``address``).  Evolution rules in
docs/events.md#schema-evolution; ``tests/test_schemas.py`` enforces them.
"""

from __future__ import annotations

from typing import Annotated, NamedTuple, get_args

import msgspec
from msgspec import Meta, Struct

from .kinds import (
    DEFAULT_CLUSTER,
    IP,
    MAC,
    VM_WORKLOAD,
    CanonicalMac,
    CommandId,
    Millis,
    Name,
    ObservedAddresses,
    ObservedInterface,
    Owner,
)


class Command(Struct, tag_field="type", kw_only=True, frozen=True):
    command_id: CommandId
    at: Millis


class LeaseCommands(NamedTuple):
    """One kind's lease commands, by role: what code written once for both kinds builds."""

    lease: type[LeaseMac] | type[LeaseIp]
    release_owner: type[ReleaseOwner] | type[ReleaseIps]
    release_address: type[ReleaseMac] | type[ReleaseIp]
    observe: type[ObserveVm] | type[ObserveVmIps]
    expire: type[ExpirePending] | type[ExpirePendingIp]


# The five lease commands of each kind, side by side: the same fields, named for the kind (``pool``/``mac``,
# ``network``/``addresses``).  Declared statically, so they are types to a checker; tests/test_schemas.py checks that
# each says what its ``Kind`` says (its space, address, requested and observed fields).


class LeaseMac(Command, tag="LeaseMac", frozen=True):
    """Lease an interface its MAC addresses in a pool: one MAC per pool.  For each, the one asked for in ``mac``
    (static), else the one it holds (sticky), else the next free; one refusal rejects the command.
    ``pending_until``: provisional (made at admission, before the VM exists), released then unless a VM is seen
    holding it.  ``dry_run``: decide and answer with ``MacLeaseOffered``, change nothing."""

    pool: Name
    owner: Owner
    mac: str | None = None
    pending_until: Millis = 0
    dry_run: bool = False
    receives: bool = False


class ReleaseOwner(Command, tag="ReleaseOwner", frozen=True):
    """Release a VM's MAC leases in a pool, or one interface's (of a pod or claim too: ``workload``); ``vm_uid``
    narrows it to one incarnation, as a CNI DEL must: the pod that replaced a deleted one of the same name keeps
    what it holds."""

    pool: Name
    namespace: Name
    vm: Name
    interface: str | None = None
    vm_uid: str | None = None
    workload: str | None = None
    cluster: str | None = None


class ReleaseMac(Command, tag="ReleaseMac", frozen=True):
    """Release whatever lease holds this MAC address."""

    pool: Name
    mac: str


class ObserveVm(Command, tag="ObserveVm", frozen=True):
    """What the watcher saw of one VM (or pod: ``workload``) for one pool: the MAC addresses of each interface.
    Confirms pending leases the VM holds, adopts addresses nobody holds, reports addresses another owner holds
    as conflicts, releases interfaces the VM no longer has (everything when ``deleted``).  An interface listed
    without addresses keeps what it holds.  Idempotent: the id derives from uid and resourceVersion."""

    pool: Name
    namespace: Name
    vm: Name
    vm_uid: Name
    interfaces: tuple[ObservedInterface, ...] = ()
    deleted: bool = False
    workload: Name = VM_WORKLOAD
    cluster: Name = DEFAULT_CLUSTER


class ExpirePending(Command, tag="ExpirePending", frozen=True):
    """Release a pending lease whose VM never appeared (nothing when it was confirmed meanwhile)."""

    pool: Name
    mac: CanonicalMac
    vm_uid: Name


class LeaseIp(Command, tag="LeaseIp", frozen=True):
    """Lease an interface its IP addresses in a network: one address per family of the network (two for dual-stack).
    For each, the one asked for in ``addresses`` (static), else the one it holds (sticky), else the next free;
    one refusal rejects the command.  ``pending_until``: provisional (made at admission, before the VM exists),
    released then unless a VM is seen holding it.  ``dry_run``: decide and answer with ``IpLeaseOffered``,
    change nothing."""

    network: Name
    owner: Owner
    addresses: tuple[str, ...] = ()
    pending_until: Millis = 0
    dry_run: bool = False
    receives: bool = False


class ReleaseIps(Command, tag="ReleaseIps", frozen=True):
    """Release a VM's IP leases in a network, or one interface's (of a pod or claim too: ``workload``); ``vm_uid``
    narrows it to one incarnation, as a CNI DEL must: the pod that replaced a deleted one of the same name keeps
    what it holds."""

    network: Name
    namespace: Name
    vm: Name
    interface: str | None = None
    vm_uid: str | None = None
    workload: str | None = None
    cluster: str | None = None


class ReleaseIp(Command, tag="ReleaseIp", frozen=True):
    """Release whatever lease holds this IP address."""

    network: Name
    address: str


class ObserveVmIps(Command, tag="ObserveVmIps", frozen=True):
    """What the watcher saw of one VM (or pod: ``workload``) for one network: the IP addresses of each interface.
    Confirms pending leases the VM holds, adopts addresses nobody holds, reports addresses another owner holds
    as conflicts, releases interfaces the VM no longer has (everything when ``deleted``).  An interface listed
    without addresses keeps what it holds.  Idempotent: the id derives from uid and resourceVersion."""

    network: Name
    namespace: Name
    vm: Name
    vm_uid: Name
    interfaces: tuple[ObservedAddresses, ...] = ()
    deleted: bool = False
    workload: Name = VM_WORKLOAD
    cluster: Name = DEFAULT_CLUSTER


class ExpirePendingIp(Command, tag="ExpirePendingIp", frozen=True):
    """Release a pending lease whose VM never appeared (nothing when it was confirmed meanwhile)."""

    network: Name
    address: str
    vm_uid: Name


LEASE_COMMANDS = {MAC: LeaseCommands(LeaseMac, ReleaseOwner, ReleaseMac, ObserveVm, ExpirePending),
                  IP: LeaseCommands(LeaseIp, ReleaseIps, ReleaseIp, ObserveVmIps, ExpirePendingIp)}


class CreatePool(Command, tag="CreatePool", frozen=True):
    """Define a pool.  Keyed by the registry key: one writer checks overlaps."""

    name: Name
    range: str | None = None
    namespaces: tuple[str, ...] = ()
    default: bool = False
    external: bool = False


class ChangePool(Command, tag="ChangePool", frozen=True):
    """Change a pool's definition on the registry (``None``: leave as it is).  A new range may not overlap
    another pool's and must hold every address the pool's own partition still hands out: shrinking is
    ``SetPoolRange`` on the pool's partition first, which knows the leases (docs/rest.md#changing-a-pool)."""

    name: Name
    range: str | None = None
    namespaces: tuple[str, ...] | None = None
    default: bool | None = None


class DeletePool(Command, tag="DeletePool", frozen=True):
    """Remove a pool from the registry; refused unless its partition retired it (``RetirePool``)."""

    name: Name


class SetPoolRange(Command, tag="SetPoolRange", frozen=True):
    """The range a pool hands out from, decided on the pool's partition (which knows its leases): refused
    while live leases lie outside it (they are named), or when it reaches past what the registry granted.
    Quarantined addresses outside it are dropped, unless ``move`` (a range moved in one step, sharing no
    address with the old one): then they are in the way too, and named."""

    pool: Name
    range: str
    move: bool = False


class RetirePool(Command, tag="RetirePool", frozen=True):
    """Stop a pool for good on its partition, before ``DeletePool``; refused while it holds live leases."""

    pool: Name


class SubnetSpec(Struct, frozen=True):
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


class ObserveGuestIps(Command, tag="ObserveGuestIps", frozen=True):
    """Addresses a running guest reports on one interface (VMI status, from the guest agent).
    Those inside the network that are not this interface's lease become ``IpDrift``."""

    network: Name
    namespace: Name
    vm: Name
    vm_uid: Name
    interface: Name
    addresses: tuple[str, ...] = ()
    cluster: Name = DEFAULT_CLUSTER


AnyCommand = (  # in the order the schemas list them
    CreatePool | ChangePool | DeletePool | SetPoolRange | RetirePool | LeaseMac | ReleaseOwner | ReleaseMac | ObserveVm
    | ExpirePending | DefineNetwork | DeleteNetwork | LeaseIp | ReleaseIps | ReleaseIp | ObserveVmIps | ExpirePendingIp
    | ObserveGuestIps
)
COMMAND_TYPES: tuple[type[Command], ...] = get_args(AnyCommand)
command_decoder = msgspec.json.Decoder(AnyCommand)


def nul_field(message: Struct, prefix: str = "") -> str | None:
    """The first field (dotted path) whose text holds U+0000, or None.

    JSON allows "\\u0000" in strings but Postgres text cannot store it; a command carrying one
    is refused where it is decided, so it never reaches (and stalls) the projection."""
    for name in message.__struct_fields__:
        value = getattr(message, name)
        items = enumerate(value) if isinstance(value, (tuple, list)) else ((None, value),)
        for i, item in items:
            path = f"{prefix}{name}" if i is None else f"{prefix}{name}[{i}]"
            if isinstance(item, str) and "\x00" in item:
                return path
            found = nul_field(item, path + ".") if isinstance(item, Struct) else None
            if found:
                return found
    return None
