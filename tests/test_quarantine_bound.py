"""Quarantine holds memory only while it runs: after any number of releases and the quarantine time, the next
event of the space leaves nothing of them behind (issue 26 item 3).  Pure domain, every kind of address."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from ipam.domain.commands import LEASE_COMMANDS, CreatePool, DefineNetwork, SubnetSpec
from ipam.domain.decider import State, decide, evolve
from ipam.domain.kinds import IP, MAC, Owner

QUARANTINE = 1000
SPACES = {MAC: ("big", CreatePool(command_id="c-pool", at=0, name="big", range="02:00:00:00:00:00-02:ff:ff:ff:ff:ff")),
          IP: ("net", DefineNetwork(command_id="c-net", at=0, name="net", subnets=(SubnetSpec(cidr="10.0.0.0/8"),)))}


def apply(state: State, cmd) -> list:
    events = decide(state, cmd)
    for ev in events:
        evolve(state, ev)
    return events


@settings(max_examples=60, deadline=None)
@given(kind=st.sampled_from([MAC, IP]), gaps=st.lists(st.integers(0, 400), min_size=1, max_size=80),
       late=st.integers(0, 5 * QUARANTINE))
def test_quarantine_memory_is_back_to_zero_after_the_quarantine_time(kind, gaps, late):
    space, create = SPACES[kind]
    commands = LEASE_COMMANDS[kind]
    state = State(quarantine_ms=QUARANTINE, recent_max=50)
    apply(state, create)
    now = 0
    for i, gap in enumerate(gaps):  # lease and release, each release quarantining one more address
        now += gap
        owner = Owner(namespace="ns", vm=f"vm-{i}", vm_uid=f"u{i}", interface="eth0")
        assert apply(state, commands.lease(command_id=f"l{i}", at=now, **{kind.space: space}, owner=owner))
        assert apply(state, commands.release_owner(command_id=f"r{i}", at=now, **{kind.space: space}, namespace="ns",
                                                   vm=f"vm-{i}"))
    [book] = state.books[kind].values()
    assert 0 < len(book.quarantine) <= len(gaps)
    now += QUARANTINE + late  # every quarantine has run out; one more event of the space
    last = Owner(namespace="ns", vm="last", vm_uid="u", interface="eth0")
    assert apply(state, commands.lease(command_id="last", at=now, **{kind.space: space}, owner=last))
    assert book.quarantine == {} and len(book.expiries) == 0
