"""Properties of the MAC decider, over any sequence of commands.

An independent model is built only from the events the decider emits; the invariants
are checked against it: no MAC held twice, one MAC per interface per pool, sticky
answers, quarantine respected, exhaustion only when nothing is free, replaying the
events rebuilds the same state, and a repeated command id changes nothing.
"""

import itertools

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from ipam.domain.allocation import State, decide, evolve, replay
from ipam.domain.mac import format_mac, is_multicast, parse_mac, unicast_at
from ipam.domain.allocation import binds
from ipam.domain.messages import (CommandRejected, CreatePool, ExpirePending, LeaseMac, MacConflict, MacLeaseConfirmed,
                                  MacLeased, MacLeaseOffered, MacLeaseReturned, MacReleased, ObservedInterface, ObserveVm,
                                  Owner, PoolCreated, ReleaseMac, ReleaseOwner)

QUARANTINE = 1000
# Small pools so that exhaustion and quarantine happen; "mixed" straddles a multicast block boundary.
POOLS = {
    "small": "02:00:00:00:00:00-02:00:00:00:00:05",
    "mixed": "02:ff:ff:ff:ff:fd-04:00:00:00:00:01",
}
OWNERS = [Owner(namespace=ns, vm=vm, vm_uid=f"{vm}-uid{u}", interface=i)
          for ns in ("a", "b") for vm in ("v1", "v2") for u in (1, 2) for i in ("eth0", "eth1")]
PENDING = 500
OBSERVED_CANDIDATES = ["02:00:00:00:00:00", "02:00:00:00:00:01", "02:00:00:00:00:02", "02:ff:ff:ff:ff:fd",
                       "04:00:00:00:00:00", "06:00:00:00:00:01"]
STATIC_CANDIDATES = ["02:00:00:00:00:01", "02:00:00:00:00:05", "03:00:00:00:00:00", "04:00:00:00:00:00",
                     "0a:00:00:00:00:01", "01:00:5e:00:00:01", "00:00:00:00:00:00", "ff:ff:ff:ff:ff:ff"]


class DeciderMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.state = State(quarantine_ms=QUARANTINE, recent_max=50)
        self.events = []
        self.commands = []
        self.now = 1_000
        self.ids = itertools.count()
        self.held = {}  # model: mac -> (pool, owner)
        self.quarantine = {}  # model: mac -> until
        self.pending = {}  # model: mac -> lapses at
        self.admissions = itertools.count()

    def run(self, cmd):
        events = decide(self.state, cmd)
        for ev in events:
            self.check_event(cmd, ev)
            evolve(self.state, ev)
            self.events.append(ev)
        self.commands.append((cmd, events))
        return events

    def check_event(self, cmd, ev):
        assert ev.command_id == cmd.command_id and ev.at == cmd.at
        if isinstance(ev, MacLeased):
            mac = parse_mac(ev.mac)
            assert mac not in self.held, f"{ev.mac} leased twice"
            assert not any(p == ev.pool and o == ev.owner for p, o in self.held.values()), "two MACs for one interface"
            assert not is_multicast(mac) and mac != 0
            pool = self.state.pools[ev.pool]
            if pool.range is not None:
                assert mac in pool.range
            if not ev.static:
                assert self.quarantine.get(mac, 0) <= cmd.at, "quarantined MAC handed out"
            self.held[mac] = (ev.pool, ev.owner)
            self.quarantine.pop(mac, None)
            if ev.pending_until:
                self.pending[mac] = ev.pending_until
        elif isinstance(ev, MacLeaseConfirmed):
            mac = parse_mac(ev.mac)
            assert self.held[mac] == (ev.pool, ev.previous), "confirmed a lease someone else holds"
            assert ev.previous == ev.owner or binds(ev.previous, ev.owner)
            assert not any(p == ev.pool and o == ev.owner and m != mac for m, (p, o) in self.held.items()), \
                "two MACs for one interface"
            self.held[mac] = (ev.pool, ev.owner)
            self.pending.pop(mac, None)
        elif isinstance(ev, MacLeaseOffered):
            holder = self.held.get(parse_mac(ev.mac))
            assert holder is None or binds(holder[1], ev.owner), "offered a MAC someone holds"
        elif isinstance(ev, MacConflict):
            assert self.held[parse_mac(ev.mac)] == (ev.pool, ev.holder) and ev.holder != ev.owner
        elif isinstance(ev, MacReleased):
            mac = parse_mac(ev.mac)
            if ev.reason == "pending-expired":
                assert self.pending[mac] <= cmd.at, "pending lease released before it lapsed"
            self.pending.pop(mac, None)
            assert self.held.pop(mac) == (ev.pool, ev.owner)
            assert ev.quarantined_until == cmd.at + QUARANTINE
            self.quarantine[mac] = ev.quarantined_until
        elif isinstance(ev, MacLeaseReturned):
            assert self.held[parse_mac(ev.mac)] == (ev.pool, ev.owner)
        elif isinstance(ev, CommandRejected) and ev.code == "exhausted":
            pool = self.state.pools[cmd.pool]
            every = (unicast_at(pool.range.lo + i) for i in range(pool.range.size))
            free = [m for m in every if m not in self.held and self.quarantine.get(m, 0) <= cmd.at]
            assert not free, f"exhausted while {len(free)} free"
            assert str(pool.size) in ev.reason and cmd.pool in ev.reason

    def next_id(self):
        return f"c{next(self.ids)}"

    @initialize()
    def create_pools(self):
        for name, rng in POOLS.items():
            [ev] = self.run(CreatePool(command_id=self.next_id(), at=self.now, name=name, range=rng, default=name == "small"))
            assert isinstance(ev, PoolCreated)
        [ev] = self.run(CreatePool(command_id=self.next_id(), at=self.now, name="ext", external=True))
        assert isinstance(ev, PoolCreated)

    @rule(owner=st.sampled_from(OWNERS), pool=st.sampled_from(sorted(POOLS)))
    def lease(self, owner, pool):
        before = next((m for m, (p, o) in self.held.items() if p == pool and o == owner), None)
        events = self.run(LeaseMac(command_id=self.next_id(), at=self.now, pool=pool, owner=owner))
        if before is not None:  # sticky
            assert len(events) == 1 and isinstance(events[0], MacLeaseReturned) and parse_mac(events[0].mac) == before
        else:
            assert len(events) == 1 and (isinstance(events[0], MacLeased) or events[0].code == "exhausted")

    @rule(owner=st.sampled_from(OWNERS), pool=st.sampled_from(sorted(POOLS) + ["ext"]), mac=st.sampled_from(STATIC_CANDIDATES))
    def lease_static(self, owner, pool, mac):
        holder = self.held.get(parse_mac(mac))
        events = self.run(LeaseMac(command_id=self.next_id(), at=self.now, pool=pool, owner=owner, mac=mac))
        last = events[-1]
        if holder is not None and holder != (pool, owner) and isinstance(last, CommandRejected) and last.code == "held":
            assert last.holder == holder[1] and holder[1].vm in last.reason
        if isinstance(last, MacLeased):
            assert last.mac == mac and last.static

    @rule(owner=st.sampled_from(OWNERS), pool=st.sampled_from(sorted(POOLS)), one=st.booleans())
    def release_owner(self, owner, pool, one):
        self.run(ReleaseOwner(command_id=self.next_id(), at=self.now, pool=pool, namespace=owner.namespace, vm=owner.vm,
                              interface=owner.interface if one else None))
        assert not any(p == pool and o.namespace == owner.namespace and o.vm == owner.vm
                       and (not one or o.interface == owner.interface) for p, o in self.held.values())

    @precondition(lambda self: self.held)
    @rule(data=st.data())
    def release_mac(self, data):
        mac = data.draw(st.sampled_from(sorted(self.held)))
        pool = self.held[mac][0]
        [ev] = self.run(ReleaseMac(command_id=self.next_id(), at=self.now, pool=pool, mac=format_mac(mac).upper()))
        assert isinstance(ev, MacReleased)

    @rule(ms=st.integers(1, 2 * QUARANTINE))
    def time_passes(self, ms):
        self.now += ms

    @precondition(lambda self: self.commands)
    @rule(data=st.data())
    def repeat_a_command(self, data):
        cmd, events = data.draw(st.sampled_from([c for c in self.commands[-40:] if c[1]] or self.commands[-1:]))
        if not events:
            return  # a command that decided nothing left nothing to remember
        before = self.state.snapshot()
        assert decide(self.state, cmd) == []
        assert self.state.snapshot() == before

    @rule(name=st.sampled_from(["small", "other"]), rng=st.sampled_from(["02:00:00:00:00:03-02:00:00:00:00:09",
                                                                          "06:00:00:00:00:00-06:00:00:00:00:03"]))
    def create_more_pools(self, name, rng):
        existed = name in self.state.pools
        [ev] = self.run(CreatePool(command_id=self.next_id(), at=self.now, name=name, range=rng))
        if existed:
            assert ev.code == "exists"
            return
        if name in self.state.pools and not isinstance(ev, PoolCreated) and ev.code == "exists":
            return
        if rng.startswith("02"):
            assert ev.code == "overlap" and "small" in ev.reason

    @rule(owner=st.sampled_from(OWNERS), pool=st.sampled_from(sorted(POOLS)),
          mac=st.none() | st.sampled_from(OBSERVED_CANDIDATES), dry=st.booleans())
    def admit(self, owner, pool, mac, dry):
        """The webhook at CREATE: the VM has no uid yet, so the lease is provisional (or a dry run)."""
        provisional = Owner(namespace=owner.namespace, vm=owner.vm, vm_uid=f"admission:{next(self.admissions)}",
                            interface=owner.interface)
        books = {n: b.snapshot() for n, b in self.state.books.items()}
        events = self.run(LeaseMac(command_id=self.next_id(), at=self.now, pool=pool, owner=provisional, mac=mac,
                                   pending_until=self.now + PENDING, dry_run=dry))
        if dry:
            assert {n: b.snapshot() for n, b in self.state.books.items()} == books, "a dry run changed the books"
            assert all(isinstance(e, (MacLeaseOffered, MacLeaseReturned, CommandRejected)) for e in events)

    @rule(owner=st.sampled_from(OWNERS), pool=st.sampled_from(sorted(POOLS)), deleted=st.booleans(),
          seen=st.lists(st.tuples(st.sampled_from(["eth0", "eth1"]), st.sampled_from(OBSERVED_CANDIDATES)),
                        max_size=2, unique_by=lambda t: t[0]))
    def observe(self, owner, pool, deleted, seen):
        """The watcher reports a VM (perhaps one whose provisional lease it now binds)."""
        interfaces = tuple(ObservedInterface(name=i, mac=m) for i, m in seen)
        events = self.run(ObserveVm(command_id=self.next_id(), at=self.now, pool=pool, namespace=owner.namespace,
                                    vm=owner.vm, vm_uid=owner.vm_uid, interfaces=interfaces, deleted=deleted))
        mine = {o.interface: m for m, (p, o) in self.held.items()
                if p == pool and (o.namespace, o.vm, o.vm_uid) == (owner.namespace, owner.vm, owner.vm_uid)}
        if deleted:
            assert not mine, "a deleted VM still holds leases"
            return
        explained = {e.owner.interface for e in events if isinstance(e, MacConflict)}
        explained |= {i for i, m in seen if any(isinstance(e, CommandRejected) and m in e.reason for e in events)}
        for iface, mac in seen:
            assert iface in explained or mine.get(iface) == parse_mac(mac), f"{iface} neither holds {mac} nor is explained"
        for iface, mac in mine.items():
            assert iface in dict(seen) or mac in self.pending, f"{iface} left holding a MAC the VM no longer carries"

    @precondition(lambda self: self.pending)
    @rule(data=st.data())
    def expire(self, data):
        mac = data.draw(st.sampled_from(sorted(self.pending)))
        pool, holder = self.held[mac]
        lapsed = self.pending[mac] <= self.now
        events = self.run(ExpirePending(command_id=self.next_id(), at=self.now, pool=pool, mac=format_mac(mac),
                                        vm_uid=holder.vm_uid))
        assert (mac not in self.held) == lapsed and len(events) == int(lapsed)

    @invariant()
    def pending_matches_the_model(self):
        pending = {m: until for b in self.state.books.values() for m, until in b.pending.items()}
        assert pending == self.pending

    @invariant()
    def replay_rebuilds_the_state(self):
        rebuilt = replay(State(quarantine_ms=QUARANTINE, recent_max=50), self.events)
        assert rebuilt.snapshot() == self.state.snapshot()

    @invariant()
    def state_matches_the_model(self):
        live = {m: (name, o) for name, b in self.state.books.items() for m, o in b.by_mac.items()}
        assert live == self.held


