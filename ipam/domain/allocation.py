"""The MAC decider: ``decide(state, command) -> events`` and ``evolve(state, event) -> state``.

One ``State`` holds everything one partition of the commands topic decides over:
the pool registry (all pool definitions; authoritative on the registry stream's
partition, reference data elsewhere) and the lease books of the pools that live on
this partition.  ``decide`` never mutates; ``evolve`` mutates in place and returns
the state (a deliberate trade: copying a million-lease book per event is not an option).
Time comes from the command (``at``), so the same command always gives the same events.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

from . import ip_allocation as ip
from .mac import MacFormatError, format_mac, parse_mac, parse_unicast, unicast_at, unicast_below
from .messages import (
    AnyCommand,
    AnyEvent,
    CommandRejected,
    CreatePool,
    DefineNetwork,
    DeleteNetwork,
    ExpirePending,
    ExpirePendingIp,
    LeaseIp,
    ObserveGuestIps,
    ObserveVmIps,
    ReleaseIp,
    ReleaseIps,
    LeaseMac,
    MacConflict,
    MacLeaseConfirmed,
    MacLeased,
    MacLeaseOffered,
    MacLeaseReturned,
    MacReleased,
    ObserveVm,
    Owner,
    PoolCreated,
    ReleaseMac,
    ReleaseOwner,
)
from .pools import Pool, RangeError, parse_range, pool_name_problem, start_offset

REGISTRY_KEY = "@registry"
DEFAULT_QUARANTINE_MS = 10 * 60 * 1000
DEFAULT_RECENT_MAX = 10_000
NAMESPACE_MAX = 63
# Owners made by the admission webhook before the VM has a uid carry this prefix on vm_uid.
PROVISIONAL_UID_PREFIX = "admission:"


def binds(holder: Owner, owner: Owner) -> bool:
    """Whether a provisional holder (made at admission, before the VM had a uid, and perhaps a
    name: generateName) is the VM ``owner`` that now shows up holding its MAC."""
    return (
        holder.vm_uid.startswith(PROVISIONAL_UID_PREFIX)
        and not owner.vm_uid.startswith(PROVISIONAL_UID_PREFIX)
        and holder.namespace == owner.namespace
        and holder.interface == owner.interface
        and owner.vm.startswith(holder.vm)
    )


def stream_key(command: AnyCommand) -> str:
    """The key a command is partitioned by: the pool, the network, or the registry for pool definitions."""
    if isinstance(command, CreatePool):
        return REGISTRY_KEY
    if isinstance(command, (DefineNetwork, DeleteNetwork)):
        return command.name
    network = getattr(command, "network", None)
    return network if network is not None else command.pool


def pool_of(command: AnyCommand) -> str | None:
    """The pool a MAC command needs to know (None for pool definitions and IP commands)."""
    return None if isinstance(command, CreatePool) else getattr(command, "pool", None)


def mac_of(text: str) -> int:
    """Fast parse for MACs we wrote ourselves (canonical colon form)."""
    return int(text.replace(":", ""), 16)


class PoolBook:
    """Leases of one pool.  ``vms`` indexes the MACs of each VM name, so release by VM is O(VM);
    ``pending`` holds the provisional leases (MAC -> time they lapse).

    Memory matters here (a partition may hold millions of leases): the VM index is keyed by the VM
    name string the Owner already holds, and maps to the MAC itself (the same int object as the
    ``by_mac`` key) or, for VMs with several leases, a tuple of them; a namespace is told apart
    through ``by_mac`` (a name used in many namespaces costs a scan of its MACs per change).  A dict per
    VM keyed by (namespace, vm) used to take most of a lease's bytes."""

    __slots__ = ("pool", "by_mac", "vms", "quarantine", "cursor", "pending")

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.by_mac: dict[int, Owner] = {}
        self.vms: dict[str, int | tuple[int, ...]] = {}
        self.quarantine: dict[int, int] = {}
        self.cursor = pool.start
        self.pending: dict[int, int] = {}

    def _macs(self, vm: str) -> tuple[int, ...]:
        macs = self.vms.get(vm)
        return () if macs is None else (macs,) if type(macs) is int else macs

    def hold(self, mac: int, owner: Owner) -> None:
        self.by_mac[mac] = owner
        macs = self.vms.get(owner.vm)
        if macs is None:
            self.vms[owner.vm] = mac
        else:
            self.vms[owner.vm] = ((macs,) if type(macs) is int else macs) + (mac,)

    def drop(self, mac: int) -> Owner | None:
        owner = self.by_mac.pop(mac, None)
        self.pending.pop(mac, None)
        if owner is not None:
            rest = tuple(m for m in self._macs(owner.vm) if m != mac)
            if not rest:
                self.vms.pop(owner.vm, None)
            else:
                self.vms[owner.vm] = rest[0] if len(rest) == 1 else rest
        return owner

    def held_by(self, owner: Owner) -> int | None:
        by_mac = self.by_mac
        for mac in self._macs(owner.vm):
            if by_mac.get(mac) == owner:
                return mac
        return None

    def owners_of(self, namespace: str, vm: str) -> dict[Owner, int]:
        """Every lease of one VM (all its incarnations): owner -> MAC."""
        by_mac = self.by_mac
        found = {}
        for mac in self._macs(vm):
            owner = by_mac[mac]
            if owner.namespace == namespace:
                found[owner] = mac
        return found

    def quarantined(self, at: int) -> int:
        return sum(1 for until in self.quarantine.values() if until > at)

    def snapshot(self) -> tuple:
        return (self.pool, dict(self.by_mac), self.quarantine.copy(), self.cursor, self.pending.copy())


