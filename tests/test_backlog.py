"""When the bus refuses new leases (``Backlog``): overload, told apart from a few requests held by a hand-over."""

from __future__ import annotations

import asyncio

import pytest

from ipam.adapters.bus import Backlog, Busy, CommandBus

from .harness import make_config


def test_few_requests_held_long_are_never_shed():
    backlog = Backlog(shed_after=2.0, min_waiting=4)
    for _ in range(3):
        backlog.enter(0.0)
    backlog.check(60.0)  # three waiting a minute (a partition handing over): a fourth still goes


def test_many_waiting_past_the_limit_are_shed_until_the_oldest_is_answered():
    backlog = Backlog(shed_after=2.0, min_waiting=4)
    tickets = [backlog.enter(t / 10) for t in range(10)]
    backlog.check(1.9)  # the oldest has waited 1.9 s: still taken
    with pytest.raises(Busy) as refused:
        backlog.check(2.0)
    assert (refused.value.waiting, refused.value.retry_after) == (10, 2)
    for ticket in tickets[:5]:  # the oldest five answered: the oldest left waited 1.5 s
        backlog.leave(ticket)
    backlog.check(2.0)
    with pytest.raises(Busy):
        backlog.check(2.5)


def test_a_review_counts_all_its_leases_and_nothing_new_is_never_refused():
    backlog = Backlog(shed_after=1.0, min_waiting=4)
    backlog.enter(0.0)
    backlog.enter(0.0)
    backlog.check(5.0, extra=2)  # 2 + 2 = 4: not above the count
    with pytest.raises(Busy):
        backlog.check(5.0, extra=3)
    backlog.check(5.0, extra=0)  # every answer already stored: nothing to refuse


def test_zero_never_sheds():
    backlog = Backlog(shed_after=0.0, min_waiting=1)
    for _ in range(100):
        backlog.enter(0.0)
    backlog.check(1e6)


def test_past_the_cap_even_young_requests_are_shed_and_below_it_they_are_taken():
    backlog = Backlog(shed_after=2.0, min_waiting=4, max_waiting=8)
    tickets = [backlog.enter(0.0) for _ in range(7)]
    backlog.check(0.1)  # 7 + 1 = the cap: taken, though only 0.1 s old
    backlog.enter(0.1)
    with pytest.raises(Busy) as refused:
        backlog.check(0.1)  # the onset of an overload: refused before the oldest waited shed_after
    assert refused.value.waiting == 8
    backlog.leave(tickets[0])
    backlog.check(0.1)


def test_a_cap_below_the_floor_counts_as_the_floor_and_zero_is_no_cap():
    floor = Backlog(shed_after=2.0, min_waiting=4, max_waiting=2)
    for _ in range(3):
        floor.enter(0.0)
    floor.check(0.1)  # 4 waiting would be within min_waiting: never shed below it
    uncapped = Backlog(shed_after=2.0, min_waiting=4, max_waiting=0)
    for _ in range(1000):
        uncapped.enter(0.0)
    uncapped.check(1.9)


def test_time_held_back_on_purpose_is_not_counted_as_waiting():
    """The log trimmer's hold (``CommandBus.held``) keeps commands waiting by design; the shedder must not take
    that for overload and refuse what the hold promised to keep."""
    backlog = Backlog(shed_after=2.0, min_waiting=4)
    early = [backlog.enter(0.0) for _ in range(5)]  # waited 1 s before the hold
    backlog.pause(1.0)
    for t in range(4):  # came while held
        backlog.enter(1.0 + t)
    backlog.check(4.9)  # 3.9 s of hold: the oldest has waited 1 s that counts
    backlog.resume(5.0)
    backlog.check(5.9)  # 1 s before the hold + 0.9 s after it
    with pytest.raises(Busy) as refused:
        backlog.check(6.0)  # 2 s outside the hold: overload again
    assert refused.value.waiting == 9
    for ticket in early:
        backlog.leave(ticket)
    backlog.check(6.9)  # those that came during the hold count from its end
    with pytest.raises(Busy):
        backlog.check(7.0)


def test_resuming_without_a_pause_changes_nothing():
    backlog = Backlog(shed_after=2.0, min_waiting=1)
    backlog.enter(0.0)
    backlog.resume(10.0)
    with pytest.raises(Busy):
        backlog.check(2.0)


async def test_the_bus_does_not_count_its_own_hold_as_overload():
    """``CommandBus.held`` (the local log trimmer's drain) pauses the backlog's clock: a request that waited
    through the hold is not shed for it afterwards, and one that then waits too long outside it still is."""
    cfg = make_config("127.0.0.1:9", "postgresql://127.0.0.1:9/unused", shed_after_seconds=0.2, shed_min_waiting=1)
    bus = CommandBus(cfg, db=None)  # not started: no broker or database is reached by the backlog
    loop = asyncio.get_running_loop()
    bus.backlog.enter(loop.time())
    async with bus.held():
        await asyncio.sleep(0.3)
        bus.admit()  # held for longer than shed_after: not overload
    bus.admit()  # and not after the hold either
    await asyncio.sleep(0.25)
    with pytest.raises(Busy):
        bus.admit()  # 0.25 s outside the hold: it is
