"""Named, supervised tasks: nothing that runs in the background dies silently.

A task with a ``recover`` step (a role: the allocator, the projector, the watcher) is logged and
restarted after recovering when it fails: its work comes back from Postgres.  A task without
one is essential: when it fails the supervisor records why and ``failed`` is set, and the
process stops (its orchestrator restarts it) rather than running on without it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog

log = structlog.get_logger("ipam.supervisor")
RECOVERY_PAUSE = 1.0  # seconds between a failure and the next recovery attempt


class Supervisor:
    def __init__(self) -> None:
        self.tasks: dict[str, asyncio.Task] = {}
        self.failed = asyncio.Event()
        self.failure: BaseException | None = None

    def spawn(self, name: str, run: Callable[[], Awaitable], recover: Callable[[], Awaitable] | None = None) -> None:
        if name in self.tasks and not self.tasks[name].done():
            raise ValueError(f"task {name} is already running")
        self.tasks[name] = asyncio.get_running_loop().create_task(self._guard(name, run, recover), name=name)

    async def _guard(self, name: str, run: Callable[[], Awaitable], recover: Callable[[], Awaitable] | None) -> None:
        while True:
            try:
                await run()
                return
            except asyncio.CancelledError:
                raise
            except Exception as e:
                if recover is None:
                    log.error("essential task failed; stopping", task=name, error=repr(e))
                    self.failure = e
                    self.failed.set()
                    return
                log.error("task failed; recovering from Postgres and restarting it", task=name, error=repr(e))
            while True:
                await asyncio.sleep(RECOVERY_PAUSE)
                try:
                    await recover()
                    break
                except asyncio.CancelledError:
                    raise
                except Exception as e:
                    log.warning("recovery failed; retrying", task=name, error=repr(e))

    async def cancel(self, *names: str) -> None:
        """Cancel these tasks (all when none is named) and wait for them to end."""
        chosen = [self.tasks[n] for n in (names or list(self.tasks)) if n in self.tasks]
        for task in chosen:
            task.cancel()
        await asyncio.gather(*chosen, return_exceptions=True)

    async def drain(self, names: list[str], timeout: float) -> None:
        """Let these tasks finish on their own (they were asked to stop), cancelling what is left after ``timeout``."""
        chosen = [self.tasks[n] for n in names if n in self.tasks]
        if chosen:
            await asyncio.wait(chosen, timeout=timeout)
        await self.cancel(*names)
