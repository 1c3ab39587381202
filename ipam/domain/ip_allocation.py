"""The IP decider: the network half of ``decide``/``evolve`` (``allocation`` dispatches here).

A network's definition and its lease book live on the network's own partition (commands are
keyed by network name): networks may reuse each other's subnets (they are separate layer-2
domains), so no registry is needed.  Next-fit from a per-subnet random start, released
addresses quarantined, sticky per (network, VM uid, interface), one address per family.
"""

from __future__ import annotations

from .ip import (AddressError, Network, NetworkError, address_of, build_network, family_of, format_address,
                 parse_address)
from .messages import (
    AnyEvent,
    CommandRejected,
    DefineNetwork,
    DeleteNetwork,
    ExpirePendingIp,
    IpConflict,
    IpDrift,
    IpLeaseConfirmed,
    IpLeased,
    IpLeaseOffered,
    IpLeaseReturned,
    IpReleased,
    LeaseIp,
    NetworkDefined,
    NetworkDeleted,
    ObserveGuestIps,
    ObserveVmIps,
    Owner,
    ReleaseIp,
    ReleaseIps,
)

NAMED_MAX = 5  # leases named in a refusal before "and N more"


class NetworkBook:
    """Leases of one network.  ``vms`` indexes owners by (namespace, vm); an owner holds at most
    one address per family.  ``counts``: live leases per subnet (exhaustion without scanning)."""

    __slots__ = ("network", "spec", "by_key", "vms", "quarantine", "cursors", "pending", "counts")

    def __init__(self, network: Network, spec: tuple = ()) -> None:
        self.network = network
        self.spec = spec  # (subnets, dns, attachments) as defined, to tell an unchanged definition
        self.by_key: dict[int, Owner] = {}
        self.vms: dict[tuple[str, str], dict[Owner, tuple[int, ...]]] = {}
        self.quarantine: dict[int, int] = {}
        self.pending: dict[int, int] = {}
        self.cursors = [s.start for s in network.subnets]
        self.counts = [0] * len(network.subnets)

    def hold(self, key: int, owner: Owner) -> None:
        self.by_key[key] = owner
        vm = self.vms.get((owner.namespace, owner.vm))
        if vm is None:
            vm = self.vms[(owner.namespace, owner.vm)] = {}
        vm[owner] = vm.get(owner, ()) + (key,)
        i = self.network.subnet_of(key)
        if i is not None:
            self.counts[i] += 1

    def drop(self, key: int) -> Owner | None:
        owner = self.by_key.pop(key, None)
        self.pending.pop(key, None)
        if owner is None:
            return None
        vmkey = (owner.namespace, owner.vm)
        vm = self.vms.get(vmkey)
        if vm is not None:
            rest = tuple(k for k in vm.get(owner, ()) if k != key)
            if rest:
                vm[owner] = rest
            else:
                vm.pop(owner, None)
                if not vm:
                    del self.vms[vmkey]
        i = self.network.subnet_of(key)
        if i is not None:
            self.counts[i] -= 1
        return owner

    def held_by(self, owner: Owner) -> dict[int, int]:
        """family -> key the owner holds."""
        vm = self.vms.get((owner.namespace, owner.vm))
        keys = () if vm is None else vm.get(owner, ())
        return {family_of(k): k for k in keys}

    def redefine(self, network: Network, spec: tuple) -> None:
        """A new definition: cursors carry over for subnets that stay; counts are recomputed."""
        old = {str(s.cidr): c for s, c in zip(self.network.subnets, self.cursors)}
        self.network, self.spec = network, spec
        self.cursors = [old.get(str(s.cidr), s.start) for s in network.subnets]
        self.counts = [0] * len(network.subnets)
        for key in self.by_key:
            i = network.subnet_of(key)
            if i is not None:
                self.counts[i] += 1

    def snapshot(self) -> tuple:
        return (self.spec, dict(self.by_key), self.quarantine.copy(), list(self.cursors), self.pending.copy())


