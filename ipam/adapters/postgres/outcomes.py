"""Command outcomes: the answer to each command, written by the projector with the events it applied.

The table is also the dedupe store behind retries (a client's command id answered after a restart)
and the fallback of a waiter whose notification was missed.  Callers waiting for an answer are
told by NOTIFY, delivered when the batch commits.
"""

from __future__ import annotations

import msgspec
import structlog

from ...domain.events import AnyEvent, event_decoder

log = structlog.get_logger("ipam.outcomes")
NOTIFY_CHANNEL = "ipam_outcomes"
PRUNE_BATCH = 10000
_NOTIFY_LIMIT = 7000  # Postgres caps a NOTIFY payload at 8000 bytes


async def write(conn, partition: int, outcomes: dict[str, list], complete: set[str]) -> None:
    if not outcomes:
        return
    ids = list(outcomes)
    await conn.execute(
        """INSERT INTO ipam_store.command_outcomes (command_id, partition, events, complete, decided_at)
           SELECT u.id, $1, u.events::jsonb, u.complete, now()
           FROM unnest($2::text[], $3::text[], $4::boolean[]) AS u(id, events, complete)
           ON CONFLICT (command_id) DO UPDATE
           SET events = ipam_store.command_outcomes.events || EXCLUDED.events, complete = EXCLUDED.complete
           WHERE NOT ipam_store.command_outcomes.complete""",
        partition, ids, [msgspec.json.encode(outcomes[i]).decode() for i in ids], [i in complete for i in ids])


async def notify(conn, outcomes: dict[str, list], complete: set[str]) -> None:
    """Tell waiting API processes; delivered on commit.  Big answers send only the id (they re-read)."""
    chunk: list = []
    size = 2
    for cid in complete:
        item: list = [cid, outcomes[cid]]
        encoded = msgspec.json.encode(item)
        if len(encoded) > _NOTIFY_LIMIT:
            item, encoded = [cid, None], msgspec.json.encode([cid, None])
        if size + len(encoded) + 1 > _NOTIFY_LIMIT:
            await conn.execute("SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, msgspec.json.encode(chunk).decode())
            chunk, size = [], 2
        chunk.append(item)
        size += len(encoded) + 1
    if chunk:
        await conn.execute("SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, msgspec.json.encode(chunk).decode())


_RAW_EVENTS = msgspec.json.Decoder(list[msgspec.Raw])
_RAW_NOTICE = msgspec.json.Decoder(list[tuple[str, list[msgspec.Raw] | None]])


def decode(raws: list[msgspec.Raw] | bytes | str) -> list[AnyEvent]:
    """An outcome as the event union.  An event of a type this version does not know (written by a newer allocator
    during an upgrade: the union only grows) is left out of the answer and logged, not an error: the rest of the
    outcome still answers the request, as it did when outcomes were read as plain JSON."""
    events = []
    for raw in raws if isinstance(raws, list) else _RAW_EVENTS.decode(raws):
        try:
            events.append(event_decoder.decode(raw))
        except msgspec.ValidationError as e:
            log.warning("an outcome holds an event this version does not know; left out", error=str(e))
    return events


def decode_notice(payload: str) -> list[tuple[str, list[AnyEvent] | None]]:
    """A NOTIFY payload: (command id, its events, or None when too big to send: read them)."""
    return [(cid, None if raws is None else decode(raws)) for cid, raws in _RAW_NOTICE.decode(payload)]


async def read(db, command_ids: list[str]) -> dict[str, list[AnyEvent]]:
    """Committed outcomes of several commands in one round trip (absent ids are left out; an id holding U+0000,
    which Postgres text cannot hold, was never stored)."""
    command_ids = [c for c in command_ids if "\x00" not in c]
    if not command_ids:
        return {}
    rows = await db.fetch("SELECT command_id, events::text FROM ipam_store.command_outcomes "
                          "WHERE complete AND command_id = ANY($1::text[])", command_ids)
    return {r["command_id"]: decode(r["events"]) for r in rows}


async def read_prefixed(db, key: str) -> list[list[AnyEvent]]:
    """Outcomes of the commands one request fanned out to (ids ``key/<space>``)."""
    if "\x00" in key:
        return []
    rows = await db.fetch("SELECT events::text FROM ipam_store.command_outcomes WHERE complete AND left(command_id, $2) = $1",
                          key + "/", len(key) + 1)
    return [decode(r["events"]) for r in rows]


async def prune(conn, retention_hours: float) -> int:
    """Forget answers older than the retention (the dedupe store is bounded in time)."""
    status = await conn.execute(
        """DELETE FROM ipam_store.command_outcomes WHERE command_id IN (
               SELECT command_id FROM ipam_store.command_outcomes
               WHERE decided_at < now() - make_interval(secs => $1) LIMIT $2)""",
        retention_hours * 3600, PRUNE_BATCH)
    return int(status.split()[-1])


async def decided_past(db, partition: int, offset: int) -> bool:
    """Has the projection of this partition gone past this commands offset?  Then a command there with no
    outcome was lost (a log reset) or decided by a fenced writer, and sending it again is the way on."""
    decided = await db.fetchval("SELECT commands_offset FROM ipam_store.partitions WHERE partition = $1", partition)
    return decided is not None and decided > offset
