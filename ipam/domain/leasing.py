"""Deciding leases, for every kind of address: lease, release, reconcile with what the cluster shows, expire.

Each function decides one command against one space and its book and returns the events; it
never changes the book (``evolve`` at the end of the module does, event by event).  The space
(a ``pools.Pool`` or a ``networks.Network``) answers what differs: how addresses are parsed and
written, which can be held, where next-fit looks, what a lease event carries besides the address.
Time comes from the command (``at``), so the same command always gives the same events.
"""

from __future__ import annotations

from .book import Book, Space
from .events import LEASE_EVENTS, CommandRejected, Event
from .kinds import Owner, binds, moves, reserves, supersedes

NAMED_MAX = 5  # leases named in a refusal before "and N more"


def reject(space_field: str, cmd, code: str, reason: str, field: str | None = None, holder: Owner | None = None,
           space: str | None = None) -> list[Event]:
    """A refusal, naming the space it was about in the field of its kind (``pool`` or ``network``)."""
    return [CommandRejected(command_id=cmd.command_id, at=cmd.at, command=type(cmd).__name__, code=code, reason=reason,
                            field=field, holder=holder, **{space_field: space or getattr(cmd, space_field, None)})]


def named(book: Book, keys) -> str:
    """Some leases of the book, for people: ``address (owner)``, the first few and how many more."""
    keys = sorted(keys)
    shown = ", ".join(f"{book.space.format(k)} ({book.by_key[k].describe()})" for k in keys[:NAMED_MAX])
    return shown + (f" and {len(keys) - NAMED_MAX} more" if len(keys) > NAMED_MAX else "")


class _Decision:
    """The events one command gives in one space, made with the space's vocabulary."""

    __slots__ = ("space", "cmd", "events", "base", "quarantine_ms")

    def __init__(self, space: Space, cmd, quarantine_ms: int) -> None:
        self.space, self.cmd, self.events, self.quarantine_ms = space, cmd, LEASE_EVENTS[space.kind], quarantine_ms
        self.base = {"command_id": cmd.command_id, "at": cmd.at, space.kind.space: space.name}

    def event(self, role: str, key: int, owner: Owner, **fields) -> Event:
        if role in ("leased", "returned", "offered", "released", "confirmed"):
            fields.update(self.space.detail(key))
            if self.space.kind.extra:
                fields.update(self.space.extra(key))
        return getattr(self.events, role)(**self.base, **{self.space.kind.address: self.space.format(key)}, owner=owner,
                                          **fields)

    def released(self, key: int, owner: Owner, reason: str) -> Event:
        return self.event("released", key, owner, quarantined_until=self.cmd.at + self.quarantine_ms, reason=reason)

    def reject(self, code: str, reason: str, field: str | None = None, holder: Owner | None = None) -> list[Event]:
        return reject(self.space.kind.space, self.cmd, code, reason, field, holder, self.space.name)


def _requested(space: Space, cmd) -> dict[int, int] | list[Event]:
    """slot -> key the command asks for by name; or the refusal of what it asked for."""
    name = space.kind.requested[0]
    value = getattr(cmd, name)
    given = [(f"{name}[{i}]", t) for i, t in enumerate(value)] if isinstance(value, tuple) else \
        [] if value is None else [(name, value)]
    wanted: dict[int, int] = {}
    for field, text in given:
        try:
            key = space.parse(text)
        except ValueError as e:
            return _Decision(space, cmd, 0).reject("invalid", str(e), field)
        slot = space.slot_of(key)
        if slot in wanted:
            return _Decision(space, cmd, 0).reject(
                "invalid", f"asks for two {space.slot_name(slot)}addresses; an interface gets one per family", field)
        problem = space.problem(key)
        if problem is not None:
            return _Decision(space, cmd, 0).reject(problem[0], f"{space.format(key)} {problem[1]}", field)
        wanted[slot] = key
    return wanted


