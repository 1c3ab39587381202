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
from ipam.domain.messages import (CommandRejected, CreatePool, LeaseMac, MacLeased, MacLeaseReturned, MacReleased, Owner,
                                  PoolCreated, ReleaseMac, ReleaseOwner)

QUARANTINE = 1000
# Small pools so that exhaustion and quarantine happen; "mixed" straddles a multicast block boundary.
POOLS = {
    "small": "02:00:00:00:00:00-02:00:00:00:00:05",
    "mixed": "02:ff:ff:ff:ff:fd-04:00:00:00:00:01",
}
OWNERS = [Owner(namespace=ns, vm=vm, vm_uid=f"{vm}-uid{u}", interface=i)
          for ns in ("a", "b") for vm in ("v1", "v2") for u in (1, 2) for i in ("eth0", "eth1")]
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
        elif isinstance(ev, MacReleased):
            mac = parse_mac(ev.mac)
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
        cmd, _ = data.draw(st.sampled_from(self.commands[-40:]))
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
