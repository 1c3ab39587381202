"""Fixtures: one set of real backends per session (see ipam.devenv for how they are chosen),
a fresh database and fresh topics for every test that needs them."""

from __future__ import annotations

import aiohttp
import pytest

from ipam import telemetry
from ipam.service import Service

from .backends import select_backends
from .harness import create_database, drop_database, make_config


def pytest_configure(config):
    telemetry.configure_logs("warning", "console")


@pytest.fixture(scope="session")
def backends():
    chosen = select_backends()
    print(f"\nbackends: {chosen.kind} kafka={chosen.kafka_bootstrap} postgres={chosen.postgres_dsn}")
    yield chosen
    chosen.close()


@pytest.fixture
async def database(backends):
    dsn = await create_database(backends.postgres_dsn)
    yield dsn
    await drop_database(backends.postgres_dsn, dsn)


@pytest.fixture
def config(backends, database):
    return make_config(backends.kafka_bootstrap, database)


@pytest.fixture
async def service(config):
    async with Service(config) as svc:
        await svc.wait_ready()
        yield svc


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture(scope="module")
async def shared_service(backends):
    """One service for a whole module, for tests that do not disturb each other."""
    dsn = await create_database(backends.postgres_dsn)
    try:
        async with Service(make_config(backends.kafka_bootstrap, dsn)) as svc:
            await svc.wait_ready()
            yield svc
    finally:
        await drop_database(backends.postgres_dsn, dsn)
