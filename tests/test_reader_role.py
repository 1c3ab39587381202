"""ipam_reader, the role admins use from psql: the documented views, and nothing else."""

from __future__ import annotations

import asyncpg
import pytest

from ipam.adapters.postgres.migrations import migrate


@pytest.fixture
async def as_reader(database):
    await migrate(database)
    conn = await asyncpg.connect(database)
    await conn.execute("SET ROLE ipam_reader")
    yield conn
    await conn.close()


async def test_the_reader_reads_every_view(as_reader):
    views = [r["table_name"] for r in await as_reader.fetch(
        "SELECT table_name FROM information_schema.views WHERE table_schema = 'ipam' ORDER BY 1")]
    assert {"mac_leases", "pool_usage", "history", "mac_conflicts", "mac_collisions"} <= set(views)
    for view in views:
        await as_reader.fetch(f"SELECT * FROM ipam.{view} LIMIT 1")


@pytest.mark.parametrize("sql", [
    "SELECT * FROM ipam_store.mac_leases",
    "SELECT * FROM ipam_store.ledger",
    "DELETE FROM ipam.mac_leases",
    "INSERT INTO ipam.mac_leases (mac, pool, namespace, vm, vm_uid, interface, static, since) "
    "VALUES ('02:00:00:00:00:01', 'p', 'n', 'v', 'u', 'i', false, now())",
    "UPDATE ipam.mac_leases SET vm = 'x'",
    "CREATE TABLE ipam.mine (x int)",
])
async def test_the_reader_cannot_write_or_read_raw_tables(as_reader, sql):
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await as_reader.execute(sql)