class State:
    __slots__ = ("pools", "books", "networks", "recent", "quarantine_ms", "recent_max")

    def __init__(self, quarantine_ms: int = DEFAULT_QUARANTINE_MS, recent_max: int = DEFAULT_RECENT_MAX) -> None:
        self.pools: dict[str, Pool] = {}
        self.books: dict[str, PoolBook] = {}
        self.networks: dict[str, ip.NetworkBook] = {}  # the networks keyed to this partition
        # OrderedDict: dropping the oldest of a plain dict (del d[next(iter(d))]) walks the deleted slots
        # left at its front, which grows until the next resize (4 % of the pipeline in a profile).
        self.recent: OrderedDict[str, None] = OrderedDict()
        self.quarantine_ms = quarantine_ms
        self.recent_max = recent_max

    def book(self, name: str) -> PoolBook:
        book = self.books.get(name)
        if book is None:
            book = self.books[name] = PoolBook(self.pools[name])
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
        books = {n: b.snapshot() for n, b in self.books.items() if b.by_mac or b.quarantine or b.cursor != b.pool.start}
        networks = {n: b.snapshot() for n, b in self.networks.items()}
        return {"pools": dict(self.pools), "books": books, "networks": networks, "recent": list(self.recent)}


def pool_from_event(ev: PoolCreated) -> Pool:
    return Pool(
        name=ev.name,
        range=None if ev.range is None else parse_range(ev.range),
        namespaces=tuple(ev.namespaces),
        default=ev.default,
        start=ev.start,
    )


# --- decide -------------------------------------------------------------------------


