"""Events: what the allocators decided, as written to the events topic and projected into Postgres.

msgspec tagged unions with stable tags, a public API (``schemas/events``).  The six lease
events exist once per kind of address, declared side by side.  Addresses travel as
canonical text (MACs lower-case colon form, IPs as ``ipaddress`` prints them); times as integer
milliseconds since the Unix epoch.  Evolution rules in docs/events.md#schema-evolution.
"""

from __future__ import annotations

from typing import NamedTuple, get_args

import msgspec
from msgspec import Struct

from .commands import SubnetSpec
from .kinds import IP, MAC, CanonicalMac, CommandId, Millis, Name, Owner


class Event(Struct, tag_field="type", kw_only=True, frozen=True):
    command_id: CommandId
    at: Millis


class LeaseEvents(NamedTuple):
    """One kind's lease events, by role: what code written once for both kinds matches and builds."""

    leased: type[MacLeased] | type[IpLeased]
    returned: type[MacLeaseReturned] | type[IpLeaseReturned]
    offered: type[MacLeaseOffered] | type[IpLeaseOffered]
    confirmed: type[MacLeaseConfirmed] | type[IpLeaseConfirmed]
    released: type[MacReleased] | type[IpReleased]
    conflict: type[MacConflict] | type[IpConflict]


# The six lease events of each kind, side by side: the same fields, named for the kind; an IP's also carry its
# prefix length (``Kind.detail``) and its subnet's gateway (``Kind.extra``, added later: at the end, with a default).
# Declared statically, so they are types to a checker; tests/test_schemas.py checks each against its ``Kind``.


class MacLeased(Event, tag="MacLeased", frozen=True):
    """A MAC address was leased to ``owner``.  ``pending_until`` non-zero: provisional until a VM is seen holding it.
    ``adopted``: found in a VM by the watcher, not requested."""

    pool: Name
    mac: CanonicalMac
    owner: Owner
    static: bool = False
    pending_until: Millis = 0
    adopted: bool = False


class MacLeaseReturned(Event, tag="MacLeaseReturned", frozen=True):
    """The owner already held this address: sticky answer, state unchanged."""

    pool: Name
    mac: CanonicalMac
    owner: Owner


class MacLeaseOffered(Event, tag="MacLeaseOffered", frozen=True):
    """Answer to a dry run: the address the owner would get.  Nothing changed."""

    pool: Name
    mac: CanonicalMac
    owner: Owner


class MacLeaseConfirmed(Event, tag="MacLeaseConfirmed", frozen=True):
    """A pending lease was seen on a real VM: it is now that VM's (``owner``), no longer pending."""

    pool: Name
    mac: CanonicalMac
    owner: Owner
    previous: Owner


class MacReleased(Event, tag="MacReleased", frozen=True):
    """The lease ended; the address is kept from reuse until ``quarantined_until``."""

    pool: Name
    mac: CanonicalMac
    owner: Owner
    quarantined_until: Millis = 0
    reason: str = 'requested'


class MacConflict(Event, tag="MacConflict", frozen=True):
    """A VM carries an address another owner holds.  Recorded, nothing changed."""

    pool: Name
    mac: CanonicalMac
    owner: Owner
    holder: Owner


class IpLeased(Event, tag="IpLeased", frozen=True):
    """A IP address was leased to ``owner``.  ``pending_until`` non-zero: provisional until a VM is seen holding it.
    ``adopted``: found in a VM by the watcher, not requested."""

    network: Name
    address: str
    prefix_length: int
    owner: Owner
    static: bool = False
    pending_until: Millis = 0
    adopted: bool = False
    gateway: str | None = None


class IpLeaseReturned(Event, tag="IpLeaseReturned", frozen=True):
    """The owner already held this address: sticky answer, state unchanged."""

    network: Name
    address: str
    prefix_length: int
    owner: Owner
    gateway: str | None = None