def lease(space: Space, book: Book, cmd, quarantine_ms: int) -> list[Event]:
    """Per slot of the space: the address asked for (static), else the one held (sticky), else the next free."""
    wanted = _requested(space, cmd)
    if isinstance(wanted, list):
        return wanted
    d = _Decision(space, cmd, quarantine_ms)
    owner, held, out = cmd.owner, book.held_by(cmd.owner), []
    reserved = None
    for slot in space.slots:
        want, current = wanted.get(slot), held.get(slot)
        if want is None and current is not None:
            out.append(d.event("returned", current, owner))
            continue
        static = want is not None
        if want is None:  # set aside at admission, before the VM had a uid? (the CNI ADD of its pod may come first)
            reserved = book.reserved_for(owner) if reserved is None else reserved
            want = reserved.get(slot)
        if want is None:
            if not space.allocates:
                return d.reject("static_only", f"{space.kind.space} {space.name!r} is the external pool: it only takes "
                                               f"requests with a {space.kind.requested[0]}", space.kind.requested[0])
            want = book.next_free(slot, cmd.at)
            if want is None:
                return d.reject("exhausted", book.exhausted(slot, cmd.at), space.kind.space)
        holder = book.by_key.get(want)
        if holder == owner:
            out.append(d.event("returned", want, owner))
            continue
        binding = holder is not None and want in book.pending and binds(holder, owner)
        handover = None if holder is None or binding else _handover(book, cmd, want, holder, static)
        if holder is not None and not binding and handover is None:
            return d.reject("held", f"{space.format(want)} is held by {holder.describe()}", space.kind.requested[0], holder)
        if cmd.dry_run:
            out.append(d.event("offered", want, owner))
            continue
        if current is not None:  # the interface moves to the address it asked for (or now carries)
            out.append(d.released(current, owner, "replaced"))
        if handover is not None and holder is not None:  # (a handover always has a holder)
            out.append(d.released(want, holder, handover))
            static = True  # handed over, not chosen: next-fit stays where it is
        if binding:
            out.append(d.event("confirmed", want, owner, previous=holder))
        else:
            out.append(d.event("leased", want, owner, static=static, pending_until=cmd.pending_until))
    return out


def _handover(book: Book, cmd, key: int, holder: Owner, static: bool) -> str | None:
    """Why an address another owner holds goes to this one (the reason its release records), or None: a
    reservation made for it, an earlier admission of it still pending, or its source VM's when it is received
    by a decentralized live migration."""
    if key in book.pending and reserves(holder, cmd.owner):
        return "reservation-taken"
    if key in book.pending and supersedes(holder, cmd.owner):
        return "superseded"  # the same VM admitted again: the earlier, never-persisted admission's lease
    if static and cmd.receives and moves(holder, cmd.owner):
        return "moved"
    return None


def release_owner(space: Space, book: Book, cmd, quarantine_ms: int) -> list[Event]:
    chosen = [(k, o) for k, o in book.leases_of(cmd.namespace, cmd.vm)
              if cmd.interface in (None, o.interface) and cmd.vm_uid in (None, o.vm_uid) and cmd.workload in (None, o.workload)
              and cmd.cluster in (None, o.cluster)]
    d = _Decision(space, cmd, quarantine_ms)
    if not chosen:
        what = f"{cmd.namespace}/{cmd.vm}" + (f" interface {cmd.interface}" if cmd.interface else "")
        return d.reject("not_found", f"{what} holds no {space.kind.word} lease in {space.kind.space} {space.name!r}")
    return [d.released(k, o, "requested") for k, o in chosen]


def release_address(space: Space, book: Book, cmd, quarantine_ms: int) -> list[Event]:
    d = _Decision(space, cmd, quarantine_ms)
    field = space.kind.address
    try:
        key = space.parse(getattr(cmd, field))
    except ValueError as e:
        return d.reject("invalid", str(e), field)
    holder = book.by_key.get(key)
    if holder is None:
        return d.reject("not_found", f"{space.format(key)} is not leased in {space.kind.space} {space.name!r}", field)
    return [d.released(key, holder, "requested")]


def expire(space: Space, book: Book, cmd, quarantine_ms: int) -> list[Event]:
    """Release a pending lease past its time, unless it was confirmed, released or re-leased meanwhile."""
    try:
        key = space.parse_own(getattr(cmd, space.kind.address))
    except ValueError:
        return []
    holder, until = book.by_key.get(key), book.pending.get(key)
    if holder is None or until is None or holder.vm_uid != cmd.vm_uid or cmd.at < until:
        return []
    return [_Decision(space, cmd, quarantine_ms).released(key, holder, "pending-expired")]