def decide(state: State, command: AnyCommand) -> list[AnyEvent]:
    if command.command_id in state.recent:
        return []  # seen before: its events are already in the log
    if isinstance(command, LeaseMac):
        return _lease(state, command)
    if isinstance(command, ReleaseOwner):
        return _release_owner(state, command)
    if isinstance(command, ReleaseMac):
        return _release_mac(state, command)
    if isinstance(command, ObserveVm):
        return _observe(state, command)
    if isinstance(command, ExpirePending):
        return _expire(state, command)
    if isinstance(command, CreatePool):
        return _create_pool(state, command)
    networks, quarantine_ms = state.networks, state.quarantine_ms
    if isinstance(command, LeaseIp):
        return ip.lease(networks, command, quarantine_ms, binds)
    if isinstance(command, ObserveVmIps):
        return ip.observe(networks, command, quarantine_ms, binds)
    if isinstance(command, ObserveGuestIps):
        return ip.drift(networks, command, binds)
    if isinstance(command, ExpirePendingIp):
        return ip.expire(networks, command, quarantine_ms)
    if isinstance(command, ReleaseIps):
        return ip.release_owner(networks, command, quarantine_ms)
    if isinstance(command, ReleaseIp):
        return ip.release_address(networks, command, quarantine_ms)
    if isinstance(command, DefineNetwork):
        return ip.define(networks, command)
    if isinstance(command, DeleteNetwork):
        return ip.delete(networks, command)
    raise TypeError(f"not a command: {command!r}")


def _reject(cmd: AnyCommand, code: str, reason: str, field: str | None = None, holder: Owner | None = None) -> list[AnyEvent]:
    return [
        CommandRejected(
            command_id=cmd.command_id,
            at=cmd.at,
            command=type(cmd).__name__,
            code=code,
            reason=reason,
            field=field,
            pool=getattr(cmd, "pool", None) or getattr(cmd, "name", None),
            holder=holder,
        )
    ]


def _create_pool(state: State, cmd: CreatePool) -> list[AnyEvent]:
    problem = pool_name_problem(cmd.name)
    if problem:
        return _reject(cmd, "invalid", f"pool name {problem}", "name")
    if cmd.name in state.pools:
        return _reject(cmd, "exists", f"pool {cmd.name!r} already exists", "name")
    for ns in cmd.namespaces:
        if not ns or len(ns) > NAMESPACE_MAX:
            return _reject(cmd, "invalid", f"namespace {ns[:80]!r} is not a valid namespace name", "namespaces")
    if len(set(cmd.namespaces)) != len(cmd.namespaces):
        return _reject(cmd, "invalid", "namespaces lists a namespace twice", "namespaces")
    if cmd.external:
        if cmd.range is not None:
            return _reject(cmd, "invalid", "an external pool has no range", "range")
        other = next((p for p in state.pools.values() if p.external), None)
        if other is not None:
            return _reject(cmd, "exists", f"pool {other.name!r} is already the external pool", "external")
        rng = None
    else:
        if cmd.range is None:
            return _reject(cmd, "invalid", "a range 'first-last' is required (or external: true)", "range")
        try:
            rng = parse_range(cmd.range)
        except RangeError as e:
            return _reject(cmd, "invalid", str(e), "range")
        for p in state.pools.values():
            if p.range is not None and p.range.overlaps(rng):
                return _reject(cmd, "overlap", f"range {rng} overlaps pool {p.name!r} ({p.range})", "range")
    for p in state.pools.values():
        bound = set(p.namespaces).intersection(cmd.namespaces)
        if bound:
            return _reject(cmd, "conflict", f"namespace {sorted(bound)[0]!r} is already bound to pool {p.name!r}", "namespaces")
        if cmd.default and p.default:
            return _reject(cmd, "conflict", f"pool {p.name!r} is already the default pool", "default")
    if cmd.default and rng is None:
        return _reject(cmd, "invalid", "the external pool cannot be the default pool", "default")
    size = 0 if rng is None else rng.size
    return [
        PoolCreated(
            command_id=cmd.command_id,
            at=cmd.at,
            name=cmd.name,
            range=None if rng is None else str(rng),
            namespaces=tuple(cmd.namespaces),
            default=cmd.default,
            start=start_offset(cmd.name, cmd.command_id, size),
        )
    ]


