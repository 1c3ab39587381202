"""Properties of the decider over any sequence of commands, for every kind of address.

One state machine base (``LeaseMachine``) keeps an independent model built only from the events
the decider emits and checks what holds for every kind: no address held twice, one address per
slot per interface, sticky answers, quarantine respected, pending leases released only once
lapsed, provisional owners bound only to their VM, dry runs change nothing, a repeated command id
changes nothing, and replaying the events rebuilds the same state.  ``MacMachine`` and
``IpMachine`` add what their kind has: pools and the registry, networks with exclusions and
families, drift, redefinition.
"""

from __future__ import annotations

import ipaddress
import itertools

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from ipam.domain.commands import (
    LEASE_COMMANDS,
    ChangePool,
    CreatePool,
    DefineNetwork,
    DeleteNetwork,
    DeletePool,
    LeaseIp,
    LeaseMac,
    ObserveGuestIps,
    RetirePool,
    SetPoolRange,
    SubnetSpec,
)
from ipam.domain.decider import State, decide, evolve, replay
from ipam.domain.events import (
    LEASE_EVENTS,
    CommandRejected,
    IpDrift,
    IpLeaseConfirmed,
    NetworkDeleted,
    PoolCreated,
    PoolDeleted,
    PoolRangeSet,
    PoolRetired,
)
from ipam.domain.ip import NetworkError, family_of
from ipam.domain.kinds import IP, MAC, PROVISIONAL_UID_PREFIX, Owner, binds, supersedes
from ipam.domain.mac import is_multicast, parse_mac, unicast_at
from ipam.domain.networks import build_network
from ipam.domain.pools import parse_range

QUARANTINE = 1000
PENDING = 500
INTERFACES = ("eth0", "eth1")
OWNERS = [Owner(namespace=ns, vm=vm, vm_uid=f"{vm}-uid{u}", interface=i)
          for ns in ("a", "b") for vm in ("v1", "v2") for u in (1, 2) for i in INTERFACES]
OWNERS += [Owner(namespace="a", vm="v1", vm_uid=f"pod-uid{u}", interface=i, workload="Pod")  # a pod named like a VM
           for u in (1, 2) for i in INTERFACES]


