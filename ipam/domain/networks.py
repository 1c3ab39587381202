"""IP networks: named sets of subnets (IPv4, IPv6, dual-stack) with DNS and the attachments they serve.

What a network adds to the lease core (``leasing``): its subnets as next-fit regions, one slot
per address family, and its own definition: a network is defined, changed and deleted on the
partition of its name (networks may reuse each other's subnets: they are separate layer-2
domains, so no registry is needed).  Guests' reported addresses are checked here (drift).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from .commands import DefineNetwork, DeleteNetwork, ObserveGuestIps, SubnetSpec
from .events import Event, IpDrift, NetworkDefined, NetworkDeleted
from .ip import AddressError, NetworkError, Subnet, address_of, build_subnet, canonical, family_of, format_address, parse_address
from .kinds import IP, Owner, binds
from .leasing import named, reject
from .pools import name_problem

SUBNETS_MAX = 16
DNS_MAX = 8
ATTACHMENTS_MAX = 256


@dataclass(frozen=True, slots=True)
class Network:
    """A network definition, the lease core's space for IP addresses."""

    name: str
    subnets: tuple[Subnet, ...]
    dns: tuple[str, ...] = ()
    attachments: tuple[str, ...] = ()  # "namespace/name" of NetworkAttachmentDefinitions that attach to it
    specs: tuple[SubnetSpec, ...] = field(default=(), compare=False)  # the subnets as written
    kind, allocates = IP, True
    spec = property(lambda self: (self.specs, self.dns, self.attachments))  # as written: the same one is no change
    regions = property(lambda self: self.subnets)
    # the families in the order the network's subnets list them: answers, annotations, networkData and CNI
    # results give addresses in that order (as Whereabouts and OVN-Kubernetes do), IPv6 first if defined so
    slots = property(lambda self: tuple(dict.fromkeys(s.family for s in self.subnets)))
    starts = property(lambda self: tuple(s.start for s in self.subnets))
    slot_of = staticmethod(family_of)
    slot_name = staticmethod(lambda slot: f"IPv{slot} ")

    def subnet_of(self, key: int) -> int | None:
        """Index of the subnet the address is inside (usable or not)."""
        for i, s in enumerate(self.subnets):
            if s.holds(key):
                return i
        return None

    region_of = subnet_of

    def problem(self, key: int) -> tuple[str, str] | None:
        """Why this address cannot be leased in this network: (code, reason), or None."""
        i = self.subnet_of(key)
        if i is None:
            return "outside_network", f"is outside network {self.name!r} ({', '.join(str(s.cidr) for s in self.subnets)})"
        why = self.subnets[i].why_not(key)
        return None if why is None else ("unusable", f"{why} of {self.subnets[i].cidr} in network {self.name!r}")

    def detail(self, key: int) -> dict:
        i = self.subnet_of(key)
        return {} if i is None else {"prefix_length": self.subnets[i].cidr.prefixlen}

    def extra(self, key: int) -> dict:
        """The gateway of the address's subnet, when it has one: the CNI plugin and REST clients configure it
        from the lease answer, with no second request for the network."""
        i = self.subnet_of(key)
        return {} if i is None or self.subnets[i].gateway_text is None else {"gateway": self.subnets[i].gateway_text}

    format = staticmethod(format_address)
    parse = staticmethod(parse_address)
    parse_own = staticmethod(address_of)


def build_network(name: str, subnets: Sequence, dns: Sequence[str] = (), attachments: Sequence[str] = ()) -> Network:
    """Check and build a network from its definition (``subnets``: items with cidr, gateway, exclude)."""
    problem = name_problem(name)
    if problem:
        raise NetworkError("name", f"network name {problem}")
    if not subnets:
        raise NetworkError("subnets", "a network needs at least one subnet")
    if len(subnets) > SUBNETS_MAX:
        raise NetworkError("subnets", f"at most {SUBNETS_MAX} subnets per network")
    built = tuple(build_subnet(name, i, s.cidr, s.gateway, s.exclude) for i, s in enumerate(subnets))
    for i, a in enumerate(built):
        for j, b in enumerate(built[:i]):
            if a.cidr.version == b.cidr.version and a.cidr.overlaps(b.cidr):
                raise NetworkError(f"subnets[{i}].cidr", f"{a.cidr} overlaps subnets[{j}] ({b.cidr})")
    if len(dns) > DNS_MAX:
        raise NetworkError("dns", f"at most {DNS_MAX} DNS servers")
    for i, d in enumerate(dns):
        try:
            parse_address(d)
        except AddressError as e:
            raise NetworkError(f"dns[{i}]", str(e)) from None
    if len(attachments) > ATTACHMENTS_MAX:
        raise NetworkError("attachments", f"at most {ATTACHMENTS_MAX} attachments")
    for i, attachment in enumerate(attachments):
        ns, slash, nad = attachment.partition("/") if isinstance(attachment, str) else ("", "", "")
        if not slash or not ns or not nad or "/" in nad or name_problem(ns) or name_problem(nad):
            raise NetworkError(f"attachments[{i}]",
                               f"{str(attachment)[:80]!r} is not 'namespace/name' of a NetworkAttachmentDefinition")
    if len(set(attachments)) != len(attachments):
        raise NetworkError("attachments", "lists an attachment twice")
    return Network(name=name, subnets=built, dns=tuple(canonical(d) for d in dns), attachments=tuple(attachments),
                   specs=tuple(subnets))


