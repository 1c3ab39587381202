"""Submit a command and wait for its outcome, committed in Postgres.

The waiter is registered before the command is produced; the projector's NOTIFY (sent
on commit) resolves it.  If a notification is missed (listener reconnecting), the
waiter falls back to reading ``ipam_store.command_outcomes`` before giving up.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import asyncpg
import msgspec
import structlog
from aiokafka.errors import KafkaError

from .. import telemetry
from ..config import Config
from ..domain.decider import stream_key
from ..domain.events import AnyEvent
from . import kafka
from .postgres import outcomes

log = structlog.get_logger("ipam.bus")
encoder = msgspec.json.Encoder()


RESEND_AFTER = 3.0  # seconds without an outcome before the command is sent again (a hand-over takes less)


class OutcomeTimeout(Exception):
    pass


class Busy(Exception):
    """Refused at once: the commands already waiting here will not be answered in time (``Backlog``)."""

    def __init__(self, waiting: int, oldest: float) -> None:
        super().__init__(f"{waiting} requests are waiting, the oldest for {oldest:.1f}s")
        self.waiting, self.oldest = waiting, oldest
        self.retry_after = max(1, min(5, round(oldest)))


class Backlog:
    """The commands this process waits on, oldest first, and whether to take more (load shedding).

    Beyond capacity an open queue only grows: every request then waits until its deadline and fails, and the
    API server's client meets timeouts instead of a fast "try again".  So once the oldest waiting command has
    waited ``shed_after`` seconds and at least ``min_waiting`` wait, a new request is refused at once; those
    admitted finish in about ``shed_after``.  Few requests held long (a partition handing over, a broker
    restarting) are not overload and are never shed: the count keeps them apart.  And once ``max_waiting``
    wait, however young: at the onset of an overload the oldest reaches ``shed_after`` only when twice the
    capacity has admitted ``2 × shed_after`` seconds of work, which the event loop then owes before it reads
    the next request, so the refusals themselves came late (measured: docs/performance.md, "Overload").  A
    dict keeps insertion order, so the oldest is its first key.

    Time a command waits while new commands are held back on purpose (``pause``: the local log trimmer's drain,
    up to 4 s) is not overload and does not count toward ``shed_after``: a 4 s hold at the soak's 60 commands a
    second leaves some 240 waiting, the oldest past 2 s, next to the 256 at which the shedder would refuse the
    requests the hold promises to keep (the likely cause of 8 × 429 in an hour's soak, docs/performance.md)."""

    def __init__(self, shed_after: float, min_waiting: int, max_waiting: int = 0) -> None:
        self.shed_after, self.min_waiting, self.max_waiting = shed_after, min_waiting, max_waiting
        self._since: dict[int, float] = {}
        self._next = 0
        self._paused_at: float | None = None

    def check(self, now: float, extra: int = 1) -> None:
        """Raise ``Busy`` when ``extra`` more commands should not be taken now."""
        if not extra or not self.shed_after or len(self._since) + extra <= self.min_waiting:
            return
        oldest = (now if self._paused_at is None else self._paused_at) - next(iter(self._since.values()))
        if oldest >= self.shed_after or 0 < self.max_waiting < len(self._since) + extra:
            telemetry.requests_shed.inc()
            raise Busy(len(self._since), oldest)

    def enter(self, now: float) -> int:
        self._next += 1
        self._since[self._next] = now
        return self._next

    def leave(self, ticket: int) -> None:
        self._since.pop(ticket, None)

    def pause(self, now: float) -> None:
        """New commands are held back from ``now``: waiting from here on is not counted."""
        self._paused_at = now

    def resume(self, now: float) -> None:
        """The hold is over: every command waiting is taken to have waited as long as it did outside it
        (those that came during the hold, from ``now``), so the order, oldest first, stays."""
        if self._paused_at is None:
            return
        gap, self._paused_at = now - self._paused_at, None
        for ticket, since in self._since.items():
            self._since[ticket] = min(since + gap, now)

    def __len__(self) -> int:
        return len(self._since)


class CommandBus:
    def __init__(self, cfg: Config, db: asyncpg.Pool) -> None:
        self.cfg = cfg
        self.db = db
        self._producer = kafka.producer(cfg, linger_ms=0)
        self._waiters: dict[str, list[asyncio.Future]] = {}
        self._listener: asyncpg.Connection | None = None
        self._closing = False
        # the local log trimmer holds new commands back while it swaps the topics (``held``)
        self._open = asyncio.Event()
        self._open.set()
        self._producing = 0
        self._produced = asyncio.Condition()
        self.backlog = Backlog(cfg.shed_after_seconds, cfg.shed_min_waiting, cfg.shed_max_waiting)

    async def start(self) -> None:
        await self._producer.start()
        await self._listen()

    async def _listen(self) -> None:
        self._listener = await asyncpg.connect(self.cfg.database_url)
        await self._listener.add_listener(outcomes.NOTIFY_CHANNEL, self._on_notify)
        self._listener.add_termination_listener(self._on_lost)

    def _on_lost(self, _conn) -> None:
        """The database went away: reconnect in the background; waiters fall back to the table."""
        if not self._closing:
            asyncio.get_running_loop().create_task(self._reconnect())

    async def _reconnect(self) -> None:
        while not self._closing:
            await asyncio.sleep(0.5)
            try:
                await self._listen()
                log.info("listening for outcomes again")
                return
            except (OSError, asyncpg.PostgresError) as e:
                log.warning("cannot listen for outcomes yet", error=str(e))

    async def stop(self) -> None:
        self._closing = True
        if self._listener is not None:
            await self._listener.close()
        await self._producer.stop()

    async def broker_reachable(self, timeout: float = 2.0) -> bool:
        try:
            await asyncio.wait_for(self._producer.client.fetch_all_metadata(), timeout)
            return True
        except Exception:
            return False

    async def healthy(self) -> bool:
        return self._listener is not None and not self._listener.is_closed()

    def _on_notify(self, _conn, _pid, _channel, payload: str) -> None:
        for command_id, events in outcomes.decode_notice(payload):
            for fut in self._waiters.pop(command_id, ()):
                if not fut.done():
                    fut.set_result(events)

    async def outcome(self, command_id: str) -> list[AnyEvent] | None:
        """The committed outcome of an earlier command, or None when there is none (yet)."""
        return (await self.outcomes([command_id])).get(command_id)

    async def outcomes(self, command_ids: list[str]) -> dict[str, list[AnyEvent]]:
        """Committed outcomes of several commands in one round trip (absent ids are left out)."""
        return await outcomes.read(self.db, command_ids)

    async def outcomes_for_key(self, key: str) -> list[list[AnyEvent]]:
        """Outcomes of the commands one request fanned out to (ids ``key/<space>``)."""
        return await outcomes.read_prefixed(self.db, key)

    @contextlib.asynccontextmanager
    async def held(self) -> AsyncIterator[None]:
        """Hold new commands back; the block starts once every produce in flight has finished (its command is
        in the log).  Commands wait at the gate (within their deadline), none is refused."""
        loop = asyncio.get_running_loop()
        self._open.clear()
        self.backlog.pause(loop.time())
        try:
            async with self._produced:
                await self._produced.wait_for(lambda: self._producing == 0)
            yield
        finally:
            self.backlog.resume(loop.time())
            self._open.set()

    async def _produce_once(self, raw: bytes, key: str, partition: int) -> int:
        await self._open.wait()
        self._producing += 1
        try:
            meta = await self._producer.send_and_wait(self.cfg.commands_topic, raw, key=key.encode(), partition=partition)
            return meta.offset
        finally:
            self._producing -= 1
            async with self._produced:
                self._produced.notify_all()

    async def _produce(self, raw: bytes, key: str, partition: int, deadline: float) -> int | None:
        """One produce attempt within the deadline: the command's offset, or None when it failed."""
        remaining = deadline - asyncio.get_running_loop().time()
        try:
            return await asyncio.wait_for(self._produce_once(raw, key, partition), max(remaining, 0.01))
        except (KafkaError, OSError, TimeoutError) as e:
            log.warning("cannot produce the command yet", error=repr(e), partition=partition)
            return None

    async def send(self, command) -> None:
        """Produce a command without waiting for its outcome (the watcher's observations)."""
        key = stream_key(command)
        await self._produce_once(encoder.encode(command), key, kafka.partition_for(key, self.cfg.partitions))

    def admit(self, commands: int = 1) -> None:
        """Raise ``Busy`` when ``commands`` more should be refused now (a review checks its leases at once)."""
        self.backlog.check(asyncio.get_running_loop().time(), commands)

    async def submit(self, command, shed: bool = False) -> list[AnyEvent]:
        """Produce the command and wait for its committed outcome, riding over faults until the deadline;
        with ``shed`` (new leases from clients), ``Busy`` at once under overload.  Releases, admin changes and
        the roles' own commands are never shed: they free addresses or have no client to retry.

        A command on the log is decided by whoever owns its partition next, so waiting covers a
        hand-over.  What waiting does not cover: a produce that fails (the broker restarting) and
        a command the broker lost (a log reset).  So a failed produce is tried again, and when
        ``RESEND_AFTER`` seconds pass without an outcome while the partition was projected past the
        command, the same bytes are sent again: the same command id, decided at most once.  A command
        merely queued behind others is not sent again: under overload that would add load."""
        loop = asyncio.get_running_loop()
        if shed:
            self.backlog.check(loop.time())
        ticket = self.backlog.enter(loop.time())
        deadline = loop.time() + self.cfg.request_timeout_seconds
        fut = loop.create_future()
        self._waiters.setdefault(command.command_id, []).append(fut)
        raw, key = encoder.encode(command), stream_key(command)
        partition = kafka.partition_for(key, self.cfg.partitions)
        offset = None
        try:
            while True:
                if offset is None or await outcomes.decided_past(self.db, partition, offset):
                    if offset is not None:
                        log.info("command passed over without an outcome; sending it again", command_id=command.command_id)
                    offset = await self._produce(raw, key, partition, deadline)
                    if offset is None:
                        await asyncio.sleep(min(0.2, max(0.0, deadline - loop.time())))
                wait = min(RESEND_AFTER if offset is not None else 0.0, deadline - loop.time())
                try:
                    events = await asyncio.wait_for(asyncio.shield(fut), max(wait, 0.0))
                    break
                except TimeoutError:
                    events = await self.outcome(command.command_id)
                    if events is not None:
                        break
                    if loop.time() >= deadline:
                        raise OutcomeTimeout(command.command_id) from None
            if events is None:  # too big for a notification: read it
                events = await self.outcome(command.command_id)
            return events
        finally:
            self.backlog.leave(ticket)
            waiters = self._waiters.get(command.command_id)
            if waiters and fut in waiters:
                waiters.remove(fut)
                if not waiters:
                    del self._waiters[command.command_id]