def _lease(state: State, cmd: LeaseMac) -> list[AnyEvent]:
    pool = state.pools.get(cmd.pool)
    if pool is None:
        return _reject(cmd, "unknown_pool", f"pool {cmd.pool!r} does not exist", "pool")
    book = state.books.get(cmd.pool) or PoolBook(pool)
    owner = cmd.owner
    held = book.held_by(owner)
    if cmd.mac is not None:
        return _lease_static(state, cmd, pool, book, held)
    if held is not None:
        return [MacLeaseReturned(command_id=cmd.command_id, at=cmd.at, pool=pool.name, mac=format_mac(held), owner=owner)]
    if pool.range is None:
        return _reject(cmd, "static_only", f"pool {pool.name!r} is the external pool: it only takes requests with a mac", "mac")
    mac = _next_free(book, cmd.at)
    if mac is None:
        return _reject(
            cmd,
            "exhausted",
            f"pool {pool.name!r} is exhausted: all {pool.size} addresses are leased or quarantined "
            f"({len(book.by_mac)} leased, {book.quarantined(cmd.at)} quarantined)",
            "pool",
        )
    if cmd.dry_run:
        return [MacLeaseOffered(command_id=cmd.command_id, at=cmd.at, pool=pool.name, mac=format_mac(mac), owner=owner)]
    return [MacLeased(command_id=cmd.command_id, at=cmd.at, pool=pool.name, mac=format_mac(mac), owner=owner,
                      pending_until=cmd.pending_until)]


def _lease_static(state: State, cmd: LeaseMac, pool: Pool, book: PoolBook, held: int | None) -> list[AnyEvent]:
    try:
        mac = parse_unicast(cmd.mac)
    except MacFormatError as e:
        return _reject(cmd, "invalid", str(e), "mac")
    if pool.range is None:
        inside = next((p for p in state.pools.values() if p.range is not None and mac in p.range), None)
        if inside is not None:
            return _reject(cmd, "wrong_pool", f"{format_mac(mac)} is inside pool {inside.name!r}; lease it from there", "mac")
    elif mac not in pool.range:
        return _reject(cmd, "outside_pool", f"{format_mac(mac)} is outside pool {pool.name!r} ({pool.range})", "mac")
    holder = book.by_mac.get(mac)
    text = format_mac(mac)
    if holder == cmd.owner:
        return [MacLeaseReturned(command_id=cmd.command_id, at=cmd.at, pool=pool.name, mac=text, owner=cmd.owner)]
    if holder is not None and mac in book.pending and binds(holder, cmd.owner):
        if cmd.dry_run:
            return [MacLeaseOffered(command_id=cmd.command_id, at=cmd.at, pool=pool.name, mac=text, owner=cmd.owner)]
        events: list[AnyEvent] = []
        if held is not None:  # the interface held another MAC: the one it now carries wins
            events.append(_released(cmd, pool.name, held, cmd.owner, state.quarantine_ms, "replaced"))
        events.append(MacLeaseConfirmed(command_id=cmd.command_id, at=cmd.at, pool=pool.name, mac=text, owner=cmd.owner,
                                        previous=holder))
        return events
    if holder is not None:
        return _reject(cmd, "held", f"{text} is held by {holder.describe()}", "mac", holder)
    if cmd.dry_run:
        return [MacLeaseOffered(command_id=cmd.command_id, at=cmd.at, pool=pool.name, mac=text, owner=cmd.owner)]
    events: list[AnyEvent] = []
    if held is not None:  # the interface moves to the MAC the user asked for
        events.append(_released(cmd, pool.name, held, cmd.owner, state.quarantine_ms, "replaced"))
    events.append(MacLeased(command_id=cmd.command_id, at=cmd.at, pool=pool.name, mac=text, owner=cmd.owner, static=True,
                            pending_until=cmd.pending_until))
    return events