class LeaseMachine(RuleBasedStateMachine):
    """What every kind must satisfy; subclasses give the kind, its spaces and its candidate addresses, and two
    hooks: ``observed(interface, address)`` (one observed interface of the kind) and ``check_exhausted(cmd, ev)``."""

    kind = None
    spaces: tuple[str, ...] = ()
    candidates: list[str] = []  # addresses a rule may ask for by name (some of them unusable)

    def __init__(self) -> None:
        super().__init__()
        self.state = State(quarantine_ms=QUARANTINE, recent_max=50)
        self.events, self.commands = [], []
        self.now, self.ids, self.admissions = 1_000, itertools.count(), itertools.count()
        self.held: dict[int, tuple[str, Owner]] = {}  # model: key -> (space, owner)
        self.quarantine: dict[int, int] = {}
        self.pending: dict[int, int] = {}
        self.ev = LEASE_EVENTS[self.kind]
        self.cmd = LEASE_COMMANDS[self.kind]

    def cid(self) -> str:
        return f"c{next(self.ids)}"

    def space_of(self, name: str):
        return self.state.spaces[self.kind][name]

    def key(self, ev) -> int:
        return self.space_of(getattr(ev, self.kind.space)).parse_own(getattr(ev, self.kind.address))

    def run(self, cmd):
        events = decide(self.state, cmd)
        for ev in events:
            assert ev.command_id == cmd.command_id and ev.at == cmd.at
            self.check(cmd, ev)
            evolve(self.state, ev)
            self.events.append(ev)
        self.commands.append((cmd, events))
        return events

    def check(self, cmd, ev) -> None:
        ev_types, kind = self.ev, self.kind
        if isinstance(ev, (ev_types.leased, ev_types.released, ev_types.confirmed, ev_types.returned, ev_types.offered,
                           ev_types.conflict)):
            key, space = self.key(ev), getattr(ev, kind.space)
        if isinstance(ev, ev_types.leased):
            assert key not in self.held, f"{getattr(ev, kind.address)} leased twice"
            slot_of = self.space_of(space).slot_of
            assert not any(s == space and o == ev.owner and slot_of(k) == slot_of(key) for k, (s, o) in self.held.items()), \
                "two addresses for one slot of one interface"
            assert self.space_of(space).problem(key) is None, "an address the space cannot hold was leased"
            if not ev.static:
                assert self.quarantine.get(key, 0) <= cmd.at, "quarantined address handed out"
            self.held[key] = (space, ev.owner)
            self.quarantine.pop(key, None)
            if ev.pending_until:
                self.pending[key] = ev.pending_until
        elif isinstance(ev, ev_types.confirmed):
            assert self.held[key] == (space, ev.previous), "confirmed a lease someone else holds"
            assert ev.previous == ev.owner or binds(ev.previous, ev.owner)
            self.held[key] = (space, ev.owner)
            self.pending.pop(key, None)
        elif isinstance(ev, ev_types.released):
            if ev.reason == "pending-expired":
                assert self.pending[key] <= cmd.at, "pending lease released before it lapsed"
            if ev.reason == "superseded":  # the same VM admitted again takes what its earlier admission left pending
                assert key in self.pending and supersedes(ev.owner, cmd.owner), "superseded a lease that was not pending"
            self.pending.pop(key, None)
            assert self.held.pop(key) == (space, ev.owner)
            assert ev.quarantined_until == cmd.at + QUARANTINE
            self.quarantine[key] = ev.quarantined_until
        elif isinstance(ev, ev_types.returned):
            assert self.held[key] == (space, ev.owner)
        elif isinstance(ev, ev_types.offered):
            holder = self.held.get(key)
            assert holder is None or binds(holder[1], ev.owner) or (key in self.pending and supersedes(holder[1], ev.owner)), \
                "offered an address someone holds"
        elif isinstance(ev, ev_types.conflict):
            assert self.held[key] == (space, ev.holder) and ev.holder != ev.owner
        elif isinstance(ev, CommandRejected) and ev.code == "exhausted":
            self.check_exhausted(cmd, ev)

    def lease_command(self, owner: Owner, space: str, requested=(), **extra):
        field, _, empty = self.kind.requested
        value = (requested[0] if requested else None) if empty is None else tuple(requested)
        return self.cmd.lease(command_id=self.cid(), at=self.now, **{self.kind.space: space}, owner=owner,
                              **{field: value}, **extra)

    # --- rules every kind has ---------------------------------------------------------------------

    @rule(ms=st.integers(1, 2 * QUARANTINE))
    def time_passes(self, ms):
        self.now += ms

    @rule(owner=st.sampled_from(OWNERS), data=st.data())
    def lease(self, owner, data):
        space = data.draw(st.sampled_from(self.spaces))
        before = {k for k, (s, o) in self.held.items() if s == space and o == owner}
        events = self.run(self.lease_command(owner, space))
        if not any(isinstance(e, CommandRejected) for e in events):
            assert before <= {self.key(e) for e in events}, "sticky: what an owner holds is what it gets"

    @rule(owner=st.sampled_from(OWNERS), data=st.data())
    def lease_by_name(self, owner, data):
        space = data.draw(st.sampled_from(self.spaces))
        wanted = data.draw(st.lists(st.sampled_from(self.candidates), max_size=2, unique=True))
        events = self.run(self.lease_command(owner, space, wanted))
        for e in events:
            if isinstance(e, self.ev.leased):  # what was asked for by name is static; a family not asked for is not
                assert e.static == (getattr(e, self.kind.address) in wanted)
            if isinstance(e, CommandRejected) and e.code == "held":
                assert e.holder is not None and e.holder.vm in e.reason

    @rule(owner=st.sampled_from(OWNERS), dry=st.booleans(), data=st.data())
    def admit(self, owner, dry, data):
        """The webhook at CREATE: the VM has no uid yet, so the lease is provisional (or a dry run)."""
        space = data.draw(st.sampled_from(self.spaces))
        provisional = Owner(namespace=owner.namespace, vm=owner.vm, vm_uid=f"admission:{next(self.admissions)}",
                            interface=owner.interface, workload=owner.workload)
        books = {n: b.snapshot() for n, b in self.state.books[self.kind].items()}
        events = self.run(self.lease_command(provisional, space, pending_until=self.now + PENDING, dry_run=dry))
        if dry:
            assert {n: b.snapshot() for n, b in self.state.books[self.kind].items()} == books, "a dry run changed the books"
            assert all(isinstance(e, (self.ev.offered, self.ev.returned, CommandRejected)) for e in events)

    @rule(owner=st.sampled_from(OWNERS), deleted=st.booleans(), data=st.data())
    def observe(self, owner, deleted, data):
        """The watcher reports a VM (perhaps one whose provisional lease it now binds)."""
        space = data.draw(st.sampled_from(self.spaces))
        seen = data.draw(st.lists(st.tuples(st.sampled_from(INTERFACES), st.sampled_from(self.candidates)), max_size=2,
                                  unique_by=lambda t: t[0]))
        self.run(self.cmd.observe(command_id=self.cid(), at=self.now, **{self.kind.space: space}, namespace=owner.namespace,
                                  vm=owner.vm, vm_uid=owner.vm_uid, deleted=deleted, workload=owner.workload,
                                  interfaces=tuple(self.observed(i, a) for i, a in seen)))
        mine = {o.interface for _, (s, o) in self.held.items() if s == space and o.vm_uid == owner.vm_uid
                and (o.namespace, o.vm) == (owner.namespace, owner.vm)}
        if deleted:
            assert not mine, "a deleted VM still holds leases"
        else:
            left = {o.interface for k, (s, o) in self.held.items() if s == space and o.vm_uid == owner.vm_uid
                    and (o.namespace, o.vm) == (owner.namespace, owner.vm) and k not in self.pending}
            assert left <= {i for i, _ in seen}, "an interface the VM no longer has kept its lease"

    @rule(owner=st.sampled_from(OWNERS), one=st.booleans(), exact=st.booleans(), data=st.data())
    def release_owner(self, owner, one, exact, data):
        """``exact``: one incarnation of one kind of holder (a CNI DEL), the others of that name untouched."""
        space = data.draw(st.sampled_from(self.spaces))
        before = dict(self.held)
        narrow = {"vm_uid": owner.vm_uid, "workload": owner.workload} if exact else {}
        self.run(self.cmd.release_owner(command_id=self.cid(), at=self.now, **{self.kind.space: space},
                                        namespace=owner.namespace, vm=owner.vm, interface=owner.interface if one else None,
                                        **narrow))

        def chosen(o) -> bool:
            return o.namespace == owner.namespace and o.vm == owner.vm and (not one or o.interface == owner.interface) \
                and (not exact or (o.vm_uid, o.workload) == (owner.vm_uid, owner.workload))

        assert not any(s == space and chosen(o) for s, o in self.held.values())
        assert {k: v for k, v in before.items() if not (v[0] == space and chosen(v[1]))} == self.held

    @precondition(lambda self: self.held)
    @rule(data=st.data())
    def release_address(self, data):
        key = data.draw(st.sampled_from(sorted(self.held)))
        space = self.held[key][0]
        [ev] = self.run(self.cmd.release_address(command_id=self.cid(), at=self.now, **{self.kind.space: space},
                                                 **{self.kind.address: self.space_of(space).format(key).upper()}))
        assert isinstance(ev, self.ev.released) and key not in self.held

    @precondition(lambda self: self.pending)
    @rule(data=st.data())
    def expire(self, data):
        key = data.draw(st.sampled_from(sorted(self.pending)))
        space, holder = self.held[key]
        lapsed = self.pending[key] <= self.now
        events = self.run(self.cmd.expire(command_id=self.cid(), at=self.now, **{self.kind.space: space},
                                          **{self.kind.address: self.space_of(space).format(key)}, vm_uid=holder.vm_uid))
        assert (key not in self.held) == lapsed and len(events) == int(lapsed)

    @precondition(lambda self: self.commands)
    @rule(data=st.data())
    def repeat_a_command(self, data):
        cmd, events = data.draw(st.sampled_from([c for c in self.commands[-40:] if c[1]] or self.commands[-1:]))
        if not events:
            return  # a command that decided nothing left nothing to remember
        before = self.state.snapshot()
        assert decide(self.state, cmd) == []
        assert self.state.snapshot() == before

    @invariant()
    def state_matches_the_model(self):
        books = self.state.books[self.kind]
        assert {k: (n, o) for n, b in books.items() for k, o in b.by_key.items()} == self.held
        assert {k: until for b in books.values() for k, until in b.pending.items()} == self.pending

    @invariant()
    def replay_rebuilds_the_state(self):
        if len(self.events) % 5 == 0:
            assert replay(State(quarantine_ms=QUARANTINE, recent_max=50), self.events).snapshot() == self.state.snapshot()


