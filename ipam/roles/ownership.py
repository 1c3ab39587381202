"""Taking a partition must not give up: a failure inside a rebalance listener would leave the
partition assigned to us but never loaded (aiokafka logs the error and keeps the assignment)."""

from __future__ import annotations

import asyncio


async def _try_take(role, partition: int, log) -> bool:
    try:
        await role.take(partition)
        return True
    except asyncio.CancelledError:
        raise
    except Exception as e:
        log.warning("cannot take partition yet; retrying", partition=partition, error=repr(e))
        return False


async def take_until_done(role, partition: int, log, first_wait: float = 0.5, max_wait: float = 5.0) -> None:
    """Try once inline; on failure keep trying in the background while the partition stays ours.

    Safe because ``take`` always ends with a seek: records fetched for the partition before
    it is taken are skipped by the role and fetched again after the seek.
    """
    if await _try_take(role, partition, log):
        return

    async def retry() -> None:
        wait = first_wait
        while partition in role.assigned:
            await asyncio.sleep(wait)
            if await _try_take(role, partition, log):
                return
            wait = min(max_wait, wait * 2)

    task = asyncio.get_running_loop().create_task(retry())
    role._background.add(task)
    task.add_done_callback(role._background.discard)
