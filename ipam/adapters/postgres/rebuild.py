"""Replay the ledger into fresh tables and compare them with the live ones.

The ledger is the history; the lease tables are a projection of it.  ``rebuild`` folds the
ledger's events (in projection order, notes skipped) through the domain's ``evolve`` into the
schema ``ipam_rebuild``, then diffs it against ``ipam_store`` with SQL, for every kind of
address alike.  Equal means the projection never lost, duplicated or invented a lease.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import asyncpg

from ...domain.decider import STATE_EVENTS, State, evolve
from ...domain.events import event_decoder
from .tables import OWNER_COLUMNS, TABLES, LeaseTable, ts

CHUNK = 20000
EVENT_TAGS = [t.__struct_config__.tag for t in STATE_EVENTS]  # the events that change state


@dataclass
class RebuildReport:
    events: int
    seconds: float
    leases: int
    quarantined: int
    differences: dict[str, int]

    @property
    def equal(self) -> bool:
        return not any(self.differences.values())


async def _replay(conn: asyncpg.Connection, progress) -> tuple[State, int]:
    total = await conn.fetchval(
        "SELECT count(*) FROM ipam_store.ledger WHERE \"offset\" IS NOT NULL AND type = ANY($1::text[])", EVENT_TAGS)
    state, done, last_id = State(recent_max=1), 0, 0
    while rows := await conn.fetch(
            "SELECT id, body::text FROM ipam_store.ledger WHERE id > $1 AND \"offset\" IS NOT NULL AND type = ANY($2::text[]) "
            "ORDER BY id LIMIT $3", last_id, EVENT_TAGS, CHUNK):
        for row in rows:
            evolve(state, event_decoder.decode(row["body"]))
        last_id, done = rows[-1]["id"], done + len(rows)
        if progress:
            progress(done, total)
    return state, done


def _short(table: str) -> str:
    return table.rsplit(".", 1)[1]


async def _compare(conn, live: str, rebuilt: str) -> int:
    return await conn.fetchval(f"SELECT count(*) FROM (({live} EXCEPT {rebuilt}) UNION ALL ({rebuilt} EXCEPT {live})) d")


async def _check(conn, name: str, columns: list[tuple[str, str]], records: list[tuple], live: str) -> int:
    """Write the rebuilt rows into ipam_rebuild.<name> and count the rows that differ from ``live``."""
    await conn.execute(f"CREATE TABLE ipam_rebuild.{name} ({', '.join(f'{c} {t}' for c, t in columns)})")
    await conn.copy_records_to_table(name, schema_name="ipam_rebuild", records=records)
    return await _compare(conn, live, f"SELECT {', '.join(c for c, _ in columns)} FROM ipam_rebuild.{name}")


async def _check_kind(conn, state: State, t: LeaseTable, diffs: dict[str, int]) -> tuple[int, int]:
    books, kind = state.books[t.kind], t.kind
    types = dict((*t.key, *t.extra, (t.space_column, "text")))
    identity = [(c, types[c]) for c in t.identity]
    has_space = t.space_column in dict(t.key)

    def ident(name: str, key: int) -> tuple:
        return (*t.row_key(name, key), *(() if has_space else (name,)))

    leases = [(*ident(n, k), *(getattr(o, c) for c in OWNER_COLUMNS), k in b.pending)
              for n, b in books.items() for k, o in b.by_key.items()]
    owner_cols = ", ".join(OWNER_COLUMNS)
    diffs[_short(t.leases)] = await _check(
        conn, _short(t.leases), [*identity, *((c, "text") for c in OWNER_COLUMNS), ("pending", "boolean")], leases,
        f"SELECT {', '.join(t.identity)}, {owner_cols}, pending_until IS NOT NULL FROM {t.leases}")
    # Quarantine still running at one instant, on both sides: the books forget expired entries (at their next
    # lease or release), the table keeps rows until the address is leased again.
    cut = await conn.fetchval("SELECT (extract(epoch FROM now()) * 1000)::bigint")
    quarantined = [(*ident(n, k), ts(until)) for n, b in books.items() for k, until in b.quarantine.items() if until > cut]
    diffs[_short(t.quarantine)] = await _check(
        conn, _short(t.quarantine), [*identity, ("until", "timestamptz")], quarantined,
        f"SELECT {', '.join(t.identity)}, until FROM {t.quarantine} WHERE until > to_timestamp({cut} / 1000.0)")
    cursors = [(*t.cursor_of(n, region), cursor) for n, space in state.spaces[kind].items()
               for region, cursor in zip(space.regions, books[n].cursors if n in books else space.starts, strict=True)]
    cursor_cols = [c for c, _ in t.cursor_key]
    diffs[_short(t.cursors)] = await _check(
        conn, _short(t.cursors), [*t.cursor_key, ("cursor", t.cursor_type)], cursors,
        f"SELECT {', '.join(cursor_cols)}, cursor FROM {t.cursors} {t.cursor_filter}")
    return len(leases), len(quarantined)


async def rebuild(conn: asyncpg.Connection, progress: Callable[[int, int], None] | None = None) -> RebuildReport:
    started = time.perf_counter()
    state, done = await _replay(conn, progress)
    diffs: dict[str, int] = {}
    leases = quarantined = 0
    async with conn.transaction():
        await conn.execute("DROP SCHEMA IF EXISTS ipam_rebuild CASCADE; CREATE SCHEMA ipam_rebuild")
        for t in TABLES.values():
            n, q = await _check_kind(conn, state, t, diffs)
            leases, quarantined = leases + n, quarantined + q
    return RebuildReport(events=done, seconds=time.perf_counter() - started, leases=leases, quarantined=quarantined,
                         differences=diffs)