class MacMachine(LeaseMachine):
    kind = MAC
    spaces = ("small", "mixed")  # small pools so exhaustion and quarantine happen; "mixed" straddles a multicast block
    candidates = ["02:00:00:00:00:00", "02:00:00:00:00:01", "02:00:00:00:00:05", "02:ff:ff:ff:ff:fd", "03:00:00:00:00:00",
                  "04:00:00:00:00:00", "06:00:00:00:00:01", "0a:00:00:00:00:01"]
    RANGES = {"small": "02:00:00:00:00:00-02:00:00:00:00:05", "mixed": "02:ff:ff:ff:ff:fd-04:00:00:00:00:01"}

    @initialize()
    def create_pools(self):
        for name, rng in self.RANGES.items():
            [ev] = self.run(CreatePool(command_id=self.cid(), at=self.now, name=name, range=rng, default=name == "small"))
            assert isinstance(ev, PoolCreated)
        [ev] = self.run(CreatePool(command_id=self.cid(), at=self.now, name="ext", external=True))
        assert isinstance(ev, PoolCreated)

    def observed(self, interface, address):
        return MAC.observed(name=interface, mac=address)

    def check(self, cmd, ev):
        if isinstance(ev, PoolRangeSet):  # the model forgets quarantine outside the new range, as the pool does
            old, new = self.state.pools[ev.pool].range, parse_range(ev.range)
            assert not any(s == ev.pool and k not in new for k, (s, _) in self.held.items()), "a live lease orphaned"
            for k in [k for k in self.quarantine if k in old and k not in new]:
                del self.quarantine[k]
        if isinstance(ev, PoolRetired) and self.state.pools[ev.pool].range is not None:  # and all of a retired pool's
            for k in [k for k in self.quarantine if k in self.state.pools[ev.pool].range]:
                del self.quarantine[k]
        super().check(cmd, ev)
        if isinstance(ev, self.ev.leased):
            assert not is_multicast(parse_mac(ev.mac))

    def check_exhausted(self, cmd, ev):
        pool = self.state.pools[cmd.pool]
        every = (unicast_at(pool.range.lo + i) for i in range(pool.range.size))
        free = [m for m in every if m not in self.held and self.quarantine.get(m, 0) <= cmd.at]
        assert not free, f"exhausted while {len(free)} free"
        assert str(pool.size) in ev.reason and cmd.pool in ev.reason

    @rule(owner=st.sampled_from(OWNERS), mac=st.sampled_from(["52:54:00:00:00:01", "02:00:00:00:00:01", "01:00:5e:00:00:01"]))
    def lease_from_the_external_pool(self, owner, mac):
        events = self.run(self.lease_command(owner, "ext", [mac]))
        if any(p.range is not None and parse_mac(mac) in p.range for p in self.state.pools.values()):
            assert events[0].code == "wrong_pool"
        assert not any(isinstance(e, self.ev.leased) and is_multicast(parse_mac(e.mac)) for e in events)

    @rule(name=st.sampled_from(["small", "other"]), rng=st.sampled_from(["02:00:00:00:00:03-02:00:00:00:00:09",
                                                                          "06:00:00:00:00:00-06:00:00:00:00:03"]))
    def create_more_pools(self, name, rng):
        existed = name in self.state.pools
        overlapping = [p.name for p in self.state.pools.values() if p.claim and p.claim.overlaps(parse_range(rng))]
        [ev] = self.run(CreatePool(command_id=self.cid(), at=self.now, name=name, range=rng))
        if existed:
            assert ev.code == "exists"
        elif overlapping:
            assert ev.code == "overlap" and repr(overlapping[0]) in ev.reason
        else:
            assert isinstance(ev, PoolCreated)


    # --- day-2: pool changes, in the planned order or not (out of order must be refused) --------

    SHAPES = ["02:00:00:00:00:00-02:00:00:00:00:05", "02:00:00:00:00:00-02:00:00:00:00:02", "02:00:00:00:00:02-02:00:00:00:00:08",
              "02:00:00:00:00:00-02:00:00:00:00:0b", "06:00:00:00:00:00-06:00:00:00:00:07"]

    @rule(pool=st.sampled_from(["small", "other"]), rng=st.sampled_from(SHAPES), registry_first=st.booleans())
    def change_a_pools_range(self, pool, rng, registry_first):
        steps = [ChangePool(command_id=self.cid(), at=self.now, name=pool, range=rng),
                 SetPoolRange(command_id=self.cid(), at=self.now, pool=pool, range=rng)]
        for cmd in steps if registry_first else steps[::-1]:
            self.run(cmd)

    @rule(pool=st.sampled_from(["small", "other", "mixed"]))
    def retire_and_delete(self, pool):
        retired = self.run(RetirePool(command_id=self.cid(), at=self.now, pool=pool))
        [ev] = self.run(DeletePool(command_id=self.cid(), at=self.now, name=pool))
        if any(s == pool for s, _ in self.held.values()):
            assert retired[0].code == "in_use" and ev.code == "in_use"
        elif retired and isinstance(retired[0], PoolRetired):
            assert isinstance(ev, PoolDeleted)

    @invariant()
    def pools_hand_out_only_what_they_claim_and_claims_never_overlap(self):
        pools = [p for p in self.state.pools.values() if p.range is not None]
        for p in pools:
            assert p.claim.first <= p.range.first and p.range.last <= p.claim.last, f"{p.name} hands out past its claim"
        for a, b in itertools.combinations(pools, 2):
            assert not a.claim.overlaps(b.claim), f"{a.name} and {b.name} overlap"
        for k, (s, _) in self.held.items():
            rng = self.state.pools[s].range
            assert rng is None or k in rng, "a lease outside its pool"