def network_from(ev: NetworkDefined) -> Network:
    return build_network(ev.name, ev.subnets, ev.dns, ev.attachments)


# --- deciding definitions ----------------------------------------------------------------------


def define(state, cmd: DefineNetwork) -> list[Event]:
    try:
        network = build_network(cmd.name, cmd.subnets, cmd.dns, cmd.attachments)
    except NetworkError as e:
        return reject("network", cmd, "invalid", e.reason, e.field, space=cmd.name)
    current, book = state.spaces[IP].get(cmd.name), state.books[IP].get(cmd.name)
    if current is not None and cmd.create_only and current.spec != network.spec:
        return reject("network", cmd, "exists", f"network {cmd.name!r} already exists with another definition", "name",
                      space=cmd.name)
    outside = [k for k in (book.by_key if book else ()) if network.problem(k)]
    if outside:
        return reject("network", cmd, "in_use", f"the new definition of network {cmd.name!r} would leave {len(outside)} "
                                                f"live lease(s) outside it: {named(book, outside)}", "subnets", space=cmd.name)
    return [NetworkDefined(command_id=cmd.command_id, at=cmd.at, name=cmd.name, subnets=tuple(cmd.subnets), dns=network.dns,
                           attachments=tuple(cmd.attachments), source=cmd.source, created=current is None)]


def delete(state, cmd: DeleteNetwork) -> list[Event]:
    if cmd.name not in state.spaces[IP]:
        return reject("network", cmd, "unknown_network", f"network {cmd.name!r} does not exist", "name", space=cmd.name)
    book = state.books[IP].get(cmd.name)
    if book is not None and book.by_key:
        return reject("network", cmd, "in_use", f"network {cmd.name!r} still holds {len(book.by_key)} lease(s): "
                                                f"{named(book, book.by_key)}", "name", space=cmd.name)
    return [NetworkDeleted(command_id=cmd.command_id, at=cmd.at, name=cmd.name, source=cmd.source)]


def drift(state, cmd: ObserveGuestIps) -> list[Event]:
    """Addresses of the network a guest uses that are not its lease (or the lease it is binding to)."""
    network, book = state.spaces[IP].get(cmd.network), state.books[IP].get(cmd.network)
    if network is None:
        return []
    me = Owner(namespace=cmd.namespace, vm=cmd.vm, vm_uid=cmd.vm_uid, interface=cmd.interface, cluster=cmd.cluster)
    events: list[Event] = []
    for text in sorted(set(cmd.addresses)):
        try:
            key = parse_address(text.partition("/")[0])
        except AddressError:
            continue
        if network.subnet_of(key) is None:
            continue  # link-local, another network's address: not ours to judge
        holder = None if book is None else book.by_key.get(key)
        if holder == me or (holder is not None and binds(holder, me)):
            continue
        events.append(IpDrift(command_id=cmd.command_id, at=cmd.at, network=cmd.network, address=format_address(key),
                              owner=me, kind="unleased" if holder is None else "held-by-other", holder=holder))
    return events


def defined(state, ev: NetworkDefined) -> None:
    network = state.spaces[IP][ev.name] = network_from(ev)
    book = state.books[IP].get(ev.name)
    if book is not None:
        book.redefine(network)


def deleted(state, ev: NetworkDeleted) -> None:
    state.spaces[IP].pop(ev.name, None)
    state.books[IP].pop(ev.name, None)
