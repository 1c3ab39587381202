"""Loading an allocator's state from Postgres: only applied events count as decided."""

from __future__ import annotations

import datetime as dt

from ipam.adapters.postgres.codecs import connect
from ipam.adapters.postgres.migrations import migrate
from ipam.adapters.postgres.spaces import load_state


async def test_commands_whose_events_were_dropped_are_not_remembered_as_decided(database):
    await migrate(database)
    conn = await connect(database)
    now = dt.datetime.now(dt.UTC)
    try:
        rows = [
            (1, 0, 0, 1, 1, now, "MacLeaseReturned", "applied", "{}"),
            (1, 0, 1, 1, 2, now, "ZombieEventDropped", "zombie", "{}"),
            (1, 0, 2, 1, 3, now, "DuplicateEventDropped", "duplicate", "{}"),
            (1, 0, 3, 1, 4, now, "PoisonEvent", "poison:0:3", "{}"),
            (1, 0, 4, 1, 5, now, "CommandRejected", "rejected", "{}"),
        ]
        await conn.copy_records_to_table(
            "ledger", schema_name="ipam_store", records=rows,
            columns=("generation", "partition", "offset", "epoch", "seq", "at", "type", "command_id", "body"))
        state = await load_state(conn, 0, quarantine_ms=1000, recent_max=100)
    finally:
        await conn.close()
    assert list(state.recent) == ["applied", "rejected"]