IP_SUBNETS = (  # small on purpose: a /28 with exclusions, and an IPv6 /124 with a gateway
    SubnetSpec(cidr="10.1.0.0/28", gateway="10.1.0.1", exclude=("10.1.0.2-10.1.0.4", "10.1.0.9", "10.1.0.12/31")),
    SubnetSpec(cidr="fd00:1::/124", gateway="fd00:1::1", exclude=("fd00:1::8-fd00:1::a",)),
)
USABLE = {4: {str(a) for a in ipaddress.ip_network("10.1.0.0/28")} - {"10.1.0.0", "10.1.0.15", "10.1.0.1", "10.1.0.2",
                                                                          "10.1.0.3", "10.1.0.4", "10.1.0.9", "10.1.0.12",
                                                                          "10.1.0.13"},
          6: {str(a) for a in ipaddress.ip_network("fd00:1::/124")} - {"fd00:1::", "fd00:1::1", "fd00:1::8", "fd00:1::9",
                                                                          "fd00:1::a"}}


class IpMachine(LeaseMachine):
    kind = IP
    spaces = ("blue",)
    candidates = ["10.1.0.0", "10.1.0.1", "10.1.0.3", "10.1.0.5", "10.1.0.6", "10.1.0.13", "10.1.0.14", "10.2.0.1",
                  "fd00:1::", "fd00:1::1", "fd00:1::2", "fd00:1::9", "fd00:1::f", "fd00:2::1", "not-an-ip"]

    @initialize()
    def define(self):
        self.run(DefineNetwork(command_id=self.cid(), at=self.now, name="blue", subnets=IP_SUBNETS))

    def observed(self, interface, address):
        return IP.observed(name=interface, addresses=(address,))

    def check(self, cmd, ev):
        super().check(cmd, ev)
        if isinstance(ev, (self.ev.leased, self.ev.offered)):
            assert ev.address in USABLE[family_of(self.key(ev))], f"{ev.address} must never be leased"
        elif isinstance(ev, IpDrift):
            held = self.held.get(self.space_of("blue").parse_own(ev.address))
            assert (held and held[1]) == ev.holder and ev.holder != ev.owner
        elif isinstance(ev, NetworkDeleted):
            assert not self.held
            self.quarantine.clear()  # a deleted network is forgotten; defined again, it starts afresh

    def check_exhausted(self, cmd, ev):
        family = 6 if "IPv6" in ev.reason else 4
        taken = {k for k in self.held if family_of(k) == family}
        blocked = {k for k, until in self.quarantine.items() if until > ev.at and family_of(k) == family}
        assert len(taken | blocked) >= len(USABLE[family]), f"exhausted with free IPv{family} addresses"

    @rule(owner=st.sampled_from(OWNERS), seen=st.lists(st.sampled_from(candidates[:-1]), max_size=3))
    def guest_reports(self, owner, seen):
        self.run(ObserveGuestIps(command_id=self.cid(), at=self.now, network="blue", namespace=owner.namespace, vm=owner.vm,
                                 vm_uid=owner.vm_uid, interface=owner.interface, addresses=tuple(seen)))

    @rule(exclude_more=st.sampled_from(["10.1.0.5", "10.1.0.6-10.1.0.8", "10.1.0.14"]))
    def redefine(self, exclude_more):
        """Excluding more is refused exactly when a live lease sits there."""
        v4 = IP_SUBNETS[0]
        first = SubnetSpec(cidr=v4.cidr, gateway=v4.gateway, exclude=v4.exclude + (exclude_more,))
        events = self.run(DefineNetwork(command_id=self.cid(), at=self.now, name="blue", subnets=(first, IP_SUBNETS[1])))
        lo, _, hi = exclude_more.partition("-")
        span = range(int(ipaddress.ip_address(lo)), int(ipaddress.ip_address(hi or lo)) + 1)
        assert isinstance(events[0], CommandRejected) == any(k in span for k in self.held)
        if not isinstance(events[0], CommandRejected):  # put it back
            self.run(DefineNetwork(command_id=self.cid(), at=self.now, name="blue", subnets=IP_SUBNETS))

    @rule()
    def delete_refused_while_held(self):
        events = self.run(DeleteNetwork(command_id=self.cid(), at=self.now, name="blue"))
        if self.held:
            assert events[0].code == "in_use"
        else:
            self.run(DefineNetwork(command_id=self.cid(), at=self.now, name="blue", subnets=IP_SUBNETS))


