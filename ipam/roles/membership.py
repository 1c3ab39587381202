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
a new epoch, whose fence drops whatever an earlier holder writes later.  When Postgres cannot be
reached the member keeps what it holds while its leases last, and no longer: a member cut off from
Postgres but not from the broker would otherwise go on deciding commands its successor decides too
(the fence drops its events, but it answered nothing and burned a hand-over).  Its leases end no
sooner than ``ttl`` after the last renewal was *sent* (Postgres stamps them later), so the member
gives its partitions up a little before that, ``margin`` seconds, by its own clock: it has stopped
before anyone may take them.  Its next successful beat takes them back if they are still free.
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
        self.margin = min(beat, ttl / 4)  # given up this long before the leases can end
        self._held_until = 0.0  # loop time before which no one else can take what we hold
        self.paused = False  # out of the group while this process cannot reach the broker (``pause``)
        self._out = False  # paused, and its member row and leases are gone

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stopping.is_set():
            try:
                await self.step()
                if self._failing:
                    self.log.info("beating again")
                self._failing = False
            except leases.UNREACHABLE as e:  # TimeoutError among them
                self._note_failure(e)
                await self._expire(loop.time())
            wait = self.beat  # failing with leases held: try again no later than when they must be given up
            if self._failing and self.held:
                wait = max(0.0, min(self.beat, self._held_until - loop.time()))
            try:
                await asyncio.wait_for(self._stopping.wait(), wait)
            except TimeoutError:
                pass

    def _note_failure(self, e: BaseException) -> None:
        if not self._failing:
            left = max(0.0, self._held_until - asyncio.get_running_loop().time())
            self.log.warning("cannot beat; keeping the partitions held while their leases last", error=repr(e),
                             held=sorted(self.held), seconds_left=round(left, 2))
        self._failing = True

    async def _expire(self, now: float) -> None:
        """Postgres out of reach past our leases: stop working them before another member may take them."""
        if self.held and now >= self._held_until:
            given_up, self.held = self.held, set()
            self.log.warning("ownership leases expired while Postgres is out of reach; partitions given up",
                             partitions=sorted(given_up))
            await self.lost(given_up)

    def pause(self) -> None:
        """Leave the group until ``resume``: this process cannot reach the broker, so it cannot work partitions
        it would keep (Postgres still renews its leases).  The next beat gives everything back and the member
        stops beating, so the others' round robin leaves it out and they take its partitions at once."""
        if not self.paused:
            self.paused = True
            self.log.warning("the broker is out of reach; leaving the group until it is back", held=sorted(self.held))

    def resume(self) -> None:
        if self.paused:
            self.paused, self._out = False, False
            self.log.info("the broker is back; joining the group again")

    async def _stay_out(self) -> None:
        given_up, self.held = self.held, set()
        if given_up:
            await self.lost(given_up)  # stop working them before anyone else may take them
            self._out = False
        if not self._out:  # once: the member row and the leases go, so the others take them on their next beat
            async with self.db.use(self.ttl) as conn:
                await asyncio.wait_for(leases.leave(conn, self.group, self.member), self.ttl)
            self._out = True

    async def step(self) -> None:
        """One beat: give back what is no longer ours (the role drops it first), renew and take; then tell
        the role what it gained or had taken away.  Paused: out of the group, nothing held."""
        if self.paused:
            await self._stay_out()
            return
        loop = asyncio.get_running_loop()

        def limit() -> float:  # a statement that hangs (packets dropped) must not outlast the leases it renews
            return max(0.05, min(self.ttl, self._held_until - loop.time())) if self.held else self.ttl

        async with self.db.use(limit()) as conn:
            members = await asyncio.wait_for(leases.beat(conn, self.group, self.member, self.ttl), limit())
            mine = wanted(members, self.member, self.partitions)
            surplus = self.held - mine
            if surplus:
                await self.lost(surplus)  # stop working them before anyone else may take them
                self.held -= surplus
                await leases.release(conn, self.group, self.member, sorted(surplus))
            sent = loop.time()
            now = await asyncio.wait_for(leases.hold(conn, self.group, self.member, sorted(mine), self.ttl), limit())
            self._held_until = sent + self.ttl - self.margin
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
