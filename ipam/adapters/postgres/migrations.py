"""Apply the SQL files in ``migrations/`` in order, once each, under an advisory lock.

A file may start with ``-- replaces: <version> ...``: it squashes those migrations (their files are
gone).  A database that applied all of them records it as applied without running it; one that
applied only some of them cannot be brought up to date from here and is refused, saying how.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

_LOCK = 0x1BA3_0001


def migrations_dir() -> Path:
    here = Path(__file__).resolve()
    for candidate in (here.parents[2] / "_migrations", here.parents[3] / "migrations"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("migrations/ not found next to the ipam package")


async def ensure_database(dsn: str) -> bool:
    """Create the database named in the DSN when it does not exist.  True when created."""
    try:
        conn = await asyncpg.connect(dsn)
    except asyncpg.InvalidCatalogNameError:
        parts = urlsplit(dsn)
        admin = await asyncpg.connect(urlunsplit(parts._replace(path="/postgres")))
        try:
            await admin.execute(f'CREATE DATABASE "{parts.path.lstrip("/")}"')
        except asyncpg.DuplicateDatabaseError:
            return False
        finally:
            await admin.close()
        return True
    await conn.close()
    return False


class SchemaOutOfDate(RuntimeError):
    """The database lacks migrations and this process may not (or cannot) apply them."""


def _replaced(path: Path) -> set[str]:
    head = path.read_text().split("\n", 1)[0]
    return set(head.removeprefix("-- replaces:").split()) if head.startswith("-- replaces:") else set()


def _pending(done: set[str]) -> list[tuple[Path, bool]]:
    """(file, whether to run it) for every migration the database has not recorded."""
    pending = []
    for path in sorted(migrations_dir().glob("*.sql")):
        replaced = _replaced(path)
        if path.stem in done:
            continue
        if replaced and replaced <= done:
            pending.append((path, False))  # the migrations it squashes made this schema here already
        elif replaced & done:
            raise SchemaOutOfDate(
                f"the database applied {', '.join(sorted(replaced & done))} but not {', '.join(sorted(replaced - done))}, "
                f"which {path.stem} replaces: bring it up to date with ipam at commit c58f928 (`ipam migrate`) first")
        else:
            pending.append((path, True))
    return pending


async def check_current(dsn: str) -> None:
    """For a service that does not migrate (it runs as ipam_writer): refuse to start on an old schema."""
    conn = await asyncpg.connect(dsn)
    try:
        try:
            done = {r["version"] for r in await conn.fetch("SELECT version FROM public.ipam_migrations")}
        except asyncpg.UndefinedTableError:
            done = set()
    finally:
        await conn.close()
    missing = [path.stem for path, run in _pending(done) if run]
    if missing:
        raise SchemaOutOfDate(f"the database lacks migrations {', '.join(missing)}: run `ipam migrate` as the schema owner "
                              "(IPAM_MIGRATE=false keeps the service from applying them itself)")


async def migrate(dsn: str) -> list[str]:
    """Bring the schema up to date; returns the versions applied now."""
    await ensure_database(dsn)
    conn = await asyncpg.connect(dsn)
    applied: list[str] = []
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", _LOCK)
        await conn.execute("CREATE TABLE IF NOT EXISTS public.ipam_migrations (version text PRIMARY KEY, "
                           "applied_at timestamptz NOT NULL DEFAULT now())")
        done = {r["version"] for r in await conn.fetch("SELECT version FROM public.ipam_migrations")}
        for path, run in _pending(done):
            async with conn.transaction():
                if run:
                    await conn.execute(path.read_text())
                await conn.execute("INSERT INTO public.ipam_migrations (version) VALUES ($1)", path.stem)
            applied.append(path.stem)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK)
        await conn.close()
    return applied


async def check_partitions(conn: asyncpg.Connection, partitions: int) -> None:
    """The pool → partition mapping depends on the partition count: refuse to change it silently."""
    stored = await conn.fetchval("INSERT INTO ipam_store.meta (key, value) VALUES ('partitions', $1) "
                                 "ON CONFLICT (key) DO UPDATE SET key = EXCLUDED.key RETURNING value", str(partitions))
    if int(stored) != partitions:
        raise RuntimeError(f"IPAM_PARTITIONS={partitions} but this database was set up with {stored} partitions; "
                           "pools are mapped to partitions by hash, so the count cannot change in place")