def spec_of(ev_or_cmd) -> tuple:
    return (tuple(ev_or_cmd.subnets), tuple(ev_or_cmd.dns), tuple(ev_or_cmd.attachments))


def network_from(ev: NetworkDefined) -> Network:
    return build_network(ev.name, ev.subnets, ev.dns, ev.attachments)


def _reject(cmd, code: str, reason: str, field: str | None = None, holder: Owner | None = None) -> list[AnyEvent]:
    network = getattr(cmd, "network", None) or getattr(cmd, "name", None)
    return [CommandRejected(command_id=cmd.command_id, at=cmd.at, command=type(cmd).__name__, code=code, reason=reason,
                            field=field, holder=holder, network=network)]


def _named(book: NetworkBook, keys: list[int]) -> str:
    shown = ", ".join(f"{format_address(k)} ({book.by_key[k].describe()})" for k in sorted(keys)[:NAMED_MAX])
    more = len(keys) - NAMED_MAX
    return shown + (f" and {more} more" if more > 0 else "")


def _released(cmd, book: NetworkBook, key: int, owner: Owner, quarantine_ms: int, reason: str) -> IpReleased:
    return IpReleased(command_id=cmd.command_id, at=cmd.at, network=book.network.name, address=format_address(key),
                      owner=owner, quarantined_until=cmd.at + quarantine_ms, reason=reason)


def _prefix(book: NetworkBook, key: int) -> int:
    return book.network.subnets[book.network.subnet_of(key)].cidr.prefixlen


# --- decide -------------------------------------------------------------------------


def define(networks: dict[str, NetworkBook], cmd: DefineNetwork) -> list[AnyEvent]:
    try:
        network = build_network(cmd.name, cmd.subnets, cmd.dns, cmd.attachments)
    except NetworkError as e:
        return _reject(cmd, "invalid", e.reason, e.field)
    book = networks.get(cmd.name)
    if book is not None:
        if cmd.create_only and book.spec != (tuple(cmd.subnets), network.dns, tuple(cmd.attachments)):
            return _reject(cmd, "exists", f"network {cmd.name!r} already exists with another definition", "name")
        outside = [k for k in book.by_key if network.problem(k)]
        if outside:
            return _reject(cmd, "in_use", f"the new definition of network {cmd.name!r} would leave {len(outside)} live "
                                          f"lease(s) outside it: {_named(book, outside)}", "subnets")
    return [NetworkDefined(command_id=cmd.command_id, at=cmd.at, name=cmd.name, subnets=tuple(cmd.subnets), dns=network.dns,
                           attachments=tuple(cmd.attachments), source=cmd.source, created=book is None)]


def delete(networks: dict[str, NetworkBook], cmd: DeleteNetwork) -> list[AnyEvent]:
    book = networks.get(cmd.name)
    if book is None:
        return _reject(cmd, "unknown_network", f"network {cmd.name!r} does not exist", "name")
    if book.by_key:
        return _reject(cmd, "in_use", f"network {cmd.name!r} still holds {len(book.by_key)} lease(s): "
                                      f"{_named(book, list(book.by_key))}", "name")
    return [NetworkDeleted(command_id=cmd.command_id, at=cmd.at, name=cmd.name, source=cmd.source)]