TestMacDecider = MacMachine.TestCase
TestMacDecider.settings = settings(max_examples=150, stateful_step_count=60, deadline=None)
TestIpDecider = IpMachine.TestCase
TestIpDecider.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)


# --- single facts ---------------------------------------------------------------------------------


def _state(*commands) -> State:
    state = State(quarantine_ms=QUARANTINE)
    for cmd in commands:
        for ev in decide(state, cmd):
            evolve(state, ev)
    return state


def test_random_start_is_deterministic_and_spread():
    starts = set()
    for i in range(20):
        cmd = CreatePool(command_id=f"id{i}", at=0, name="p", range="02:00:00:00:00:00-02:ff:ff:ff:ff:ff")
        [ev] = decide(State(), cmd)
        assert decide(State(), cmd) == [ev]
        starts.add(ev.start)
    assert len(starts) == 20


def test_huge_pool_leases_without_materialising_it():
    s = _state(CreatePool(command_id="p", at=0, name="kmp", range="02:00:00:00:00:00-fd:ff:ff:ff:ff:ff"))
    macs = set()
    for i in range(2000):
        [ev] = decide(s, LeaseMac(command_id=f"l{i}", at=0, pool="kmp", owner=Owner(namespace="n", vm=f"v{i}", vm_uid="u",
                                                                                   interface="e")))
        evolve(s, ev)
        macs.add(ev.mac)
        assert not is_multicast(parse_mac(ev.mac))
    assert len(macs) == 2000