class IpLeaseOffered(Event, tag="IpLeaseOffered", frozen=True):
    """Answer to a dry run: the address the owner would get.  Nothing changed."""

    network: Name
    address: str
    prefix_length: int
    owner: Owner
    gateway: str | None = None


class IpLeaseConfirmed(Event, tag="IpLeaseConfirmed", frozen=True):
    """A pending lease was seen on a real VM: it is now that VM's (``owner``), no longer pending.  The prefix
    length and gateway (added later, hence at the end) are what the answer to a lease that confirmed one reports:
    without them a virt-launcher pod's CNI ADD that bound its VM's admission lease configured the address /0."""

    network: Name
    address: str
    owner: Owner
    previous: Owner
    prefix_length: int = 0
    gateway: str | None = None


class IpReleased(Event, tag="IpReleased", frozen=True):
    """The lease ended; the address is kept from reuse until ``quarantined_until``."""

    network: Name
    address: str
    owner: Owner
    quarantined_until: Millis = 0
    reason: str = 'requested'
    prefix_length: int = 0
    gateway: str | None = None


class IpConflict(Event, tag="IpConflict", frozen=True):
    """A VM carries an address another owner holds.  Recorded, nothing changed."""

    network: Name
    address: str
    owner: Owner
    holder: Owner


LEASE_EVENTS = {MAC: LeaseEvents(MacLeased, MacLeaseReturned, MacLeaseOffered, MacLeaseConfirmed, MacReleased, MacConflict),
                IP: LeaseEvents(IpLeased, IpLeaseReturned, IpLeaseOffered, IpLeaseConfirmed, IpReleased, IpConflict)}


class PoolCreated(Event, tag="PoolCreated", frozen=True):
    name: Name
    range: str | None
    namespaces: tuple[str, ...] = ()
    default: bool = False
    start: int = 0


class PoolChanged(Event, tag="PoolChanged", frozen=True):
    """The registry's definition of a pool, after a change: its (claimed) range, namespaces and default."""

    name: Name
    range: str | None
    namespaces: tuple[str, ...] = ()
    default: bool = False


class PoolDeleted(Event, tag="PoolDeleted", frozen=True):
    name: Name


class PoolRangeSet(Event, tag="PoolRangeSet", frozen=True):
    """The range a pool hands out from, on its own partition; next-fit starts again at ``start``."""

    pool: Name
    range: str
    start: int = 0
    dropped: int = 0  # quarantined addresses outside the new range, forgotten


class PoolRetired(Event, tag="PoolRetired", frozen=True):
    """The pool's partition will hand out nothing more from it; the registry may now delete it."""

    pool: Name


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


class CommandRejected(Event, tag="CommandRejected", frozen=True):
    """The command was decided and refused; ``code`` is stable, ``reason`` is for people."""

    command: str
    code: str
    reason: str
    field: str | None = None
    pool: str | None = None
    holder: Owner | None = None
    network: str | None = None


class IpDrift(Event, tag="IpDrift", frozen=True):
    """A guest uses an address of a managed network that is not its lease.  ``kind``: "unleased"
    (nobody holds it) or "held-by-other" (``holder`` does).  Recorded, nothing changed."""

    network: Name
    address: str
    owner: Owner
    kind: str
    holder: Owner | None = None


AnyEvent = (  # in the order the schemas list them
    PoolCreated | MacLeased | MacLeaseReturned | MacReleased | CommandRejected | MacLeaseOffered | MacLeaseConfirmed
    | MacConflict | NetworkDefined | NetworkDeleted | IpLeased | IpLeaseReturned | IpLeaseOffered | IpLeaseConfirmed | IpReleased
    | IpConflict | IpDrift | PoolChanged | PoolDeleted | PoolRangeSet | PoolRetired
)
EVENT_TYPES: tuple[type[Event], ...] = get_args(AnyEvent)
event_decoder = msgspec.json.Decoder(AnyEvent)
encoder = msgspec.json.Encoder()