def _next_free(book: PoolBook, at: int) -> int | None:
    """Next-fit from the cursor: skip leased and quarantined addresses, wrap once."""
    rng = book.pool.range
    size = rng.size
    if len(book.by_mac) >= size:
        return None
    lo, used, quarantine = rng.lo, book.by_mac, book.quarantine
    off = book.cursor % size
    for _ in range(size):
        mac = unicast_at(lo + off)
        if mac not in used:
            until = quarantine.get(mac)
            if until is None or until <= at:
                return mac
        off += 1
        if off == size:
            off = 0
    return None


def _released(cmd: AnyCommand, pool: str, mac: int, owner: Owner, quarantine_ms: int, reason: str) -> MacReleased:
    return MacReleased(
        command_id=cmd.command_id,
        at=cmd.at,
        pool=pool,
        mac=format_mac(mac),
        owner=owner,
        quarantined_until=cmd.at + quarantine_ms,
        reason=reason,
    )


def _release_owner(state: State, cmd: ReleaseOwner) -> list[AnyEvent]:
    if cmd.pool not in state.pools:
        return _reject(cmd, "unknown_pool", f"pool {cmd.pool!r} does not exist", "pool")
    book = state.books.get(cmd.pool)
    held = {} if book is None else book.owners_of(cmd.namespace, cmd.vm)
    chosen = sorted((mac, o) for o, mac in held.items() if cmd.interface is None or o.interface == cmd.interface)
    if not chosen:
        what = f"{cmd.namespace}/{cmd.vm}" + (f" interface {cmd.interface}" if cmd.interface else "")
        return _reject(cmd, "not_found", f"{what} holds no lease in pool {cmd.pool!r}")
    return [_released(cmd, cmd.pool, mac, o, state.quarantine_ms, "requested") for mac, o in chosen]


def _release_mac(state: State, cmd: ReleaseMac) -> list[AnyEvent]:
    if cmd.pool not in state.pools:
        return _reject(cmd, "unknown_pool", f"pool {cmd.pool!r} does not exist", "pool")
    try:
        mac = parse_mac(cmd.mac)
    except MacFormatError as e:
        return _reject(cmd, "invalid", str(e), "mac")
    book = state.books.get(cmd.pool)
    holder = None if book is None else book.by_mac.get(mac)
    if holder is None:
        return _reject(cmd, "not_found", f"{format_mac(mac)} is not leased in pool {cmd.pool!r}", "mac")
    return [_released(cmd, cmd.pool, mac, holder, state.quarantine_ms, "requested")]