def lease(networks: dict[str, NetworkBook], cmd: LeaseIp, quarantine_ms: int, binds) -> list[AnyEvent]:
    book = networks.get(cmd.network)
    if book is None:
        return _reject(cmd, "unknown_network", f"network {cmd.network!r} does not exist", "network")
    network, owner = book.network, cmd.owner
    requested: dict[int, int] = {}
    for i, text in enumerate(cmd.addresses):
        try:
            key = parse_address(text)
        except AddressError as e:
            return _reject(cmd, "invalid", str(e), f"addresses[{i}]")
        if family_of(key) in requested:
            return _reject(cmd, "invalid", f"asks for two IPv{family_of(key)} addresses; an interface gets one per family",
                           f"addresses[{i}]")
        problem = network.problem(key)
        if problem:
            code = "outside_network" if network.subnet_of(key) is None else "unusable"
            return _reject(cmd, code, f"{format_address(key)} {problem}", f"addresses[{i}]")
        requested[family_of(key)] = key
    held = book.held_by(owner)
    base = dict(command_id=cmd.command_id, at=cmd.at, network=network.name)
    events: list[AnyEvent] = []
    for family in network.families:
        want, current = requested.get(family), held.get(family)
        if want is None and current is not None:
            events.append(IpLeaseReturned(**base, address=format_address(current), prefix_length=_prefix(book, current),
                                          owner=owner))
            continue
        if want is None:
            want = next_free(book, family, cmd.at)
            if want is None:
                return _reject(cmd, "exhausted", _exhausted(book, family, cmd.at), "network")
            static = False
        else:
            static = True
        text, prefix = format_address(want), _prefix(book, want)
        holder = book.by_key.get(want)
        if holder == owner:
            events.append(IpLeaseReturned(**base, address=text, prefix_length=prefix, owner=owner))
            continue
        if holder is not None and not (want in book.pending and binds(holder, owner)):
            return _reject(cmd, "held", f"{text} is held by {holder.describe()}", "addresses", holder)
        if cmd.dry_run:
            events.append(IpLeaseOffered(**base, address=text, prefix_length=prefix, owner=owner))
            continue
        if current is not None:  # the interface moves to the address asked for
            events.append(_released(cmd, book, current, owner, quarantine_ms, "replaced"))
        if holder is not None:
            events.append(IpLeaseConfirmed(**base, address=text, owner=owner, previous=holder))
        else:
            events.append(IpLeased(**base, address=text, prefix_length=prefix, owner=owner, static=static,
                                   pending_until=cmd.pending_until))
    return events


def _exhausted(book: NetworkBook, family: int, at: int) -> str:
    subnets = [(i, s) for i, s in enumerate(book.network.subnets) if s.family == family]
    size = sum(s.size for _, s in subnets)
    used = sum(book.counts[i] for i, _ in subnets)
    quarantined = sum(1 for k, until in book.quarantine.items() if until > at and family_of(k) == family)
    return (f"network {book.network.name!r} has no free IPv{family} address: all {size} are leased or quarantined "
            f"({used} leased, {quarantined} quarantined)")


def next_free(book: NetworkBook, family: int, at: int) -> int | None:
    """Next-fit from each subnet's cursor, jumping over excluded intervals; subnets in order."""
    for i, sn in enumerate(book.network.subnets):
        if sn.family != family or book.counts[i] >= sn.size:
            continue
        span, lo, mark = sn.span, sn.lo, sn.mark
        used, quarantine = book.by_key, book.quarantine
        budget = min(sn.size, book.counts[i] + len(quarantine) + 1)  # leased or quarantined candidates, then a free one
        off = book.cursors[i] % span
        tried = 0
        while tried < budget:
            value = lo + off
            end = sn.excluded_end(value)
            if end is not None:
                off = end + 1 - lo
                if off >= span:
                    off = 0
                continue
            key = value | mark
            tried += 1
            if key not in used:
                until = quarantine.get(key)
                if until is None or until <= at:
                    return key
            off += 1
            if off == span:
                off = 0
    return None


def release_owner(networks: dict[str, NetworkBook], cmd: ReleaseIps, quarantine_ms: int) -> list[AnyEvent]:
    book = networks.get(cmd.network)
    if book is None:
        return _reject(cmd, "unknown_network", f"network {cmd.network!r} does not exist", "network")
    held = book.vms.get((cmd.namespace, cmd.vm), {})
    chosen = sorted((k, o) for o, keys in held.items() for k in keys if cmd.interface is None or o.interface == cmd.interface)
    if not chosen:
        what = f"{cmd.namespace}/{cmd.vm}" + (f" interface {cmd.interface}" if cmd.interface else "")
        return _reject(cmd, "not_found", f"{what} holds no address in network {cmd.network!r}")
    return [_released(cmd, book, k, o, quarantine_ms, "requested") for k, o in chosen]


