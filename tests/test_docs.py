"""The docs are checked against the code: settings, psql questions, view comments, OpenAPI routes."""

from __future__ import annotations

import re
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from ipam.config import SETTINGS

ROOT = Path(__file__).resolve().parents[1]


def test_every_setting_is_documented_with_its_default():
    text = (ROOT / "docs" / "settings.md").read_text()
    for s in SETTINGS:
        row = next((line for line in text.splitlines() if line.startswith(f"| `{s.env}`")), None)
        assert row, f"{s.env} missing from docs/settings.md"
        assert (s.default or "unset") in row


def test_readme_quickstart_has_exactly_two_commands():
    text = (ROOT / "README.md").read_text()
    block = text.split("## Quickstart", 1)[1].split("```console", 1)[1].split("```", 1)[0]
    assert [line.split()[0:2] for line in block.strip().splitlines()] == [["make", "run"], ["make", "test"]]
    assert (ROOT / ".ci" / "run").read_text().strip().endswith("make test")


@pytest.fixture(scope="module")
async def populated(shared_service):
    base = shared_service.url
    async with aiohttp.ClientSession() as http:
        async def post(path, body):
            async with http.post(base + path, json=body) as r:
                assert r.status in (200, 201), await r.text()
                return await r.json()

        await post("/v1/pools", {"name": "docs", "range": "02:00:00:00:00:00-02:00:00:00:00:ff", "default": True})
        await post("/v1/mac-leases", {"namespace": "prod", "vm": "db-0", "vm_uid": "u0", "interface": "default",
                                      "mac": "02:00:00:00:00:01"})
        await post("/v1/mac-leases", {"namespace": "prod", "vm": "db-0", "vm_uid": "u0", "interface": "storage"})
        async with http.delete(f"{base}/v1/mac-leases/prod/db-0/storage") as r:
            assert r.status == 200
        async with http.post(base + "/v1/mac-leases", json={"namespace": "prod", "vm": "db-1", "vm_uid": "u1",
                                                            "interface": "default", "mac": "02:00:00:00:00:01"}) as r:
            assert r.status == 409
        await post("/v1/networks", {"name": "lab", "subnets": [{"cidr": "10.30.0.0/24", "gateway": "10.30.0.1"}]})
        await post("/v1/ip-leases", {"network": "lab", "namespace": "prod", "vm": "db-0", "vm_uid": "u0",
                                     "interface": "default", "addresses": ["10.30.0.5"]})
    return shared_service


def _sql_blocks(name: str) -> list[str]:
    return re.findall(r"```sql\n(.*?)```", (ROOT / "docs" / name).read_text(), re.S)


@pytest.mark.parametrize("index", range(21))
async def test_psql_questions_run(populated, index):
    blocks = _sql_blocks("psql.md")
    assert len(blocks) == 21
    conn = await asyncpg.connect(populated.cfg.database_url)
    try:
        rows = await conn.fetch(blocks[index])
    finally:
        await conn.close()
    if index in (0, 1, 2, 3, 6, 8, 11, 16, 17, 20):  # questions whose answer the fixture made non-empty
        assert rows, blocks[index]
    if index == 0:
        assert rows[0]["vm"] == "db-0" and rows[0]["interface"] == "default"


async def test_every_view_and_column_has_a_comment(populated):
    conn = await asyncpg.connect(populated.cfg.database_url)
    try:
        missing = await conn.fetch(
            """SELECT c.relname, a.attname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
               JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
               WHERE n.nspname = 'ipam' AND c.relkind = 'v' AND col_description(c.oid, a.attnum) IS NULL""")
        views = await conn.fetch("""SELECT c.relname, obj_description(c.oid) AS d FROM pg_class c
                                    JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'ipam' AND c.relkind = 'v'""")
    finally:
        await conn.close()
    assert not missing
    assert {v["relname"] for v in views} >= {"mac_leases", "pool_usage", "history", "mac_conflicts", "mac_collisions",
                                             "ip_leases", "network_usage", "ip_drift"}
    assert all(v["d"] for v in views)


async def test_openapi_documents_every_route(shared_service):
    async with aiohttp.ClientSession() as http, http.get(shared_service.url + "/openapi.json") as r:
        doc = await r.json()
    assert doc["openapi"].startswith("3.1")
    documented = {(path, method.upper()) for path, ops in doc["paths"].items() for method in ops}
    from ipam.api.app import api_routes, make_app
    from ipam.api.auth import Authenticator

    cfg = shared_service.cfg
    app = make_app(cfg, Authenticator(cfg), api_routes(cfg, None, None, None, dict))
    routes = {(r.resource.canonical, r.method) for r in app.router.routes() if r.method != "HEAD"}
    assert routes == documented
    for ops in doc["paths"].values():
        for op in ops.values():
            for resp in op["responses"].values():
                ref = resp.get("content", {}).get("application/json", {}).get("schema", {}).get("$ref")
                if ref:
                    assert ref.rsplit("/", 1)[1] in doc["components"]["schemas"]


def test_compose_runs_the_kafka_the_tests_run():
    """compose.yaml's broker is the version and the topic settings the suite starts (tests/apache_kafka.py)."""
    import yaml

    from .apache_kafka import kafka_version

    services = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]
    assert services["kafka"]["image"] == f"apache/kafka:{kafka_version()}"
    broker = services["kafka"]["environment"]
    assert broker["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false" and broker["KAFKA_UNCLEAN_LEADER_ELECTION_ENABLE"] == "false"
    ipam = services["ipam"]["environment"]
    assert ipam["IPAM_KAFKA_BROKER"] == "apache-kafka"
    assert int(ipam["IPAM_KAFKA_REPLICATION"]) == broker["KAFKA_DEFAULT_REPLICATION_FACTOR"]
    assert int(ipam["IPAM_KAFKA_MIN_INSYNC_REPLICAS"]) == broker["KAFKA_MIN_INSYNC_REPLICAS"]
    assert kafka_version() in (ROOT / "docs" / "operations.md").read_text()
