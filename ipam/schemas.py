"""JSON Schemas of the topic payloads, generated from the msgspec types into ``schemas/``.

``ipam schemas export`` writes them; ``tests/test_schemas.py`` fails when ``schemas/`` is stale,
and when a change is not backward compatible with any earlier committed version of a schema
(docs/events.md#schema-evolution).
"""

from __future__ import annotations

import json
from pathlib import Path

import msgspec

from .domain.commands import COMMAND_TYPES
from .domain.events import EVENT_TYPES
from .domain.topic_records import EventRecord


def _tag(kind: type[msgspec.Struct]) -> str:
    return str(kind.__struct_config__.tag)  # every event and command has a string tag


def generate() -> dict[str, dict]:
    """Relative path -> schema document."""
    out: dict[str, dict] = {}
    for folder, kinds in (("commands", COMMAND_TYPES), ("events", EVENT_TYPES)):
        for kind in kinds:
            doc = msgspec.json.schema(kind)
            doc["$id"] = f"https://ipam.dev/schemas/{folder}/{_tag(kind)}.json"
            out[f"{folder}/{_tag(kind)}.json"] = doc
    record = msgspec.json.schema(EventRecord)
    record["$id"] = "https://ipam.dev/schemas/event-record.json"
    record["description"] = "A record on the events topic: one event and where it came from."
    out["event-record.json"] = record
    return out


def render(doc: dict) -> str:
    return json.dumps(doc, indent=2, sort_keys=True) + "\n"


def schemas_dir() -> Path:
    here = Path(__file__).resolve()
    for candidate in (here.parent / "_schemas", here.parents[1] / "schemas"):
        if candidate.is_dir():
            return candidate
    return here.parents[1] / "schemas"


def export(target: Path | None = None) -> list[str]:
    target = target or schemas_dir()
    written = []
    for rel, doc in generate().items():
        path = target / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        text = render(doc)
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
            written.append(rel)
    return written


# --- AsyncAPI ------------------------------------------------------------------------------

ASYNCAPI_PATH = Path(__file__).resolve().parents[1] / "docs" / "asyncapi.yaml"
_KAFKA_BINDING = "0.5.0"


def _summary(kind: type) -> str:
    doc = (kind.__doc__ or "").strip()
    return doc.split("\n\n", 1)[0].replace("\n", " ")


def _messages() -> tuple[dict, dict, dict]:
    """Every message of the three topics, and the references of the commands' and the events'."""
    key = {"type": "string", "description": "The pool name (MAC commands), the network name (IP commands), or "
                                            "`@registry` (CreatePool). Kafka's default partitioner (murmur2) maps it."}
    messages: dict[str, dict] = {}
    command_refs, event_refs = {}, {}
    for kind in COMMAND_TYPES:
        tag = _tag(kind)
        messages[tag] = {
            "name": tag, "title": tag, "summary": _summary(kind), "contentType": "application/json",
            "payload": {"$ref": f"../schemas/commands/{tag}.json"},
            "bindings": {"kafka": {"key": key, "bindingVersion": _KAFKA_BINDING}},
        }
        command_refs[tag] = {"$ref": f"#/components/messages/{tag}"}
    for event_type in EVENT_TYPES:
        tag = _tag(event_type)
        name = f"{tag}Record"
        messages[name] = {
            "name": name, "title": tag, "summary": _summary(event_type), "contentType": "application/json",
            "payload": {"allOf": [{"$ref": "../schemas/event-record.json"},
                                  {"type": "object", "properties": {"event": {"$ref": f"../schemas/events/{tag}.json"}}}]},
            "bindings": {"kafka": {"key": {**key, "description": "The key of the command the event was decided from "
                                                                "(absent for events about an undecodable command)."},
                                   "bindingVersion": _KAFKA_BINDING}},
        }
        event_refs[name] = {"$ref": f"#/components/messages/{name}"}
    messages["DeadLetter"] = {
        "name": "DeadLetter", "title": "Dead letter", "contentType": "application/octet-stream",
        "summary": "A record that could not be decoded, copied byte for byte, with the reason in its headers.",
        "headers": {"type": "object", "properties": {
            "ipam-reason": {"type": "string"}, "ipam-source-topic": {"type": "string"},
            "ipam-source-partition": {"type": "string"}, "ipam-source-offset": {"type": "string"}}},
        "payload": {"type": "string", "description": "The original record value (bytes)."},
    }
    return messages, command_refs, event_refs


def asyncapi(partitions: int = 8) -> dict:
    """The AsyncAPI 3.0 document of the three topics, generated from the same types as schemas/ so
    it cannot drift; payloads point at the JSON Schemas in schemas/."""
    from . import __version__

    messages, command_refs, event_refs = _messages()

    def channel(address: str, description: str, refs: dict) -> dict:
        return {"address": address, "description": description, "messages": refs,
                "bindings": {"kafka": {"topic": address, "partitions": partitions, "bindingVersion": _KAFKA_BINDING}}}

    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "ipam commands and events",
            "version": __version__,
            "description": "MAC and IP address management for KubeVirt VMs. Commands are keyed by pool or network, "
                           "so one partition owns each address space; the allocator of a commands partition decides "
                           "them and writes their events to the same partition number of the events topic. "
                           "Ordering, delivery and the epoch rule for consumers: docs/events.md. "
                           "Generated by `ipam schemas export`; do not edit.",
            "license": {"name": "Apache-2.0"},
        },
        "defaultContentType": "application/json",
        "servers": {
            "production": {"host": "kafka.kafka.svc:9092", "protocol": "kafka",
                           "description": "Apache Kafka (IPAM_KAFKA_BOOTSTRAP; SSL/SASL per docs/settings.md)."},
            "local": {"host": "127.0.0.1:9092", "protocol": "kafka",
                      "description": "The memory-only broker `ipam serve` starts when no Kafka is configured."},
        },
        "channels": {
            "commands": channel("ipam.commands", "Commands (IPAM_COMMANDS_TOPIC), keyed by pool, network or @registry. "
                                "Written by the API, the webhook and the watcher; read by the allocators.", command_refs),
            "events": channel("ipam.events", "Events (IPAM_EVENTS_TOPIC), one EventRecord per Kafka record. Partition N "
                              "holds the events decided from commands partition N, in decision order.", event_refs),
            "deadLetters": channel("ipam.dead-letter", "Records that could not be decoded (IPAM_DEAD_LETTER_TOPIC), "
                                   "on the partition they came from.",
                                   {"DeadLetter": {"$ref": "#/components/messages/DeadLetter"}}),
        },
        "operations": {
            "sendCommand": {"action": "send", "channel": {"$ref": "#/channels/commands"},
                            "summary": "Ask for an address change (normally through REST or the webhook)."},
            "receiveEvents": {"action": "receive", "channel": {"$ref": "#/channels/events"},
                              "summary": "Follow what was decided: leases, releases, rejections, drift."},
            "receiveDeadLetters": {"action": "receive", "channel": {"$ref": "#/channels/deadLetters"},
                                   "summary": "Inspect what was skipped and why."},
        },
        "components": {"messages": messages},
    }


def render_asyncapi(doc: dict) -> str:
    import yaml

    header = "# Generated by `ipam schemas export` from ipam/domain/messages.py; do not edit by hand.\n"
    return header + yaml.safe_dump(doc, sort_keys=False, width=120, allow_unicode=True)


def export_asyncapi(path: Path | None = None) -> bool:
    path = path or ASYNCAPI_PATH
    text = render_asyncapi(asyncapi())
    if path.exists() and path.read_text() == text:
        return False
    path.write_text(text)
    return True
