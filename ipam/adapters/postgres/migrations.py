"""Apply the SQL files in ``migrations/`` in order, once each, under an advisory lock."""

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
        name = parts.path.lstrip("/")
        admin = await asyncpg.connect(urlunsplit(parts._replace(path="/postgres")))
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        except asyncpg.DuplicateDatabaseError:
            return False
        finally:
            await admin.close()
        return True
    await conn.close()
    return False


class SchemaOutOfDate(RuntimeError):
    pass


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
    missing = [p.stem for p in sorted(migrations_dir().glob("*.sql")) if p.stem not in done]
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
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS public.ipam_migrations (version text PRIMARY KEY, "
            "applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM public.ipam_migrations")}
        for path in sorted(migrations_dir().glob("*.sql")):
            version = path.stem
            if version in done:
                continue
            async with conn.transaction():
                await conn.execute(path.read_text())
                await conn.execute("INSERT INTO public.ipam_migrations (version) VALUES ($1)", version)
            applied.append(version)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK)
        await conn.close()
    return applied


async def check_partitions(conn: asyncpg.Connection, partitions: int) -> None:
    """The pool → partition mapping depends on the partition count: refuse to change it silently."""
    row = await conn.fetchrow(
        "INSERT INTO ipam_store.meta (key, value) VALUES ('partitions', $1) "
        "ON CONFLICT (key) DO UPDATE SET key = EXCLUDED.key RETURNING value",
        str(partitions),
    )
    if int(row["value"]) != partitions:
        raise RuntimeError(
            f"IPAM_PARTITIONS={partitions} but this database was set up with {row['value']} partitions; "
            "pools are mapped to partitions by hash, so the count cannot change in place"
        )
