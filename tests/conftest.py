"""Fixtures: one set of real backends per session (see ipam.devenv for how they are chosen),
a fresh database and fresh topics for every test that needs them."""

from __future__ import annotations

import aiohttp
import pytest

from ipam import telemetry
from ipam.service import Service

from .backends import select_backends
from .harness import create_database, drop_database, make_config

_SESSION: dict = {}


def pytest_configure(config):
    """Start the session's backends before the header is printed, so the header can name them (and in the
    main thread: the servers' parent-death signal follows the thread that started them)."""
    telemetry.configure_logs("warning", "console")
    if not hasattr(config, "workerinput") and not config.option.collectonly:
        _SESSION["backends"] = select_backends()


def pytest_unconfigure(config):
    chosen = _SESSION.pop("backends", None)
    if chosen is not None:
        chosen.close()


def pytest_report_header(config):
    chosen = _SESSION.get("backends")
    if chosen is not None:
        return [f"backends: {chosen.kind}", f"kafka={chosen.kafka_bootstrap} postgres={chosen.postgres_dsn}"]
    return []


def pytest_sessionstart(session):
    """``-q`` (as ``make test`` runs) hides the header; the backends line is printed all the same, since what
    the suite ran on is part of what it says."""
    chosen = _SESSION.get("backends")
    if chosen is not None and session.config.option.verbose < 0:
        session.config.get_terminal_writer().line(f"backends: {chosen.kind}")


@pytest.fixture(scope="session")
def backends():
    return _SESSION.get("backends") or _SESSION.setdefault("backends", select_backends())


@pytest.fixture(scope="session")
def local_broker():
    """The local broker (Tansu) for the tests of what only it needs, whatever the session's broker is."""
    from .backends import local_broker as start

    broker = start()
    yield broker
    broker.stop()


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