@settings(max_examples=60, deadline=None)
@given(prefix=st.integers(48, 120), excluded=st.lists(st.integers(1, 2000), max_size=20), n=st.integers(1, 50))
def test_large_ipv6_subnets_work_without_materialising(prefix, excluded, n):
    """A /48../120 IPv6 subnet: leases are distinct, never excluded, and found without scanning the subnet."""
    base = ipaddress.IPv6Network(f"fd00:9::/{prefix}")
    exclude = tuple(str(base.network_address + e) for e in excluded if e < base.num_addresses)
    state = _state(DefineNetwork(command_id="d", at=1, name="big", subnets=(SubnetSpec(cidr=str(base), exclude=exclude),)))
    seen = set()
    for i in range(n):
        (ev,) = decide(state, LeaseIp(command_id=f"l{i}", at=1, network="big",
                                      owner=Owner(namespace="n", vm=f"v{i}", vm_uid=f"u{i}", interface="eth1")))
        assert ev.prefix_length == prefix and ev.address not in seen and ev.address not in exclude
        assert ipaddress.ip_address(ev.address) in base and ipaddress.ip_address(ev.address) != base.network_address
        seen.add(ev.address)
        evolve(state, ev)


def test_exhaustion_names_the_space_its_size_and_what_is_taken():
    owners = [Owner(namespace="n", vm=f"v{i}", vm_uid="u", interface="e") for i in range(3)]
    s = _state(CreatePool(command_id="p", at=0, name="tiny", range="02:00:00:00:00:01-02:00:00:00:00:02"),
               *(LeaseMac(command_id=f"l{i}", at=0, pool="tiny", owner=owners[i]) for i in range(2)))
    [ev] = decide(s, LeaseMac(command_id="l3", at=0, pool="tiny", owner=owners[2]))
    assert ev.code == "exhausted" and "'tiny'" in ev.reason and "all 2 addresses" in ev.reason
    s = _state(DefineNetwork(command_id="d", at=1, name="tiny", subnets=(SubnetSpec(cidr="192.168.5.0/30",
                                                                                    gateway="192.168.5.1"),)),
               LeaseIp(command_id="a", at=1, network="tiny", owner=owners[0]))
    (rej,) = decide(s, LeaseIp(command_id="b", at=1, network="tiny", owner=owners[1]))
    assert rej.code == "exhausted" and "'tiny'" in rej.reason and "1 leased" in rej.reason and "IPv4" in rej.reason
    assert s.books[IP]["tiny"].next_free(4, 1) is None


