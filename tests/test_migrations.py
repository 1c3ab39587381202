"""The squashed schema (migrations/001_schema.sql) is what migrations 001-009 made, whichever road a
database took: a fresh one runs the squash; one that ran the old chain (from git history) records it
without running it; one part-way through the old chain is refused with what to do."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import asyncpg
import pytest

from ipam.adapters.postgres.migrations import SchemaOutOfDate, check_current, migrate
from ipam.devenv import client_binary
from ipam.domain.events import EVENT_TYPES

from .harness import create_database, drop_database

ROOT = Path(__file__).resolve().parents[1]
OLD = "c58f928"  # the last commit with migrations 001-009 as files
OLD_CHAIN = ["001_mac_pipeline", "002_duplicate_detection", "003_record_hash", "004_kubevirt", "005_vmi_collisions",
             "006_reader_role", "007_ip_networks", "008_writer_role", "009_partitions_view"]
NOTES = ["ZombieEventDropped", "DuplicateEventDropped", "PoisonEvent", "LogReset"]


async def _run_old_chain(dsn: str, versions: list[str]) -> None:
    """Apply old migrations as the old runner did: each file once, recorded in public.ipam_migrations."""
    assert shutil.which("git") and (ROOT / ".git").exists(), "the squash check needs git and the repository history"
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("CREATE TABLE public.ipam_migrations (version text PRIMARY KEY, "
                           "applied_at timestamptz NOT NULL DEFAULT now())")
        for version in versions:
            sql = subprocess.run(["git", "-C", str(ROOT), "show", f"{OLD}:migrations/{version}.sql"], capture_output=True,
                                 text=True, check=True).stdout
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute("INSERT INTO public.ipam_migrations (version) VALUES ($1)", version)
    finally:
        await conn.close()


def _schema(dsn: str) -> str:
    dump = subprocess.run([client_binary("pg_dump"), "--schema-only", "-N", "public", dsn], capture_output=True, text=True,
                          check=True).stdout
    lines = [line for line in dump.splitlines() if line and not line.startswith(("--", "SET ", "SELECT pg_catalog", "\\"))]
    text = "\n".join(lines)
    start = text.index("CREATE VIEW ipam.history AS")  # written anew (each event's word once): compared by its rows
    return text[:start] + text[text.index(";", start) + 1:]


async def _history(dsn: str) -> list[tuple[str, str]]:
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            for i, tag in enumerate([t.__struct_config__.tag for t in EVENT_TYPES] + NOTES):
                for body in ('{}', '{"adopted": true}', '{"pending_until": 5}', '{"created": false}'):
                    await conn.execute("INSERT INTO ipam_store.ledger (generation, partition, epoch, seq, at, type, command_id, "
                                       "body) VALUES (1, 0, 1, $1, now(), $2, 'c', $3::jsonb)", i, tag, body)
            rows = await conn.fetch("SELECT h.what, g.type FROM ipam.history h JOIN ipam_store.ledger g USING (id) ORDER BY id")
            return [tuple(r) for r in rows]
    finally:
        await conn.close()


@pytest.fixture
async def databases(backends):
    made = [await create_database(backends.postgres_dsn) for _ in range(2)]
    yield made
    for dsn in made:
        await drop_database(backends.postgres_dsn, dsn)


async def test_the_squash_makes_the_schema_the_old_chain_made(databases):
    squashed, chained = databases
    assert await migrate(squashed) == ["001_schema", "002_workloads", "003_catalog_version", "004_pool_changes", "005_clusters",
                                     "006_partition_leases"]
    await _run_old_chain(chained, OLD_CHAIN)
    # 001 is recorded, not run (it would fail on the tables the chain made); what follows it runs
    assert await migrate(chained) == ["001_schema", "002_workloads", "003_catalog_version", "004_pool_changes", "005_clusters",
                                     "006_partition_leases"]
    assert _schema(squashed) == _schema(chained)
    assert await _history(squashed) == await _history(chained)
    await check_current(chained)
    assert await migrate(chained) == []


async def test_a_database_part_way_through_the_old_chain_is_refused_with_what_to_do(databases):
    partial = databases[0]
    await _run_old_chain(partial, OLD_CHAIN[:7])
    with pytest.raises(SchemaOutOfDate) as refused:
        await migrate(partial)
    assert "008_writer_role" in str(refused.value) and OLD in str(refused.value)
