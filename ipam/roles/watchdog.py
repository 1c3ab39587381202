"""The topic watchdog: the broker checked once a second from every process with partition roles.

A broker that lost its topics (the memory-only one after a restart) gets them back, and after a broker
outage or lost topics every partition is taken again, which checks its log.  A consumer group did that
retake by itself (the group is rejoined after its coordinator went away); with manual assignment a
consumer placed past the end of a new, shorter log can wait there until the new log grows past it,
skipping what came before.  A process that reaches no broker for ``BROKER_SILENCE`` leaves its groups
until one answers.  On the local broker it also runs the log trimmer's steps.  A supervised task of its
own (it was a method of ``Service``, which now only wires the parts together).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

import structlog

from ..adapters.topics import ensure_topics, missing_topics
from ..config import Config

log = structlog.get_logger("ipam.watchdog")
# No answer from any broker this long: this process leaves its groups until one answers (membership.pause), so
# the partitions it holds are worked by a member that reaches the broker.  Above a leader failover on a
# three-node cluster (the others still answer metadata then) and a local broker's restart.
BROKER_SILENCE = 4.0



class Trimmer(Protocol):
    """What the watchdog asks of the local broker's log trimmer (devenv/log_trim.py): one step at a time."""

    async def step(self) -> object: ...


class TopicWatchdog:
    def __init__(self, cfg: Config, roles: list, trimmer: Callable[[], Trimmer | None] = lambda: None) -> None:
        """``roles``: the partition roles of this process; ``trimmer``: the local broker's log trimmer, if any
        (asked each time: it is made after the roles start)."""
        self.cfg, self.roles, self.trimmer = cfg, roles, trimmer

    async def run(self) -> None:
        unreachable = False
        reached = asyncio.get_running_loop().time()
        while True:
            await asyncio.sleep(1.0)
            try:
                missing = await asyncio.wait_for(missing_topics(self.cfg), BROKER_SILENCE)
                if missing:
                    log.warning("topics missing on the broker; creating them again", topics=missing)
                    await ensure_topics(self.cfg)
                if missing or unreachable:
                    for role in self.roles:
                        role.membership.resume()
                        role.retake_all()
                unreachable, reached = False, asyncio.get_running_loop().time()
            except Exception as e:  # the broker is away: the roles wait for it too; look again in a second
                log.warning("cannot check topics", error=repr(e))
                unreachable = True
                if asyncio.get_running_loop().time() - reached >= BROKER_SILENCE:
                    for role in self.roles:  # out of the group: a member that reaches the broker works them meanwhile
                        role.membership.pause()
                continue
            await self._trim()

    async def _trim(self) -> None:
        trimmer = self.trimmer()
        if trimmer is None:
            return
        try:
            await trimmer.step()
        except Exception as e:  # a trim that failed half-way is a log reset: every take checks the log
            log.warning("cannot trim the broker's log", error=repr(e))
            for role in self.roles:
                role.retake_all("after a failed trim")