TestDecider = DeciderMachine.TestCase
TestDecider.settings = settings(max_examples=150, stateful_step_count=60, deadline=None)


def test_random_start_is_deterministic_and_spread():
    starts = set()
    for i in range(20):
        s = State()
        [ev] = decide(s, CreatePool(command_id=f"id{i}", at=0, name="p", range="02:00:00:00:00:00-02:ff:ff:ff:ff:ff"))
        assert decide(State(), CreatePool(command_id=f"id{i}", at=0, name="p", range="02:00:00:00:00:00-02:ff:ff:ff:ff:ff")) == [ev]
        starts.add(ev.start)
    assert len(starts) == 20


def test_huge_pool_leases_without_materialising_it():
    s = State()
    for ev in decide(s, CreatePool(command_id="p", at=0, name="kmp", range="02:00:00:00:00:00-fd:ff:ff:ff:ff:ff")):
        evolve(s, ev)
    macs = set()
    for i in range(2000):
        [ev] = decide(s, LeaseMac(command_id=f"l{i}", at=0, pool="kmp", owner=Owner(namespace="n", vm=f"v{i}", vm_uid="u", interface="e")))
        evolve(s, ev)
        macs.add(ev.mac)
        assert not is_multicast(parse_mac(ev.mac))
    assert len(macs) == 2000