def test_an_observation_can_move_or_swap_addresses_between_interfaces_of_one_vm():
    """Found by the state machine: an address freed earlier in the same observation is not a conflict."""
    eth0, eth1 = (Owner(namespace="a", vm="v1", vm_uid="u", interface=i) for i in ("eth0", "eth1"))
    state = _state(CreatePool(command_id="p", at=1, name="mixed", range=MacMachine.RANGES["mixed"]),
                   LeaseMac(command_id="l", at=1, pool="mixed", owner=eth0, mac="04:00:00:00:00:00"))

    def observe(cid, at, first, second):
        ifaces = (MAC.observed(name="eth0", mac=first), MAC.observed(name="eth1", mac=second))
        events = decide(state, LEASE_COMMANDS[MAC].observe(command_id=cid, at=at, pool="mixed", namespace="a", vm="v1",
                                                           vm_uid="u", interfaces=ifaces))
        for ev in events:
            evolve(state, ev)
        return events

    moved = observe("o", 2, "02:ff:ff:ff:ff:fd", "04:00:00:00:00:00")
    assert [(type(e).__name__, e.mac) for e in moved] == [
        ("MacReleased", "04:00:00:00:00:00"), ("MacLeased", "02:ff:ff:ff:ff:fd"), ("MacLeased", "04:00:00:00:00:00")]
    swapped = observe("s", 3, "04:00:00:00:00:00", "02:ff:ff:ff:ff:fd")
    assert not any(type(e).__name__ == "MacConflict" for e in swapped)
    book = state.books[MAC]["mixed"]
    assert book.held_by(eth0) == {0: parse_mac("04:00:00:00:00:00")} and book.held_by(eth1) == {0: parse_mac("02:ff:ff:ff:ff:fd")}


