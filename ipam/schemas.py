"""JSON Schemas of the topic payloads, generated from the msgspec types into ``schemas/``.

``ipam schemas export`` writes them; the tests fail when ``schemas/`` is stale, and when
a change is not backward compatible with any earlier committed version of a schema
(a field removed, a type changed, a new field without a default, a tag changed).
"""

from __future__ import annotations

import json
from pathlib import Path

import msgspec

from .domain.messages import COMMAND_TYPES, EVENT_TYPES
from .domain.records import EventRecord


def _tag(kind: type) -> str:
    return kind.__struct_config__.tag


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


def _resolve(doc: dict, node: dict) -> dict:
    ref = node.get("$ref")
    if ref:
        return doc["$defs"][ref.rsplit("/", 1)[-1]]
    return node


def _objects(doc: dict) -> dict[str, dict]:
    """Every object definition in a schema, by name (the top-level one under its title)."""
    defs = dict(doc.get("$defs", {}))
    top = _resolve(doc, doc)
    defs.setdefault("__top__", top)
    return {name: d for name, d in defs.items() if d.get("type") == "object"}


def _widens(old: dict, new: dict) -> bool:
    """Same type, or a tagged union that only gained members (every old tag still means the same)."""
    if json.dumps(old, sort_keys=True) == json.dumps(new, sort_keys=True):
        return True
    if set(old) != set(new) or "anyOf" not in old:
        return False
    old_map = old.get("discriminator", {}).get("mapping", {})
    new_map = new.get("discriminator", {}).get("mapping", {})
    members = {json.dumps(m, sort_keys=True) for m in new["anyOf"]}
    return (all(json.dumps(m, sort_keys=True) in members for m in old["anyOf"])
            and all(new_map.get(tag) == ref for tag, ref in old_map.items())
            and {k: v for k, v in old.items() if k not in ("anyOf", "discriminator")}
            == {k: v for k, v in new.items() if k not in ("anyOf", "discriminator")})


def compatibility_problems(old: dict, new: dict) -> list[str]:
    problems = []
    new_objects = _objects(new)
    for name, o in _objects(old).items():
        n = new_objects.get(name)
        if n is None:
            problems.append(f"{name}: object removed")
            continue
        old_props, new_props = o.get("properties", {}), n.get("properties", {})
        for prop, schema in old_props.items():
            if prop not in new_props:
                problems.append(f"{name}.{prop}: field removed")
            elif not _widens(schema, new_props[prop]):
                problems.append(f"{name}.{prop}: type changed")
        for prop in set(n.get("required", [])) - set(o.get("required", [])):
            problems.append(f"{name}.{prop}: new required field (new fields need a default)")
    return problems