def test_exhaustion_names_pool_and_size():
    s = State()
    for ev in decide(s, CreatePool(command_id="p", at=0, name="tiny", range="02:00:00:00:00:01-02:00:00:00:00:02")):
        evolve(s, ev)
    for i in range(2):
        for ev in decide(s, LeaseMac(command_id=f"l{i}", at=0, pool="tiny", owner=Owner(namespace="n", vm=f"v{i}", vm_uid="u", interface="e"))):
            evolve(s, ev)
    [ev] = decide(s, LeaseMac(command_id="l3", at=0, pool="tiny", owner=Owner(namespace="n", vm="v3", vm_uid="u", interface="e")))
    assert ev.code == "exhausted" and "'tiny'" in ev.reason and "all 2 addresses" in ev.reason


def test_an_observation_can_move_a_mac_between_interfaces_of_one_vm():
    """Found by the state machine: a MAC freed earlier in the same observation is not a conflict."""
    state = State(quarantine_ms=QUARANTINE)
    for ev in decide(state, CreatePool(command_id="p", at=1, name="mixed", range=POOLS["mixed"])):
        evolve(state, ev)
    eth0 = Owner(namespace="a", vm="v1", vm_uid="u", interface="eth0")
    [leased] = decide(state, LeaseMac(command_id="l", at=1, pool="mixed", owner=eth0, mac="04:00:00:00:00:00"))
    evolve(state, leased)
    events = decide(state, ObserveVm(command_id="o", at=2, pool="mixed", namespace="a", vm="v1", vm_uid="u",
                                     interfaces=(ObservedInterface(name="eth0", mac="02:ff:ff:ff:ff:fd"),
                                                 ObservedInterface(name="eth1", mac="04:00:00:00:00:00"))))
    assert [(type(e).__name__, e.mac) for e in events] == [
        ("MacReleased", "04:00:00:00:00:00"), ("MacLeased", "02:ff:ff:ff:ff:fd"), ("MacLeased", "04:00:00:00:00:00")]
    for ev in events:
        evolve(state, ev)
    eth1 = Owner(namespace="a", vm="v1", vm_uid="u", interface="eth1")
    assert state.books["mixed"].held_by(eth1) == parse_mac("04:00:00:00:00:00")
    # and two interfaces may swap their MACs
    swapped = decide(state, ObserveVm(command_id="s", at=3, pool="mixed", namespace="a", vm="v1", vm_uid="u",
                                      interfaces=(ObservedInterface(name="eth0", mac="04:00:00:00:00:00"),
                                                  ObservedInterface(name="eth1", mac="02:ff:ff:ff:ff:fd"))))
    assert not any(isinstance(e, MacConflict) for e in swapped)
    for ev in swapped:
        evolve(state, ev)
    assert state.books["mixed"].held_by(eth0) == parse_mac("04:00:00:00:00:00")
    assert state.books["mixed"].held_by(eth1) == parse_mac("02:ff:ff:ff:ff:fd")