def _observed(space: Space, d: _Decision) -> tuple[list[tuple[Owner, list[int]]], list[Event]]:
    """Each observed interface with the keys it carries (one per slot), and refusals of what is not an address."""
    cmd, observed, refusals = d.cmd, [], []
    for item in () if cmd.deleted else cmd.interfaces:
        keys: list[int] = []
        for text in item.addresses:
            try:
                key = space.parse(text)  # what a VM carries is written by people: checked as such
            except ValueError as e:
                refusals += d.reject("invalid", f"interface {item.name}: {e}", "interfaces")
                continue
            if any(space.slot_of(k) == space.slot_of(key) for k in keys):
                refusals += d.reject("invalid", f"interface {item.name}: {text} is a second "
                                                f"{space.slot_name(space.slot_of(key))}address; an interface gets one per "
                                                "family", "interfaces")
                continue
            keys.append(key)
        observed.append((Owner(namespace=cmd.namespace, vm=cmd.vm, vm_uid=cmd.vm_uid, interface=item.name,
                               workload=cmd.workload, cluster=cmd.cluster), keys))
    return observed, refusals


def observe(space: Space, book: Book, cmd, quarantine_ms: int) -> list[Event]:
    """Bring the book in line with one VM as the cluster has it (see the observe command of each kind)."""
    d = _Decision(space, cmd, quarantine_ms)
    observed, events = _observed(space, d)
    where: dict[int, str] = {}  # key -> the interface that carries it now
    for me, keys in observed:
        for k in keys:
            where.setdefault(k, me.interface)
    mine = [(k, o) for k, o in book.leases_of(cmd.namespace, cmd.vm) if o.vm_uid == cmd.vm_uid and o.cluster == cmd.cluster]
    freed: set[int] = set()  # released by this command (decide does not change the book)
    for k, o in mine:  # an address now on another interface of this VM lets go of the old one first: moves and swaps
        if where.get(k, o.interface) != o.interface:
            events.append(d.released(k, o, "replaced"))
            freed.add(k)
    claimed: dict[int, Owner] = {}  # taken by this VM within this command
    for me, keys in observed:
        for key in keys:
            events += _reconcile(space, book, d, me, key, claimed, freed)
    present = {me.interface for me, _ in observed}
    reason = "vm-deleted" if cmd.deleted else "interface-removed"
    for k, o in mine:
        if o.interface not in present and k not in freed and (cmd.deleted or k not in book.pending):
            events.append(d.released(k, o, reason))  # (a pending hot-plug may not be persisted yet)
    return events


def _reconcile(space: Space, book: Book, d: _Decision, me: Owner, key: int, claimed: dict, freed: set) -> list[Event]:
    """One address an interface carries: confirm, bind, adopt, or report the conflict."""
    holder = claimed.get(key) or (None if key in freed else book.by_key.get(key))
    out: list[Event] = []
    if holder == me:
        if key in book.pending:
            out.append(d.event("confirmed", key, me, previous=me))
    elif holder is not None and (key not in book.pending or key in claimed or not binds(holder, me)):
        return [d.event("conflict", key, me, holder=holder)]
    else:
        problem = space.problem(key) if holder is None else None
        if problem is not None:
            return d.reject(problem[0], f"interface {me.interface}: {space.format(key)} {problem[1]}", "interfaces")
        current = book.held_by(me).get(space.slot_of(key))
        if current is not None and current != key and current not in freed:  # the interface now carries another address
            out.append(d.released(current, me, "replaced"))
            freed.add(current)
        if holder is not None:
            out.append(d.event("confirmed", key, me, previous=holder))
        else:
            out.append(d.event("leased", key, me, static=True, adopted=True))
    claimed[key] = me
    return out


# --- evolve ---------------------------------------------------------------------------------


def leased(book: Book, ev, key: int) -> None:
    book.hold(key, ev.owner)
    if ev.pending_until:
        book.pending[key] = ev.pending_until
    if book.quarantine:
        book.quarantine.pop(key, None)
        book.forget_expired(ev.at)
    if not ev.static:
        book.advance(key)


def released(book: Book, ev, key: int) -> None:
    book.drop(key)
    if ev.quarantined_until > ev.at:
        book.quarantine_until(key, ev.quarantined_until, ev.at)
    elif book.quarantine:
        book.forget_expired(ev.at)


def confirmed(book: Book, ev, key: int) -> None:
    book.drop(key)
    book.hold(key, ev.owner)
