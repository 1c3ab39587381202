"""docs/asyncapi.yaml: generated from the types, current, valid AsyncAPI 3.0, and describing what
really goes over the topics (real records validate against their message's payload)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import jsonschema
import yaml
from aiokafka import AIOKafkaConsumer, TopicPartition
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from ipam.schemas import ASYNCAPI_PATH, asyncapi, render_asyncapi

ROOT = Path(__file__).resolve().parents[1]
SPEC = json.loads((ROOT / "tests" / "data" / "asyncapi-3.0.0.schema.json").read_text())  # @asyncapi/specs 6.11.1, Apache-2.0


def test_asyncapi_is_current():
    assert ASYNCAPI_PATH.read_text() == render_asyncapi(asyncapi()), "run `ipam schemas export` (or make schemas)"


def test_asyncapi_is_valid_asyncapi_3():
    doc = yaml.safe_load(ASYNCAPI_PATH.read_text())
    errors = [f"{list(e.path)}: {e.message[:200]}" for e in jsonschema.Draft7Validator(SPEC).iter_errors(doc)]
    assert not errors
    broken = {**doc, "operations": {"x": {"action": "publish", "channel": {"$ref": "#/channels/events"}}}}
    assert list(jsonschema.Draft7Validator(SPEC).iter_errors(broken))  # the check can fail


def _refs(node) -> list[str]:
    if isinstance(node, dict):
        return ([node["$ref"]] if isinstance(node.get("$ref"), str) else []) + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def test_every_reference_resolves():
    doc = yaml.safe_load(ASYNCAPI_PATH.read_text())
    for ref in _refs(doc):
        if ref.startswith("#/"):
            node = doc
            for part in ref[2:].split("/"):
                node = node[part]
        else:
            assert (ASYNCAPI_PATH.parent / ref).resolve().is_file(), ref


def _payload_validator(message: dict) -> jsonschema.Validator:
    """The message payload with its file references resolved the way a consumer's tooling would."""
    schemas = {}
    for path in (ROOT / "schemas").rglob("*.json"):
        doc = json.loads(path.read_text())
        uri = "../schemas/" + path.relative_to(ROOT / "schemas").as_posix()
        schemas[uri] = DRAFT202012.create_resource(doc)
    return jsonschema.Draft202012Validator(message["payload"], registry=Registry().with_resources(schemas.items()))


async def test_real_records_match_their_messages(service, http):
    async with http.post(service.url + "/v1/pools", json={"name": "cat", "range": "02:60:00:00:00:00-02:60:00:00:00:ff",
                                                          "default": True}) as r:
        assert r.status == 201
    owner = {"namespace": "team", "vm": "v", "vm_uid": "u", "interface": "eth0"}
    async with http.post(service.url + "/v1/mac-leases", json=owner) as r:
        assert r.status == 201
        mac = (await r.json())["lease"]["mac"]
    async with http.post(service.url + "/v1/mac-leases", json={**owner, "vm": "w", "vm_uid": "uw", "mac": mac}) as r:
        assert r.status == 409  # held: a CommandRejected event
    async with http.delete(service.url + "/v1/mac-leases/team/v") as r:
        assert r.status == 200
    doc = yaml.safe_load(ASYNCAPI_PATH.read_text())
    messages = doc["components"]["messages"]
    consumer = AIOKafkaConsumer(bootstrap_servers=service.cfg.kafka_bootstrap, enable_auto_commit=False)
    await consumer.start()
    seen: dict[str, int] = {}
    try:
        tps = [TopicPartition(service.cfg.events_topic, p) for p in range(service.cfg.partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        for _ in range(20):
            for msgs in (await consumer.getmany(timeout_ms=300)).values():
                for msg in msgs:
                    record = json.loads(msg.value)
                    name = record["event"]["type"] + "Record"
                    _payload_validator(messages[name]).validate(record)
                    assert msg.key is not None and msg.key.decode() in ("cat", "@registry")
                    seen[name] = seen.get(name, 0) + 1
            if {"PoolCreatedRecord", "MacLeasedRecord", "CommandRejectedRecord", "MacReleasedRecord"} <= set(seen):
                break
            await asyncio.sleep(0.1)
    finally:
        await consumer.stop()
    assert {"PoolCreatedRecord", "MacLeasedRecord", "CommandRejectedRecord", "MacReleasedRecord"} <= set(seen), seen
