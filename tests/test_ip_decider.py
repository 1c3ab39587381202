"""Properties of the IP decider over IPv4 and IPv6 networks with exclusions.

A model is built only from the emitted events and checked: never an address twice, never an
excluded address, the gateway, the IPv4 network/broadcast or the IPv6 subnet-router anycast
address, one address per family per interface, sticky answers, quarantine respected,
exhaustion only when nothing is free, and replaying the events rebuilds the same state.
"""

import ipaddress
import itertools

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from ipam.domain.allocation import State, binds, decide, evolve, replay
from ipam.domain.ip import NetworkError, build_network, family_of, format_address, parse_address
from ipam.domain.ip_allocation import next_free
from ipam.domain.messages import (CommandRejected, DefineNetwork, DeleteNetwork, ExpirePendingIp, IpConflict, IpDrift,
                                  IpLeaseConfirmed, IpLeased, IpLeaseOffered, IpLeaseReturned, IpReleased, LeaseIp,
                                  NetworkDefined, NetworkDeleted, ObservedAddresses, ObserveGuestIps, ObserveVmIps, Owner, ReleaseIp,
                                  ReleaseIps, SubnetSpec)

QUARANTINE = 1000
PENDING = 500
# Small on purpose, so exhaustion and quarantine happen: a /28 with exclusions, and an IPv6 /124 with a gateway.
SUBNETS = (
    SubnetSpec(cidr="10.1.0.0/28", gateway="10.1.0.1", exclude=("10.1.0.2-10.1.0.4", "10.1.0.9", "10.1.0.12/31")),
    SubnetSpec(cidr="fd00:1::/124", gateway="fd00:1::1", exclude=("fd00:1::8-fd00:1::a",)),
)
NET = build_network("blue", SUBNETS)
OWNERS = [Owner(namespace=ns, vm=vm, vm_uid=f"{vm}-uid{u}", interface=i)
          for ns in ("a", "b") for vm in ("v1", "v2") for u in (1, 2) for i in ("eth1", "eth2")]
CANDIDATES = ["10.1.0.0", "10.1.0.1", "10.1.0.3", "10.1.0.5", "10.1.0.6", "10.1.0.13", "10.1.0.14", "10.1.0.15",
              "10.2.0.1", "fd00:1::", "fd00:1::1", "fd00:1::2", "fd00:1::9", "fd00:1::f", "fd00:2::1", "not-an-ip"]


def forbidden(key: int) -> bool:
    """Independent of the decider: what a lease must never be."""
    text = ipaddress.ip_address(key & ~(1 << 128))
    if family_of(key) == 4:
        n = ipaddress.ip_network("10.1.0.0/28")
        excluded = {"10.1.0.0", "10.1.0.15", "10.1.0.1", "10.1.0.2", "10.1.0.3", "10.1.0.4", "10.1.0.9", "10.1.0.12", "10.1.0.13"}
    else:
        n = ipaddress.ip_network("fd00:1::/124")
        excluded = {"fd00:1::", "fd00:1::1", "fd00:1::8", "fd00:1::9", "fd00:1::a"}
    return text not in n or str(text) in excluded


USABLE = {4: 16 - 9, 6: 16 - 5}


class IpDeciderMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.state = State(quarantine_ms=QUARANTINE, recent_max=50)
        self.events, self.now, self.ids = [], 1_000, itertools.count()
        self.held = {}  # model: key -> owner
        self.quarantine = {}  # key -> until
        self.pending = {}
        self.admissions = itertools.count()
        self.run(DefineNetwork(command_id="define", at=self.now, name="blue", subnets=SUBNETS))

    def cid(self):
        return f"c{next(self.ids)}"

    def run(self, cmd):
        events = decide(self.state, cmd)
        for ev in events:
            self.check(cmd, ev)
            evolve(self.state, ev)
            self.events.append(ev)
        return events

    def check(self, cmd, ev):
        assert ev.command_id == cmd.command_id
        if isinstance(ev, IpLeased):
            key = parse_address(ev.address)
            assert key not in self.held, f"{ev.address} leased twice"
            assert not forbidden(key), f"{ev.address} must never be leased"
            assert all(family_of(k) != family_of(key) for k, o in self.held.items() if o == ev.owner), "two per family"
            if not ev.static:
                assert self.quarantine.get(key, 0) <= ev.at, f"{ev.address} leased while quarantined"
            self.held[key] = ev.owner
            self.quarantine.pop(key, None)
            if ev.pending_until:
                self.pending[key] = ev.pending_until
        elif isinstance(ev, IpReleased):
            key = parse_address(ev.address)
            assert self.held.pop(key) == ev.owner
            self.pending.pop(key, None)
            self.quarantine[key] = ev.quarantined_until
        elif isinstance(ev, IpLeaseConfirmed):
            key = parse_address(ev.address)
            assert self.held[key] == ev.previous
            assert ev.previous == ev.owner or binds(ev.previous, ev.owner)
            self.held[key] = ev.owner
            self.pending.pop(key, None)
        elif isinstance(ev, IpLeaseReturned):
            assert self.held[parse_address(ev.address)] == ev.owner
        elif isinstance(ev, (IpConflict,)):
            assert self.held[parse_address(ev.address)] == ev.holder != ev.owner
        elif isinstance(ev, IpDrift):
            key = parse_address(ev.address)
            assert self.held.get(key) == ev.holder and ev.holder != ev.owner
        elif isinstance(ev, NetworkDeleted):
            assert not self.held
            self.quarantine.clear()  # a deleted network is forgotten; defined again, it starts afresh
        elif isinstance(ev, IpLeaseOffered):
            assert not forbidden(parse_address(ev.address))
        elif isinstance(ev, CommandRejected) and ev.code == "exhausted":
            family = 6 if "IPv6" in ev.reason else 4
            taken = {k for k in self.held if family_of(k) == family}
            blocked = {k for k, until in self.quarantine.items() if until > ev.at and family_of(k) == family}
            assert len(taken | blocked) >= USABLE[family], f"exhausted with free IPv{family} addresses"

    @rule(owner=st.sampled_from(OWNERS), tick=st.integers(0, 400), dry=st.booleans())
    def lease(self, owner, tick, dry):
        self.now += tick
        before = {f: k for k, o in self.held.items() if o == owner for f in [family_of(k)]}
        events = self.run(LeaseIp(command_id=self.cid(), at=self.now, network="blue", owner=owner, dry_run=dry))
        if not any(isinstance(e, CommandRejected) for e in events):
            got = {family_of(parse_address(e.address)): parse_address(e.address) for e in events}
            assert set(got) == {4, 6}, "dual-stack: one of each family"
            for family, key in before.items():
                assert got[family] == key, "sticky"

    @rule(owner=st.sampled_from(OWNERS), wanted=st.lists(st.sampled_from(CANDIDATES), max_size=2), tick=st.integers(0, 400))
    def lease_static(self, owner, wanted, tick):
        self.now += tick
        events = self.run(LeaseIp(command_id=self.cid(), at=self.now, network="blue", owner=owner, addresses=tuple(wanted)))
        for w in wanted:
            try:
                key = parse_address(w)
            except ValueError:
                assert isinstance(events[0], CommandRejected) and events[0].field.startswith("addresses")
                return
            if forbidden(key):
                assert isinstance(events[0], CommandRejected)

    @rule(owner=st.sampled_from(OWNERS))
    def admit_and_bind(self, owner):
        """The webhook leases under a provisional uid; the VM shows up carrying the addresses."""
        n = next(self.admissions)
        provisional = Owner(namespace=owner.namespace, vm=owner.vm, vm_uid=f"admission:{n}", interface=owner.interface)
        events = self.run(LeaseIp(command_id=self.cid(), at=self.now, network="blue", owner=provisional,
                                  pending_until=self.now + PENDING))
        if any(isinstance(e, CommandRejected) for e in events):
            return
        addresses = tuple(e.address for e in events)
        self.run(ObserveVmIps(command_id=self.cid(), at=self.now, network="blue", namespace=owner.namespace, vm=owner.vm,
                              vm_uid=owner.vm_uid, interfaces=(ObservedAddresses(name=owner.interface, addresses=addresses),)))
        for a in addresses:
            assert self.held[parse_address(a)] == owner, "bound to the VM that carries it"

    @rule(owner=st.sampled_from(OWNERS), wanted=st.lists(st.sampled_from(CANDIDATES[:-1]), max_size=2),
          deleted=st.booleans())
    def observe(self, owner, wanted, deleted):
        self.run(ObserveVmIps(command_id=self.cid(), at=self.now, network="blue", namespace=owner.namespace, vm=owner.vm,
                              vm_uid=owner.vm_uid, deleted=deleted,
                              interfaces=(ObservedAddresses(name=owner.interface, addresses=tuple(wanted)),)))
        if deleted:
            assert not any(o.vm_uid == owner.vm_uid and o.namespace == owner.namespace and o.vm == owner.vm
                           for o in self.held.values())

    @rule(owner=st.sampled_from(OWNERS), seen=st.lists(st.sampled_from(CANDIDATES[:-1]), max_size=3))
    def guest_reports(self, owner, seen):
        self.run(ObserveGuestIps(command_id=self.cid(), at=self.now, network="blue", namespace=owner.namespace,
                                 vm=owner.vm, vm_uid=owner.vm_uid, interface=owner.interface, addresses=tuple(seen)))

    @rule(tick=st.integers(0, 1000))
    def expire(self, tick):
        self.now += tick
        for key, until in list(self.pending.items()):
            self.run(ExpirePendingIp(command_id=self.cid(), at=self.now, network="blue", address=format_address(key),
                                     vm_uid=self.held[key].vm_uid))
            if until <= self.now:
                assert key not in self.pending

    @rule(owner=st.sampled_from(OWNERS), one=st.booleans())
    def release_owner(self, owner, one):
        self.run(ReleaseIps(command_id=self.cid(), at=self.now, network="blue", namespace=owner.namespace, vm=owner.vm,
                            interface=owner.interface if one else None))

    @rule(address=st.sampled_from(CANDIDATES))
    def release_address(self, address):
        self.run(ReleaseIp(command_id=self.cid(), at=self.now, network="blue", address=address))

    @rule(exclude_more=st.sampled_from(["10.1.0.5", "10.1.0.6-10.1.0.8", "10.1.0.14"]))
    def redefine(self, exclude_more):
        """Excluding more is refused exactly when a live lease sits there."""
        first = SubnetSpec(cidr=SUBNETS[0].cidr, gateway=SUBNETS[0].gateway, exclude=SUBNETS[0].exclude + (exclude_more,))
        events = self.run(DefineNetwork(command_id=self.cid(), at=self.now, name="blue", subnets=(first, SUBNETS[1])))
        lo, _, hi = exclude_more.partition("-")
        span = range(parse_address(lo), parse_address(hi or lo) + 1)
        assert isinstance(events[0], CommandRejected) == any(k in span for k in self.held)
        if not isinstance(events[0], CommandRejected):  # put it back
            self.run(DefineNetwork(command_id=self.cid(), at=self.now, name="blue", subnets=SUBNETS))

    @rule()
    def delete_refused_while_held(self):
        events = self.run(DeleteNetwork(command_id=self.cid(), at=self.now, name="blue"))
        if self.held:
            assert events[0].code == "in_use"
        else:
            self.run(DefineNetwork(command_id=self.cid(), at=self.now, name="blue", subnets=SUBNETS))

    @invariant()
    def state_matches_model(self):
        book = self.state.networks["blue"]
        assert book.by_key == self.held
        assert set(book.pending) == set(self.pending)

    @invariant()
    def replay_equals_state(self):
        if len(self.events) % 7:
            return
        rebuilt = replay(State(quarantine_ms=QUARANTINE, recent_max=50), self.events)
        assert rebuilt.snapshot() == self.state.snapshot()


IpDeciderMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
TestIpDecider = IpDeciderMachine.TestCase


@settings(max_examples=60, deadline=None)
@given(prefix=st.integers(48, 120), excluded=st.lists(st.integers(1, 2000), max_size=20), n=st.integers(1, 50))
def test_large_ipv6_subnets_work_without_materialising(prefix, excluded, n):
    """A /48../120 IPv6 subnet: leases are distinct, never excluded, and found without scanning the subnet."""
    base = ipaddress.IPv6Network(f"fd00:9::/{prefix}")
    exclude = tuple(str(base.network_address + e) for e in excluded if e < base.num_addresses)
    state = State()
    for ev in decide(state, DefineNetwork(command_id="d", at=1, name="big", subnets=(SubnetSpec(cidr=str(base), exclude=exclude),))):
        evolve(state, ev)
    seen = set()
    for i in range(n):
        owner = Owner(namespace="n", vm=f"v{i}", vm_uid=f"u{i}", interface="eth1")
        (ev,) = decide(state, LeaseIp(command_id=f"l{i}", at=1, network="big", owner=owner))
        assert isinstance(ev, IpLeased) and ev.prefix_length == prefix
        assert ev.address not in seen and ev.address not in exclude and ipaddress.ip_address(ev.address) in base
        assert ipaddress.ip_address(ev.address) != base.network_address
        seen.add(ev.address)
        evolve(state, ev)


def test_exhaustion_names_the_network_and_what_is_taken():
    state = State()
    for ev in decide(state, DefineNetwork(command_id="d", at=1, name="tiny",
                                          subnets=(SubnetSpec(cidr="192.168.5.0/30", gateway="192.168.5.1"),))):
        evolve(state, ev)
    (ev,) = decide(state, LeaseIp(command_id="a", at=1, network="tiny", owner=OWNERS[0]))
    assert ev.address == "192.168.5.2"
    evolve(state, ev)
    (rej,) = decide(state, LeaseIp(command_id="b", at=1, network="tiny", owner=OWNERS[1]))
    assert rej.code == "exhausted" and "'tiny'" in rej.reason and "1 leased" in rej.reason
    assert next_free(state.networks["tiny"], 4, 1) is None


def test_bad_definitions_name_the_field():
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
    state = State()
    cmd = DefineNetwork(command_id="d1", at=1, name="n", subnets=(SubnetSpec(cidr="10.0.0.0/24"),), create_only=True)
    for ev in decide(state, cmd):
        evolve(state, ev)
    (same,) = decide(state, DefineNetwork(command_id="d2", at=1, name="n", subnets=cmd.subnets, create_only=True))
    assert isinstance(same, NetworkDefined) and not same.created
    (other,) = decide(state, DefineNetwork(command_id="d3", at=1, name="n", subnets=(SubnetSpec(cidr="10.9.0.0/24"),),
                                           create_only=True))
    assert other.code == "exists"
