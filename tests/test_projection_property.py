"""Property: whatever the decider emits, cut into batches anywhere, the projection's tables equal a replay.

Hypothesis draws a program of commands over two pools and two networks (leases, static requests,
admissions, observations, releases, expiry, redefinitions); the pure decider turns it into events;
the events become records of one partition, cut into random batches and applied by the real
``Projection`` on real Postgres; ``rebuild`` then replays the ledger and compares every table.  One
database serves every example: its tables are emptied in between.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ipam.adapters.postgres.codecs import connect
from ipam.adapters.postgres.migrations import migrate
from ipam.adapters.postgres.projection import Projection
from ipam.adapters.postgres.rebuild import rebuild
from ipam.domain.commands import LEASE_COMMANDS, CreatePool, DefineNetwork, SubnetSpec
from ipam.domain.decider import STATE_EVENTS, State, decide, evolve
from ipam.domain.events import encoder
from ipam.domain.kinds import IP, MAC, Owner
from ipam.domain.topic_records import EventRecord

SPACES = {MAC: ("p0", "p1"), IP: ("n0", "n1")}
SETUP = [CreatePool(command_id="setup-p0", at=1, name="p0", range="02:00:00:00:00:00-02:00:00:00:00:07", default=True),
         CreatePool(command_id="setup-p1", at=1, name="p1", range="0a:00:00:00:00:00-0a:00:00:00:00:03")]
SUBNETS = {"n0": (SubnetSpec(cidr="10.9.0.0/29", gateway="10.9.0.1"), SubnetSpec(cidr="fd00:9::/125")),
           "n1": (SubnetSpec(cidr="10.8.0.0/29", exclude=("10.8.0.3",)),)}
CANDIDATES = {"p0": ["02:00:00:00:00:02", "02:00:00:00:00:05", "02:00:00:00:00:06", "0a:00:00:00:00:01"],
              "p1": ["0a:00:00:00:00:01", "0a:00:00:00:00:02", "0a:00:00:00:00:03", "02:00:00:00:00:02"],
              "n0": ["10.9.0.3", "fd00:9::3", "10.9.0.5", "10.8.0.2"],
              "n1": ["10.8.0.2", "10.8.0.6", "10.8.0.4", "10.9.0.3"]}  # the last of each belongs to another space
OWNERS = [Owner(namespace="ns", vm=f"v{i}", vm_uid=f"u{i}", interface=iface) for i in range(3) for iface in ("e0", "e1")]
OWNERS += [Owner(namespace="ns", vm="v0", vm_uid="pod-u0", interface="e0", workload="Pod")]  # a pod named like a VM
TABLES = ("mac_leases", "mac_quarantine", "ip_leases", "ip_quarantine", "network_subnets", "networks", "pools", "ledger",
          "command_outcomes", "epochs", "partitions")

op = st.tuples(st.sampled_from(["lease", "static", "admit", "observe", "release", "release_address", "expire", "redefine",
                                "tick"]),
               st.sampled_from([MAC, IP]), st.integers(0, 1), st.sampled_from(OWNERS), st.integers(0, 3))


def _command(state: State, n: int, at: int, what: str, kind, space_i: int, owner: Owner, pick: int):
    cmd, space = LEASE_COMMANDS[kind], SPACES[kind][space_i]
    base = {"command_id": f"c{n}", "at": at, kind.space: space}
    field, _, empty = kind.requested
    wanted = CANDIDATES[space][pick]
    if what in ("lease", "static", "admit"):
        asked = {field: (wanted if empty is None else (wanted,))} if what == "static" else {}
        who = owner if what != "admit" else Owner(namespace=owner.namespace, vm=owner.vm, vm_uid=f"admission:{n}",
                                                  interface=owner.interface, workload=owner.workload)
        return cmd.lease(**base, owner=who, pending_until=at + 50 if what == "admit" else 0, **asked)
    book = state.books[kind].get(space)
    if what == "observe":
        pending = [k for k in (book.pending if book else ()) if book.by_key[k].vm == owner.vm
                   and book.by_key[k].interface == owner.interface]
        if pending and pick < 2:  # the VM an admission leased for shows up carrying it: bind it
            wanted = book.space.format(pending[0])
        item = kind.observed(name=owner.interface, **({"mac": wanted} if kind is MAC else {"addresses": (wanted,)}))
        return cmd.observe(**base, namespace=owner.namespace, vm=owner.vm, vm_uid=owner.vm_uid, interfaces=(item,),
                           deleted=pick == 3, workload=owner.workload if pick != 1 else "VirtualMachine")
    if what == "release":
        return cmd.release_owner(**base, namespace=owner.namespace, vm=owner.vm, interface=owner.interface if pick else None)
    held = sorted(book.by_key) if book else []
    if what == "release_address" and held:
        return cmd.release_address(**base, **{kind.address: book.space.format(held[pick % len(held)])})
    if what == "expire" and book and book.pending:
        key = sorted(book.pending)[pick % len(book.pending)]
        return cmd.expire(**base, **{kind.address: book.space.format(key)}, vm_uid=book.by_key[key].vm_uid)
    if what == "redefine" and kind is IP:
        subnets = SUBNETS[space] if pick % 2 else SUBNETS[space][:1]
        return DefineNetwork(command_id=f"c{n}", at=at, name=space, subnets=subnets)
    return None


def _events(program) -> list:
    state, events, at = State(quarantine_ms=40, recent_max=1000), [], 10
    setup = SETUP + [DefineNetwork(command_id=f"setup-{n}", at=1, name=n, subnets=s) for n, s in SUBNETS.items()]
    for n, step in enumerate([None] * len(setup) + list(program)):
        at += 7
        cmd = setup[n] if step is None else _command(state, n, at, *step)
        for ev in decide(state, cmd) if cmd is not None else ():
            evolve(state, ev)
            events.append((n, ev))
    return events


async def _empty(conn) -> None:
    await conn.execute(f"TRUNCATE {', '.join(f'ipam_store.{t}' for t in TABLES)} RESTART IDENTITY CASCADE")
    await conn.execute("INSERT INTO ipam_store.partitions (partition) VALUES (0)")


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(program=st.lists(op, min_size=30, max_size=150), cuts=st.lists(st.integers(1, 40), max_size=12))
async def test_any_event_stream_in_any_batches_projects_to_what_a_replay_gives(database, program, cuts):
    await migrate(database)
    events = _events(program)
    records = [(offset, encoder.encode(EventRecord(partition=0, epoch=1, seq=offset + 1, source_offset=n,
                                                   last=i + 1 == len(events) or events[i + 1][0] != n, event=ev)))
               for offset, (i, (n, ev)) in enumerate(enumerate(events))]
    conn = await connect(database)
    try:
        await _empty(conn)
        projection, offset, start = Projection(lambda name: 0), 0, 0
        for cut in [*cuts, len(records)]:
            batch = records[start:start + cut]
            if not batch:
                continue
            result = await projection.apply(conn, 0, offset, batch)
            assert result.applied == len(batch) and not (result.poison or result.dropped or result.duplicates)
            offset = start = result.next_offset
        report = await rebuild(conn)
        assert report.equal, str(report.differences)
        assert report.events == sum(1 for _, ev in events if type(ev) in STATE_EVENTS)
    finally:
        await conn.close()