def test_bad_network_definitions_name_the_field():
    cases = {
        ("10.0.0.1/24", None, ()): ("subnets[0].cidr", "did you mean 10.0.0.0/24"),
        ("10.0.0.0/24", "10.0.1.1", ()): ("subnets[0].gateway", "outside subnet"),
        ("10.0.0.0/24", "10.0.0.255", ()): ("subnets[0].gateway", "broadcast"),
        ("10.0.0.0/30", None, ("10.0.0.1-10.0.0.2",)): ("subnets[0].exclude", "nothing of"),
        ("10.0.0.0/24", None, ("10.0.0.9-10.0.0.3",)): ("subnets[0].exclude[0]", "starts after"),
        ("fd00::/64", None, ("fd01::1",)): ("subnets[0].exclude[0]", "outside subnet"),
        ("nonsense", None, ()): ("subnets[0].cidr", "not a CIDR"),
    }
    for (cidr, gw, exclude), (field, words) in cases.items():
        try:
            build_network("n", (SubnetSpec(cidr=cidr, gateway=gw, exclude=exclude),))
        except NetworkError as e:
            assert e.field == field and words in e.reason, (cidr, e)
        else:
            raise AssertionError(f"{cidr} accepted")
    try:
        build_network("n", (SubnetSpec(cidr="10.0.0.0/16"), SubnetSpec(cidr="10.0.3.0/24")))
    except NetworkError as e:
        assert e.field == "subnets[1].cidr" and "overlaps" in e.reason
    else:
        raise AssertionError("overlap accepted")


def test_network_defined_twice_with_create_only_is_refused_unless_identical():
    cmd = DefineNetwork(command_id="d1", at=1, name="n", subnets=(SubnetSpec(cidr="10.0.0.0/24"),), create_only=True)
    state = _state(cmd)
    (same,) = decide(state, DefineNetwork(command_id="d2", at=1, name="n", subnets=cmd.subnets, create_only=True))
    assert not same.created
    (other,) = decide(state, DefineNetwork(command_id="d3", at=1, name="n", subnets=(SubnetSpec(cidr="10.9.0.0/24"),),
                                           create_only=True))
    assert other.code == "exists"


def test_a_lease_that_confirms_an_admission_reports_the_prefix_length_and_gateway():
    """The CNI ADD of a virt-launcher pod asks with the VM's uid for the address its admission leased under a
    provisional one: the answer is the confirmation, and it must carry what the plugin configures (it reported
    prefix length 0 and no gateway, so the pod got the address as /0)."""
    state = _state(DefineNetwork(command_id="d", at=1, name="n", subnets=(SubnetSpec(cidr="10.0.0.0/24",
                                                                                    gateway="10.0.0.1"),)))
    admitted = Owner(namespace="ns", vm="vm", vm_uid=PROVISIONAL_UID_PREFIX + "review", interface="net1")
    (leased,) = decide(state, LeaseIp(command_id="a", at=2, network="n", owner=admitted, pending_until=10**13))
    evolve(state, leased)
    real = Owner(namespace="ns", vm="vm", vm_uid="vm-uid", interface="net1")
    (confirmed,) = decide(state, LeaseIp(command_id="b", at=3, network="n", owner=real))
    assert isinstance(confirmed, IpLeaseConfirmed) and confirmed.address == leased.address
    assert (confirmed.prefix_length, confirmed.gateway) == (24, "10.0.0.1") == (leased.prefix_length, leased.gateway)