def release_address(networks: dict[str, NetworkBook], cmd: ReleaseIp, quarantine_ms: int) -> list[AnyEvent]:
    book = networks.get(cmd.network)
    if book is None:
        return _reject(cmd, "unknown_network", f"network {cmd.network!r} does not exist", "network")
    try:
        key = parse_address(cmd.address)
    except AddressError as e:
        return _reject(cmd, "invalid", str(e), "address")
    holder = book.by_key.get(key)
    if holder is None:
        return _reject(cmd, "not_found", f"{format_address(key)} is not leased in network {cmd.network!r}", "address")
    return [_released(cmd, book, key, holder, quarantine_ms, "requested")]


def observe(networks: dict[str, NetworkBook], cmd: ObserveVmIps, quarantine_ms: int, binds) -> list[AnyEvent]:
    book = networks.get(cmd.network)
    if book is None:
        return _reject(cmd, "unknown_network", f"network {cmd.network!r} does not exist", "network")
    network = book.network
    base = dict(command_id=cmd.command_id, at=cmd.at, network=network.name)
    events: list[AnyEvent] = []
    observed: list[tuple[Owner, list[int]]] = []
    where: dict[int, str] = {}
    for obs in () if cmd.deleted else cmd.interfaces:
        keys: list[int] = []
        for text in obs.addresses:
            try:
                key = parse_address(text)
            except AddressError as e:
                events += _reject(cmd, "invalid", f"interface {obs.name}: {e}", "interfaces")
                continue
            if any(family_of(k) == family_of(key) for k in keys):
                events += _reject(cmd, "invalid", f"interface {obs.name}: {text} is a second IPv{family_of(key)} address; "
                                                  "an interface gets one per family", "interfaces")
                continue
            keys.append(key)
        observed.append((Owner(namespace=cmd.namespace, vm=cmd.vm, vm_uid=cmd.vm_uid, interface=obs.name), keys))
        for k in keys:
            where.setdefault(k, obs.name)
    freed: set[int] = set()
    claimed: dict[int, Owner] = {}
    mine = book.vms.get((cmd.namespace, cmd.vm), {})
    # An address that moved to another interface of this VM lets go of the old one first.
    for owner, keys in sorted(mine.items(), key=lambda item: item[0].interface):
        for k in keys:
            if owner.vm_uid == cmd.vm_uid and where.get(k, owner.interface) != owner.interface:
                events.append(_released(cmd, book, k, owner, quarantine_ms, "replaced"))
                freed.add(k)
    for me, keys in observed:
        for key in keys:
            text = format_address(key)
            holder = claimed.get(key) or (None if key in freed else book.by_key.get(key))
            current = book.held_by(me).get(family_of(key))
            if holder == me:
                if key in book.pending:
                    events.append(IpLeaseConfirmed(**base, address=text, owner=me, previous=me))
            elif holder is not None and key in book.pending and key not in claimed and binds(holder, me):
                if current is not None and current != key and current not in freed:
                    events.append(_released(cmd, book, current, me, quarantine_ms, "replaced"))
                    freed.add(current)
                events.append(IpLeaseConfirmed(**base, address=text, owner=me, previous=holder))
            elif holder is not None:
                events.append(IpConflict(**base, address=text, owner=me, holder=holder))
                continue
            elif network.problem(key):
                code = "outside_network" if network.subnet_of(key) is None else "unusable"
                events += _reject(cmd, code, f"interface {me.interface}: {text} {network.problem(key)}", "interfaces")
                continue
            else:
                if current is not None and current != key and current not in freed:
                    events.append(_released(cmd, book, current, me, quarantine_ms, "replaced"))
                    freed.add(current)
                events.append(IpLeased(**base, address=text, prefix_length=_prefix(book, key), owner=me, static=True,
                                       adopted=True))
            claimed[key] = me
    present = {me.interface for me, _ in observed}
    reason = "vm-deleted" if cmd.deleted else "interface-removed"
    for owner, keys in sorted(mine.items(), key=lambda item: item[0].interface):
        if owner.vm_uid != cmd.vm_uid or owner.interface in present:
            continue
        for k in sorted(keys):
            if k not in freed and (cmd.deleted or k not in book.pending):  # a pending hot-plug may not be persisted yet
                events.append(_released(cmd, book, k, owner, quarantine_ms, reason))
    return events


