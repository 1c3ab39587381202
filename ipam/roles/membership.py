"""Which partitions this process works on: leases in Postgres, renewed every beat.

Kafka's consumer group was the first answer, and the slow one: after kill -9 a member's
partitions wait for the session timeout (6 s at least on Apache Kafka's defaults) and then a
JoinGroup (about 5 s on the local broker) before anyone works them again, and every start pays
the JoinGroup too.  Here each member beats every ``beat`` seconds; the live members of the
group, sorted, share the partitions round robin (``wanted``); a member takes a wanted partition
whose lease is free or expired, renews those it holds, and gives back at once those no longer
meant for it.  A killed member's leases expire after ``ttl`` and a survivor takes them on its
next beat.

A lease says who should work a partition, not who may write it: taking a partition still claims
a new epoch, whose fence drops whatever an earlier holder writes later.  So when Postgres cannot
be reached the member keeps what it holds (nobody else can claim an epoch either) and finds out
on its next successful beat whether someone took a partition in between.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog

from ..adapters.postgres import membership as leases

Partitions = Callable[[set[int]], Awaitable[None]]


def wanted(members: list[str], me: str, partitions: int) -> set[int]:
    """Round robin over the sorted live members: every member computes the same split from the same list."""
    if me not in members:
        members = sorted([*members, me])
    n, i = len(members), members.index(me)
    return {p for p in range(partitions) if p % n == i}


class Membership:
    """Beats for one member of one group and tells its role which partitions it gained and lost."""

    def __init__(self, dsn: str, group: str, member: str, partitions: int, *, ttl: float, beat: float,
                 gained: Partitions, lost: Partitions) -> None:
        self.db = leases.Connection(dsn)
        self.group, self.member, self.partitions = group, member, partitions
        self.ttl, self.beat = ttl, beat
        self.gained, self.lost = gained, lost
        self.held: set[int] = set()
        self.log = structlog.get_logger("ipam.membership").bind(group=group, member=member)
        self._stopping = asyncio.Event()
        self._failing = False

    async def run(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.step()
                if self._failing:
                    self.log.info("beating again")
                self._failing = False
            except leases.UNREACHABLE as e:
                self._note_failure(e)
            try:
                await asyncio.wait_for(self._stopping.wait(), self.beat)
            except TimeoutError:
                pass

    def _note_failure(self, e: BaseException) -> None:
        if not self._failing:
            self.log.warning("cannot beat; keeping the partitions held", error=repr(e), held=sorted(self.held))
        self._failing = True

    async def step(self) -> None:
        """One beat: give back what is no longer ours (the role drops it first), renew and take; then tell
        the role what it gained or had taken away."""
        async with self.db.use(self.ttl) as conn:
            members = await asyncio.wait_for(leases.beat(conn, self.group, self.member, self.ttl), self.ttl)
            mine = wanted(members, self.member, self.partitions)
            surplus = self.held - mine
            if surplus:
                await self.lost(surplus)  # stop working them before anyone else may take them
                self.held -= surplus
                await leases.release(conn, self.group, self.member, sorted(surplus))
            now = await asyncio.wait_for(leases.hold(conn, self.group, self.member, sorted(mine), self.ttl), self.ttl)
        taken_away, new = self.held - now, now - self.held
        if taken_away:
            self.log.warning("partitions taken by another member while we could not renew", partitions=sorted(taken_away))
            self.held -= taken_away
            await self.lost(taken_away)
        if new:
            self.held |= new
            self.log.info("partitions gained", partitions=sorted(new), members=len(members))
            await self.gained(new)

    async def ready(self, partition: int) -> None:
        """Note in Postgres that a partition is loaded and worked; only a courtesy for status and tests."""
        try:
            async with self.db.use(self.ttl) as conn:
                await leases.mark_ready(conn, self.group, self.member, partition)
        except leases.UNREACHABLE as e:
            self.log.info("cannot note a partition ready", partition=partition, error=repr(e))

    async def leave(self) -> None:
        """Stop beating and give every lease back, so the others take over on their next beat."""
        self._stopping.set()
        try:
            async with self.db.use(2) as conn:
                await asyncio.wait_for(leases.leave(conn, self.group, self.member), 2)
        except Exception as e:  # leaving is a courtesy: the leases expire anyway
            self.log.warning("could not leave cleanly; leases expire on their own", error=repr(e))
        self.held.clear()
        await self.db.close()
