"""A member that cannot reach Postgres gives its partitions up before its leases can end (issue 25): another
member may take them only once they expired, and by then this one has stopped working them."""

from __future__ import annotations

import asyncio

import asyncpg

from ipam.adapters.postgres.migrations import migrate
from ipam.roles.membership import Membership

from .backends import PrivatePostgres
from .harness import eventually


async def migrated(pg) -> str:
    """A migrated database on a Postgres server of the test's own (the tests stop that server)."""
    admin = await asyncpg.connect(pg.dsn)
    await admin.execute("CREATE DATABASE leases")
    await admin.close()
    dsn = pg.dsn.rsplit("/", 1)[0] + "/leases"
    await migrate(dsn)
    return dsn


async def test_a_member_out_of_reach_of_postgres_stops_before_its_leases_end():
    pg = PrivatePostgres().start()
    try:
        dsn = await migrated(pg)
        loop = asyncio.get_running_loop()
        given_up: list[tuple[float, set[int]]] = []

        async def gained(partitions: set[int]) -> None:
            pass

        async def lost(partitions: set[int]) -> None:
            given_up.append((loop.time(), set(partitions)))

        member = Membership(dsn, "allocator", "cut-off", 4, ttl=1.5, beat=0.25, gained=gained, lost=lost)
        beating = asyncio.create_task(member.run())
        await eventually(lambda: asyncio.sleep(0, member.held == {0, 1, 2, 3}), timeout=10)
        await asyncio.sleep(0.6)  # a few renewals
        await asyncio.to_thread(pg.stop, "immediate")  # Postgres gone: every beat from now on fails
        cut_at = loop.time()
        must_stop_by = member._held_until + member.margin  # = last renewal sent + ttl: the lease's earliest end
        await eventually(lambda: asyncio.sleep(0, bool(given_up)), timeout=5)
        when, partitions = given_up[0]
        assert partitions == {0, 1, 2, 3} and member.held == set()
        assert when < must_stop_by, (when - cut_at, must_stop_by - cut_at)  # stopped before anyone may take them
        assert when - cut_at < 1.5  # and not long before: the leases were renewed every 0.25 s
        member._stopping.set()
        beating.cancel()
    finally:
        pg.destroy()


async def test_a_paused_member_leaves_the_group_and_the_others_take_its_partitions_at_once():
    """Paused (its process cannot reach the broker), a member gives its partitions back and stops beating: the
    other takes them on its next beat, not after the leases expire; resumed, it gets its share again."""
    pg = PrivatePostgres().start()
    try:
        dsn = await migrated(pg)

        async def nothing(partitions: set[int]) -> None:
            pass

        a, b = (Membership(dsn, "allocator", name, 4, ttl=30.0, beat=0.1, gained=nothing, lost=nothing)
                for name in ("a", "b"))
        tasks = [asyncio.create_task(m.run()) for m in (a, b)]
        await eventually(lambda: asyncio.sleep(0, len(a.held) == len(b.held) == 2), timeout=10)
        a.pause()
        await eventually(lambda: asyncio.sleep(0, not a.held and b.held == {0, 1, 2, 3}), timeout=3)  # ttl is 30 s
        a.resume()
        await eventually(lambda: asyncio.sleep(0, len(a.held) == len(b.held) == 2), timeout=10)
        for m, t in zip((a, b), tasks, strict=True):
            m._stopping.set()
            t.cancel()
    finally:
        pg.destroy()
