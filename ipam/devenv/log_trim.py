"""Keep the local broker fast: swap its topics for empty ones once Postgres has projected everything.

The local broker (Tansu, memory only) keeps every record, refuses DeleteRecords, and its fetches
cost time in proportion to the records a partition holds: at 50 requests/s on one pool, REST
latency went from 15 ms to 20 s within five minutes (docs/performance.md, "The local broker").
Postgres is the durable state, so what the broker holds once projected is only history.  When a
partition holds ``IPAM_LOG_TRIM_RECORDS`` records, the trimmer holds new commands back at the bus,
waits until every command produced was decided and every event produced was projected, deletes and
creates both topics, and starts a new log generation of every partition at offset 0: the same
path a broker restart takes (continuity.py), but planned, with nothing in flight to lose.

Only for a broker nobody else reads, worked by this process alone: ``trimmer_for`` turns it on for a local
broker ipam started on this machine, with the API, allocator and projector in one
process, and refuses it anywhere else (on Apache Kafka topic deletion is asynchronous: a topic created again
during it could take writes that vanish).  It lives beside the local broker, not among the roles: it reaches
them only through the quiesce interface of ``PartitionRole`` (``read_to``, ``busy``, ``quiesced``,
``resume_in_new_log``) and the bus through ``held``; an import-linter contract keeps roles, API and adapters
from importing it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import structlog

from .. import telemetry
from ..adapters import kafka, topics
from ..adapters.bus import CommandBus
from ..adapters.postgres.ownership import PartitionRow, read_partitions, reset_log
from ..config import Config, ConfigError
from ..roles.partitioned import PartitionRole
from .broker import started_here

log = structlog.get_logger("ipam.log_trim")

LOCAL_TRIM_RECORDS = 2000  # IPAM_LOG_TRIM_RECORDS on the local broker the service starts (docs/performance.md)

DRAIN_SECONDS = 0.5  # first hold on new commands while waiting for the pipeline to drain (~40 ms when idle)
LONGEST_DRAIN_SECONDS = 4.0  # the hold doubles after each drain that did not finish, up to this (below the
# webhook's 8 s deadline), so a machine slower than the first hold still trims.  Not what failed the soak's
# drains (a commands topic left with 4 partitions: topics.recreate_topics); after that fix one drain in 14
# minutes missed its 0.5 s (docs/performance.md, "The soak on the local broker")
FIRST_BACKOFF, LONGEST_BACKOFF = 5.0, 60.0  # after drains that did not finish: doubling, so a slow pipeline
# is held back seldom (a soak that kept failing 2 s drains every 7 s collapsed under its own holds)


class LogTrimmer:
    """``decider`` works the commands topic (the allocator), ``projector`` the events topic."""

    def __init__(self, cfg: Config, db, bus: CommandBus, decider: PartitionRole, projector: PartitionRole,
                 records: int) -> None:
        self.cfg, self.db, self.bus, self.decider, self.projector = cfg, db, bus, decider, projector
        self.records = records
        self.trims = 0
        self._not_before = 0.0
        self._backoff = FIRST_BACKOFF
        self.drain_seconds = DRAIN_SECONDS  # how long the next drain may hold new commands
        self.blocked_by = ""  # what the last drain that did not finish was waiting for
        self._one_at_a_time = asyncio.Lock()

    async def step(self) -> bool:
        """Trim when some partition holds ``records`` records and the roles are working; True if it did."""
        async with self._one_at_a_time:
            return await self._step()

    async def _step(self) -> bool:
        if time.monotonic() < self._not_before or not (self.decider.ready and self.projector.ready):
            return False
        # how far the roles read is how many records a partition holds (end offsets under-report on this broker)
        read = [*self.decider.read_to().values(), *self.projector.read_to().values()]
        if max(read, default=0) < self.records:
            return False
        started = time.perf_counter()
        async with self.bus.held():
            rows = await self._drained(time.monotonic() + self.drain_seconds)
            if rows is None:
                self._not_before = time.monotonic() + self._backoff
                log.warning("local broker log not trimmed: the pipeline did not drain in time; trying again later",
                            drain_seconds=self.drain_seconds, waiting_for=self.blocked_by, retry_in_s=self._backoff)
                self._backoff = min(LONGEST_BACKOFF, self._backoff * 2)
                self.drain_seconds = min(LONGEST_DRAIN_SECONDS, self.drain_seconds * 2)
                return False
            self._backoff = FIRST_BACKOFF
            async with contextlib.AsyncExitStack() as quiet:
                for role in (self.decider, self.projector):
                    await quiet.enter_async_context(role.quiesced())
                await topics.recreate_topics(self.cfg, [self.cfg.commands_topic, self.cfg.events_topic])
                await self._new_generations(rows)
                for role in (self.decider, self.projector):  # before new commands come: nothing new to skip
                    await role.resume_in_new_log()
        self.trims += 1
        telemetry.log_trims.inc()
        log.info("local broker log trimmed", records=max(read), trims=self.trims,
                 held_ms=round((time.perf_counter() - started) * 1000, 1))
        return True

    async def _drained(self, deadline: float) -> dict[int, PartitionRow] | None:
        """The partition rows once every command in the log was decided and every event projected, or None
        at the deadline.  The decider's positions say what it decided, Postgres what was projected, and a
        fetch at those positions that comes back empty proves nothing is left (commands are held at the bus,
        so neither log grows once the decider is idle with nothing to read)."""
        partitions = list(range(self.cfg.partitions))
        while time.monotonic() < deadline:
            decided = self.decider.read_to()
            busy = self.decider.busy()
            if busy is not None:
                self.blocked_by = busy
            elif len(decided) < len(partitions):
                self.blocked_by = f"partitions not worked here: {sorted(set(partitions) - set(decided))}"
            else:
                async with self.db.acquire() as conn:
                    rows = await read_partitions(conn, partitions)
                positions = {(self.cfg.commands_topic, p): decided[p] for p in partitions} | \
                            {(self.cfg.events_topic, p): rows[p].events_offset for p in partitions if p in rows}
                empty = await kafka.nothing_at(self.cfg, positions, timeout=max(0.05, deadline - time.monotonic()))
                if len(rows) == len(partitions) and empty:
                    return rows
                self.blocked_by = {None: "fetches the broker did not answer in time",
                                   False: "records not yet decided or projected"}.get(empty, "partition rows missing")
            await asyncio.sleep(0.01)
        return None

    async def _new_generations(self, rows: dict[int, PartitionRow]) -> None:
        reason = f"local broker log trimmed: every record was projected (IPAM_LOG_TRIM_RECORDS={self.records})"
        async with self.db.acquire() as conn:
            for partition, row in rows.items():
                while await reset_log(conn, partition, row, events_start=0, commands_start=0, reason=reason) is None:
                    row = (await read_partitions(conn, [partition]))[partition]  # moved (a prune, a beat): look again


def trimmer_for(cfg: Config, db, bus: CommandBus | None, decider: PartitionRole | None, projector: PartitionRole | None, *,
                broker_started: bool) -> LogTrimmer | None:
    """The trimmer a service should run, or None; ``broker_started``: the service started the local broker itself.

    Only on a broker only this process uses (the local one it started, or one IPAM_LOG_TRIM_RECORDS names as such
    and ipam started on this machine), and only with the bus, the allocator and the projector in one process.
    Any other broker is refused (ConfigError): swapping topics there could lose writes."""
    records = cfg.log_trim_records
    if records is None:
        records = LOCAL_TRIM_RECORDS if broker_started else 0
    if records <= 0:
        return None
    if not broker_started and not (cfg.kafka_bootstrap and started_here(cfg.kafka_bootstrap)):
        raise ConfigError(f"IPAM_LOG_TRIM_RECORDS={records}: {cfg.kafka_bootstrap} is not a local broker ipam "
                          "started on this machine; trimming deletes and creates its topics, which only such a "
                          "broker allows (Apache Kafka keeps its log short by DeleteRecords instead)")
    if bus is None or decider is None or projector is None:
        if cfg.log_trim_records is not None:
            raise ConfigError(f"IPAM_LOG_TRIM_RECORDS={records} needs the api, allocator and projector roles in one "
                              "process (ipam serve, or --role all)")
        log.info("the local broker's log is not trimmed: this process does not run every role")
        return None
    log.info("trimming the broker's log once projected", records=records)
    return LogTrimmer(cfg, db, bus, decider, projector, records)