def expire(networks: dict[str, NetworkBook], cmd: ExpirePendingIp, quarantine_ms: int) -> list[AnyEvent]:
    book = networks.get(cmd.network)
    if book is None:
        return []
    try:
        key = parse_address(cmd.address)
    except AddressError:
        return []
    holder, until = book.by_key.get(key), book.pending.get(key)
    if holder is None or until is None or holder.vm_uid != cmd.vm_uid or cmd.at < until:
        return []  # confirmed, released or re-leased meanwhile
    return [_released(cmd, book, key, holder, quarantine_ms, "pending-expired")]


def drift(networks: dict[str, NetworkBook], cmd: ObserveGuestIps, binds) -> list[AnyEvent]:
    book = networks.get(cmd.network)
    if book is None:
        return []
    me = Owner(namespace=cmd.namespace, vm=cmd.vm, vm_uid=cmd.vm_uid, interface=cmd.interface)
    events: list[AnyEvent] = []
    for text in sorted(set(cmd.addresses)):
        try:
            key = parse_address(text.partition("/")[0])
        except AddressError:
            continue
        if book.network.subnet_of(key) is None:
            continue  # link-local, another network's address: not ours to judge
        holder = book.by_key.get(key)
        if holder == me or (holder is not None and binds(holder, me)):
            continue
        events.append(IpDrift(command_id=cmd.command_id, at=cmd.at, network=cmd.network, address=format_address(key),
                              owner=me, kind="unleased" if holder is None else "held-by-other", holder=holder))
    return events


# --- evolve -------------------------------------------------------------------------


def evolve_ip(networks: dict[str, NetworkBook], event: AnyEvent) -> None:
    kind = type(event)
    if kind is IpLeased:
        book = networks[event.network]
        key = address_of(event.address)
        book.hold(key, event.owner)
        if event.pending_until:
            book.pending[key] = event.pending_until
        if book.quarantine:
            book.quarantine.pop(key, None)
        if not event.static:
            i = book.network.subnet_of(key)
            book.cursors[i] = book.network.subnets[i].cursor_after(key)
    elif kind is IpReleased:
        book = networks[event.network]
        key = address_of(event.address)
        book.drop(key)
        if event.quarantined_until > event.at:
            book.quarantine[key] = event.quarantined_until
    elif kind is IpLeaseConfirmed:
        book = networks[event.network]
        key = address_of(event.address)
        book.drop(key)
        book.hold(key, event.owner)
    elif kind is NetworkDefined:
        network = network_from(event)
        book = networks.get(event.name)
        if book is None:
            networks[event.name] = NetworkBook(network, spec_of(event))
        else:
            book.redefine(network, spec_of(event))
    elif kind is NetworkDeleted:
        networks.pop(event.name, None)


IP_COMMANDS = (DefineNetwork, DeleteNetwork, LeaseIp, ReleaseIps, ReleaseIp, ObserveVmIps, ExpirePendingIp, ObserveGuestIps)
IP_STATE_EVENTS = (IpLeased, IpReleased, IpLeaseConfirmed, NetworkDefined, NetworkDeleted)