def _observe(state: State, cmd: ObserveVm) -> list[AnyEvent]:
    """Bring the pool's book in line with one VM as the cluster has it (see ``ObserveVm``)."""
    pool = state.pools.get(cmd.pool)
    if pool is None:
        return _reject(cmd, "unknown_pool", f"pool {cmd.pool!r} does not exist", "pool")
    book = state.books.get(cmd.pool) or PoolBook(pool)
    base = dict(command_id=cmd.command_id, at=cmd.at, pool=pool.name)
    events: list[AnyEvent] = []
    present: set[str] = set()
    claimed: dict[int, Owner] = {}  # MACs taken by this VM within this command
    freed: set[int] = set()  # MACs this command already released (decide does not mutate the book)
    observed = {} if cmd.deleted else {obs.name: mac_of(obs.mac) for obs in cmd.interfaces}
    # Interfaces whose spec now names another MAC let go of their old one first, so MACs can
    # move (or swap) between interfaces of this VM within one observation.
    for owner, mac in sorted(book.owners_of(cmd.namespace, cmd.vm).items(), key=lambda item: item[1]):
        if owner.vm_uid == cmd.vm_uid and observed.get(owner.interface, mac) != mac and mac in observed.values():
            events.append(_released(cmd, pool.name, mac, owner, state.quarantine_ms, "replaced"))
            freed.add(mac)
    for obs in () if cmd.deleted else cmd.interfaces:
        me = Owner(namespace=cmd.namespace, vm=cmd.vm, vm_uid=cmd.vm_uid, interface=obs.name)
        present.add(obs.name)
        mac = mac_of(obs.mac)
        holder = claimed.get(mac) or (None if mac in freed else book.by_mac.get(mac))
        if holder == me:
            if mac in book.pending:
                events.append(MacLeaseConfirmed(**base, mac=obs.mac, owner=me, previous=me))
        elif holder is not None and mac in book.pending and mac not in claimed and binds(holder, me):
            current = book.held_by(me)
            if current is not None and current not in freed:
                events.append(_released(cmd, pool.name, current, me, state.quarantine_ms, "replaced"))
                freed.add(current)
            events.append(MacLeaseConfirmed(**base, mac=obs.mac, owner=me, previous=holder))
        elif holder is not None:
            events.append(MacConflict(**base, mac=obs.mac, owner=me, holder=holder))
            continue
        elif pool.range is not None and mac not in pool.range:
            events += _reject(cmd, "outside_pool", f"{obs.mac} is outside pool {pool.name!r} ({pool.range})", "interfaces")
            continue
        else:
            current = book.held_by(me)
            if current is not None and current not in freed:  # the spec now names another MAC for this interface
                events.append(_released(cmd, pool.name, current, me, state.quarantine_ms, "replaced"))
                freed.add(current)
            events.append(MacLeased(**base, mac=obs.mac, owner=me, static=True, adopted=True))
        claimed[mac] = me
    reason = "vm-deleted" if cmd.deleted else "interface-removed"
    held = book.owners_of(cmd.namespace, cmd.vm)
    for owner, mac in sorted(held.items(), key=lambda item: item[1]):
        if owner.vm_uid != cmd.vm_uid or owner.interface in present:
            continue
        if cmd.deleted or mac not in book.pending:  # a pending hot-plug may not be persisted yet
            events.append(_released(cmd, pool.name, mac, owner, state.quarantine_ms, reason))
    return events


def _expire(state: State, cmd: ExpirePending) -> list[AnyEvent]:
    book = state.books.get(cmd.pool)
    if book is None:
        return []
    mac = mac_of(cmd.mac)
    holder, until = book.by_mac.get(mac), book.pending.get(mac)
    if holder is None or until is None or holder.vm_uid != cmd.vm_uid or cmd.at < until:
        return []  # confirmed, released or re-leased meanwhile: nothing to do
    return [_released(cmd, cmd.pool, mac, holder, state.quarantine_ms, "pending-expired")]


# --- evolve -------------------------------------------------------------------------


def evolve(state: State, event: AnyEvent) -> State:
    state.remember(event.command_id)
    kind = type(event)
    if kind is MacLeased:
        book = state.book(event.pool)
        mac = mac_of(event.mac)
        book.hold(mac, event.owner)
        if event.pending_until:
            book.pending[mac] = event.pending_until
        elif book.pending:
            book.pending.pop(mac, None)
        if book.quarantine:
            book.quarantine.pop(mac, None)
        if not event.static:
            rng = book.pool.range
            book.cursor = (unicast_below(mac) - rng.lo + 1) % rng.size
    elif kind is MacReleased:
        book = state.book(event.pool)
        mac = mac_of(event.mac)
        book.drop(mac)
        if event.quarantined_until > event.at:
            book.quarantine[mac] = event.quarantined_until
    elif kind is MacLeaseConfirmed:
        book = state.book(event.pool)
        mac = mac_of(event.mac)
        book.drop(mac)
        book.hold(mac, event.owner)
    elif kind is PoolCreated:
        state.pools[event.name] = pool_from_event(event)
    elif kind in ip.IP_STATE_EVENTS:
        ip.evolve_ip(state.networks, event)
    return state


def replay(state: State, events: Iterable[AnyEvent]) -> State:
    for ev in events:
        evolve(state, ev)
    return state
