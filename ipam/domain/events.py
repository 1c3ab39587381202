"""Events: what the allocators decided, as written to the events topic and projected into Postgres.

msgspec tagged unions with stable tags, a public API (``schemas/events``).  The six lease
events exist once per kind of address and are made from its ``Kind``.  Addresses travel as
canonical text (MACs lower-case colon form, IPs as ``ipaddress`` prints them); times as integer
milliseconds since the Unix epoch.  Evolution rules in docs/events.md#schema-evolution.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple, Union

import msgspec
from msgspec import Struct

from .commands import SubnetSpec
from .kinds import IP, MAC, CommandId, Kind, Millis, Name, Owner


class Event(Struct, tag_field="type", kw_only=True, frozen=True):
    command_id: CommandId
    at: Millis


class LeaseEvents(NamedTuple):
    leased: type
    returned: type
    offered: type
    confirmed: type
    released: type
    conflict: type


def _lease_events(kind: Kind) -> LeaseEvents:
    head = [(kind.space, Name), (kind.address, kind.address_type)]
    given = head + list(kind.detail) + [("owner", Owner)]
    p, w = kind.prefix, kind.word
    shapes: dict[str, tuple[str, list[Any], str]] = {  # role -> (tag, fields, docstring)
        "leased": (f"{p}Leased", given + [("static", bool, False), ("pending_until", Millis, 0), ("adopted", bool, False),
                                          *kind.extra],
                   f"A {w} address was leased to ``owner``.  ``pending_until`` non-zero: provisional until a VM is seen "
                   "holding it.  ``adopted``: found in a VM by the watcher, not requested."),
        "returned": (f"{p}LeaseReturned", given + list(kind.extra),
                     "The owner already held this address: sticky answer, state unchanged."),
        "offered": (f"{p}LeaseOffered", given + list(kind.extra),
                    "Answer to a dry run: the address the owner would get.  Nothing changed."),
        "confirmed": (f"{p}LeaseConfirmed", head + [("owner", Owner), ("previous", Owner)],
                      "A pending lease was seen on a real VM: it is now that VM's (``owner``), no longer pending."),
        "released": (f"{p}Released", head + [("owner", Owner), ("quarantined_until", Millis, 0), ("reason", str, "requested")]
                     + [(name, kind_, 0) for name, kind_ in kind.detail] + list(kind.extra),
                     "The lease ended; the address is kept from reuse until ``quarantined_until``."),
        "conflict": (f"{p}Conflict", head + [("owner", Owner), ("holder", Owner)],
                     "A VM carries an address another owner holds.  Recorded, nothing changed."),
    }
    return LeaseEvents(**{
        role: msgspec.defstruct(tag, fields, bases=(Event,), tag=tag, frozen=True, module=__name__,
                                namespace={"__doc__": doc})
        for role, (tag, fields, doc) in shapes.items()})


LEASE_EVENTS = {MAC: _lease_events(MAC), IP: _lease_events(IP)}
MacLeased, MacLeaseReturned, MacLeaseOffered, MacLeaseConfirmed, MacReleased, MacConflict = LEASE_EVENTS[MAC]
IpLeased, IpLeaseReturned, IpLeaseOffered, IpLeaseConfirmed, IpReleased, IpConflict = LEASE_EVENTS[IP]


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


EVENT_TYPES: tuple[type, ...] = (
    PoolCreated, MacLeased, MacLeaseReturned, MacReleased, CommandRejected, MacLeaseOffered, MacLeaseConfirmed, MacConflict,
    NetworkDefined, NetworkDeleted, IpLeased, IpLeaseReturned, IpLeaseOffered, IpLeaseConfirmed, IpReleased, IpConflict,
    IpDrift, PoolChanged, PoolDeleted, PoolRangeSet, PoolRetired,
)
if TYPE_CHECKING:  # the lease events are made from the kinds at run time: statically, any Event
    AnyEvent = Event
else:
    AnyEvent = Union[EVENT_TYPES]  # noqa: UP007 (a union of a tuple of types has no | spelling)
event_decoder = msgspec.json.Decoder(AnyEvent)
encoder = msgspec.json.Encoder()
