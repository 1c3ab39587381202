"""The decider of one partition: ``decide(state, command) -> events`` and ``evolve(state, event) -> state``.

One ``State`` holds everything one partition of the commands topic decides over: the address
spaces keyed to it (MAC pools and IP networks) with their lease books, and the pool registry
(every pool definition: authoritative on the registry's partition, reference data elsewhere).
``decide`` never mutates; ``evolve`` mutates in place and returns the state (a deliberate
trade: copying a million-lease book per event is not an option).  Both dispatch by tables
keyed by message type; the lease commands and events of every kind share one implementation
(``leasing``), with the kind's space (``pools.Pool``, ``networks.Network``) as its data.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any, cast

import msgspec

from . import leasing, networks, pool_changes, pools
from .book import Book, Space
from .commands import (
    LEASE_COMMANDS,
    ChangePool,
    CreatePool,
    DefineNetwork,
    DeleteNetwork,
    DeletePool,
    LeaseMac,
    ObserveGuestIps,
    ObserveVm,
    RetirePool,
    SetPoolRange,
)
from .events import (
    LEASE_EVENTS,
    Event,
    NetworkDefined,
    NetworkDeleted,
    PoolChanged,
    PoolCreated,
    PoolDeleted,
    PoolRangeSet,
    PoolRetired,
)
from .kinds import KINDS, MAC, Kind

DEFAULT_QUARANTINE_MS = 10 * 60 * 1000
DEFAULT_RECENT_MAX = 10_000


class State:
    __slots__ = ("spaces", "books", "recent", "quarantine_ms", "recent_max")

    def __init__(self, quarantine_ms: int = DEFAULT_QUARANTINE_MS, recent_max: int = DEFAULT_RECENT_MAX) -> None:
        self.spaces: dict[Kind, dict[str, Space]] = {kind: {} for kind in KINDS}
        self.books: dict[Kind, dict[str, Book]] = {kind: {} for kind in KINDS}
        # OrderedDict: dropping the oldest of a plain dict (del d[next(iter(d))]) walks the deleted slots
        # left at its front, which grows until the next resize (4 % of the pipeline in a profile).
        self.recent: OrderedDict[str, None] = OrderedDict()
        self.quarantine_ms = quarantine_ms
        self.recent_max = recent_max

    @property
    def pools(self) -> dict[str, pools.Pool]:
        """The pool registry."""
        return cast("dict[str, pools.Pool]", self.spaces[MAC])  # the MAC spaces are pools

    def book(self, kind: Kind, name: str) -> Book:
        book = self.books[kind].get(name)
        if book is None:
            book = self.books[kind][name] = Book(self.spaces[kind][name])
        return book

    def remember(self, command_id: str) -> None:
        recent = self.recent
        if command_id in recent:
            return
        recent[command_id] = None
        if len(recent) > self.recent_max:
            recent.popitem(last=False)

    def snapshot(self) -> dict:
        """A comparable picture of the state, for replay-equality checks."""
        books = {(k.name, n): b.snapshot() for k in KINDS for n, b in self.books[k].items()
                 if b.by_key or b.quarantine or b.cursors != list(b.space.starts)}
        spaces = {k.name: dict(self.spaces[k]) for k in KINDS}
        return {"spaces": spaces, "books": books, "recent": list(self.recent)}


def stream_key(command) -> str:
    """The key a command is partitioned by: its pool or network, or the registry for pool definitions."""
    if isinstance(command, REGISTRY_COMMANDS):
        return pools.REGISTRY_KEY
    if isinstance(command, (DefineNetwork, DeleteNetwork)):
        return command.name
    network = getattr(command, "network", None)
    return network if network is not None else command.pool


REGISTRY_COMMANDS = (CreatePool, ChangePool, DeletePool)  # decided where every pool's claim is known
POOL_CHANGES = (ChangePool, DeletePool, SetPoolRange, RetirePool)  # decided with the other writer's latest facts


def pool_of(command) -> str | None:
    """The pool a MAC command needs to know (None for the registry's commands and IP commands)."""
    return None if isinstance(command, REGISTRY_COMMANDS) else getattr(command, "pool", None)


# --- decide -------------------------------------------------------------------------------------


def _lease_command(kind: Kind, decide_one: Callable, state: State, cmd) -> list[Event]:
    """A lease command of any kind: find its space, then let the lease core decide."""
    name = getattr(cmd, kind.space)
    space = state.spaces[kind].get(name)
    if space is None:
        if decide_one is leasing.expire:
            return []
        return leasing.reject(kind.space, cmd, f"unknown_{kind.space}", f"{kind.space} {name!r} does not exist", kind.space)
    if getattr(space, "retired", False) and type(cmd) in (LeaseMac, ObserveVm):
        return leasing.reject(kind.space, cmd, f"unknown_{kind.space}", f"{kind.space} {name!r} is being deleted",
                              kind.space)
    check = PRECHECKS.get(type(cmd))
    refusal = check(state, space, cmd) if check is not None else None
    if refusal:
        return refusal
    return decide_one(space, state.books[kind].get(name) or Book(space), cmd, state.quarantine_ms)


PRECHECKS = {LeaseMac: lambda state, pool, cmd: pools.outside_every_range(state.pools, pool, cmd)}
DECIDERS: dict[type, Callable[[State, Any], list[Event]]] = {  # each takes the type it is keyed by
    CreatePool: lambda state, cmd: pools.create(state.pools, cmd),
    ChangePool: pool_changes.change,
    DeletePool: pool_changes.delete,
    SetPoolRange: pool_changes.set_range,
    RetirePool: pool_changes.retire,
    DefineNetwork: networks.define,
    DeleteNetwork: networks.delete,
    ObserveGuestIps: networks.drift,
}
for _kind in KINDS:
    for _role, _type in LEASE_COMMANDS[_kind]._asdict().items():
        DECIDERS[_type] = partial(_lease_command, _kind, getattr(leasing, _role))


def decide(state: State, command) -> list[Event]:
    if command.command_id in state.recent:
        return []  # seen before: its events are already in the log
    decider = DECIDERS.get(type(command))
    if decider is None:
        raise TypeError(f"not a command: {command!r}")
    return decider(state, command)


# --- evolve -------------------------------------------------------------------------------------


def _lease_event(kind: Kind, apply: Callable, state: State, ev) -> None:
    book = state.book(kind, getattr(ev, kind.space))
    apply(book, ev, book.space.parse_own(getattr(ev, kind.address)))


def _pool_created(state: State, ev: PoolCreated) -> None:
    state.pools[ev.name] = pools.pool_from_event(ev)


EVOLVERS: dict[type[msgspec.Struct], Callable[[State, Any], None]] = {  # each takes the type it is keyed by
    PoolCreated: _pool_created,
    PoolChanged: pool_changes.changed,
    PoolDeleted: pool_changes.deleted,
    PoolRangeSet: pool_changes.range_set,
    PoolRetired: pool_changes.retired,
    NetworkDefined: networks.defined,
    NetworkDeleted: networks.deleted,
}
for _kind in KINDS:
    _events = LEASE_EVENTS[_kind]
    for _type, _apply in ((_events.leased, leasing.leased), (_events.released, leasing.released),
                          (_events.confirmed, leasing.confirmed)):
        EVOLVERS[_type] = partial(_lease_event, _kind, _apply)
STATE_EVENTS = frozenset(EVOLVERS)  # the events that change state; the others only answer a command


def evolve(state: State, event: Event) -> State:
    state.remember(event.command_id)
    apply = EVOLVERS.get(type(event))
    if apply is not None:
        apply(state, event)
    return state


def replay(state: State, events: Iterable[Event]) -> State:
    for ev in events:
        evolve(state, ev)
    return state
