"""ipam_writer, the role the service runs as in production: the whole pipeline works through it,
and it cannot change the schema."""

from __future__ import annotations

import uuid
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from ipam.adapters.postgres.migrations import SchemaOutOfDate, migrate
from ipam.service import Service

from .harness import make_config


@pytest.fixture
async def writer_dsn(database):
    await migrate(database)
    user = f"ipam_t_w{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(database)
    await conn.execute(f'CREATE ROLE "{user}" LOGIN IN ROLE ipam_writer')
    await conn.close()
    parts = urlsplit(database)
    yield urlunsplit(parts._replace(netloc=f"{user}@{parts.hostname}:{parts.port}"))
    conn = await asyncpg.connect(database)
    await conn.execute(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{user}'")
    await conn.execute(f'DROP ROLE "{user}"')
    await conn.close()


async def test_the_service_runs_as_the_writer_role(backends, writer_dsn, http):
    cfg = make_config(backends.kafka_bootstrap, writer_dsn, migrate=False)
    async with Service(cfg) as svc:
        await svc.wait_ready()
        async with http.post(svc.url + "/v1/pools", json={"name": "w", "range": "02:10:00:00:00:00-02:10:00:00:00:ff",
                                                          "namespaces": ["team"]}) as r:
            assert r.status == 201, await r.text()
        lease = {"namespace": "team", "vm": "vm1", "vm_uid": "u1", "interface": "default"}
        async with http.post(svc.url + "/v1/mac-leases", json=lease) as r:
            assert r.status == 201, await r.text()
            mac = (await r.json())["lease"]["mac"]
        async with http.post(svc.url + "/v1/networks", json={"name": "net", "subnets": [{"cidr": "10.7.0.0/29"}]}) as r:
            assert r.status == 201, await r.text()
        async with http.post(svc.url + "/v1/ip-leases", json={"network": "net", **lease}) as r:
            assert r.status == 201, await r.text()
        async with http.delete(svc.url + "/v1/mac-leases/team/vm1") as r:
            assert r.status == 200, await r.text()
        async with http.get(svc.url + "/metrics") as r:
            assert r.status == 200
    conn = await asyncpg.connect(writer_dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM ipam.history WHERE mac = $1::macaddr", mac) >= 2
        assert await conn.fetchval("SELECT count(*) FROM ipam.ip_leases WHERE network = 'net'") == 1
    finally:
        await conn.close()


@pytest.mark.parametrize("sql", [
    "CREATE TABLE ipam_store.mine (x int)",
    "CREATE TABLE ipam.mine (x int)",
    "DROP TABLE ipam_store.mac_leases",
    "ALTER TABLE ipam_store.ledger ADD COLUMN x int",
    "TRUNCATE ipam_store.ledger",
    "DROP VIEW ipam.mac_leases",
    "DELETE FROM public.ipam_migrations",
])
async def test_the_writer_cannot_change_the_schema(writer_dsn, sql):
    conn = await asyncpg.connect(writer_dsn)
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute(sql)
    finally:
        await conn.close()


async def test_a_service_that_does_not_migrate_refuses_an_old_schema(backends, database):
    cfg = make_config(backends.kafka_bootstrap, database, migrate=False)
    with pytest.raises(SchemaOutOfDate, match="run `ipam migrate`"):
        async with Service(cfg):
            pass
