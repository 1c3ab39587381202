"""Events are a public API: schemas/ must be current and backward compatible with every version of
each schema ever committed, following the rules of docs/events.md#schema-evolution: no field or tag
removed, renamed or retyped, new fields only with defaults, unions only grow, no struct (nested ones
included) forbids unknown fields, so a consumer built on an older schema reads newer records."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import jsonschema
import msgspec
import pytest

from ipam.domain.commands import COMMAND_TYPES, LEASE_COMMANDS, LeaseMac
from ipam.domain.events import EVENT_TYPES, LEASE_EVENTS, MacLeased, encoder
from ipam.domain.kinds import KINDS, Kind, Owner
from ipam.domain.topic_records import EventRecord, record_decoder
from ipam.schemas import generate, render

ROOT = Path(__file__).resolve().parents[1]


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
    """What in ``new`` breaks a producer or consumer written for ``old`` (docs/events.md#schema-evolution)."""
    problems = []
    new_objects = _objects(new)
    for name, n in new_objects.items():
        if n.get("additionalProperties") is False:
            problems.append(f"{name}: forbids unknown fields (a consumer on this schema would refuse newer records)")
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


def test_schemas_dir_is_current():
    stale = [rel for rel, doc in generate().items()
             if not (ROOT / "schemas" / rel).exists() or (ROOT / "schemas" / rel).read_text() != render(doc)]
    assert not stale, f"run `ipam schemas export` (or make schemas): stale {stale}"


def _history(rel: str) -> list[tuple[str, dict]]:
    assert shutil.which("git") and (ROOT / ".git").exists(), "the compatibility check needs git and the repository history"
    path = f"schemas/{rel}"
    revs = subprocess.run(["git", "-C", str(ROOT), "log", "--format=%H", "--", path], capture_output=True,
                          text=True).stdout.split()
    out = []
    for rev in revs:
        shown = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:{path}"], capture_output=True, text=True)
        if shown.returncode == 0:
            out.append((rev[:10], json.loads(shown.stdout)))
    return out


@pytest.mark.parametrize("rel", sorted(generate()))
def test_backward_compatible_with_every_committed_version(rel):
    current = generate()[rel]
    problems = [f"{rev}: {p}" for rev, old in _history(rel) for p in compatibility_problems(old, current)]
    assert not problems


def test_the_checker_catches_breaking_changes():
    base = {"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "integer"}}, "required": ["a"]}
    assert compatibility_problems(base, {**base, "properties": {"a": {"type": "string"}}})  # removed
    assert compatibility_problems(base, {**base, "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}})  # changed
    assert compatibility_problems(base, {**base, "properties": {**base["properties"], "c": {"type": "string"}},
                                         "required": ["a", "c"]})  # new without default
    widened = {**base, "properties": {**base["properties"], "c": {"type": "string", "default": ""}}}
    assert not compatibility_problems(base, widened)
    union = {"type": "object", "properties": {"e": {"anyOf": [{"$ref": "#/$defs/A"}],
                                                     "discriminator": {"mapping": {"A": "#/$defs/A"}}}}}
    grown = {"type": "object", "properties": {"e": {"anyOf": [{"$ref": "#/$defs/A"}, {"$ref": "#/$defs/B"}],
                                                     "discriminator": {"mapping": {"A": "#/$defs/A", "B": "#/$defs/B"}}}}}
    assert not compatibility_problems(union, grown)  # a tagged union may gain members
    assert compatibility_problems(grown, union)  # but never lose one
    assert compatibility_problems(base, {**base, "additionalProperties": False})  # nor start refusing unknown fields


def test_real_records_validate_against_the_published_schema():
    owner = Owner(namespace="ns", vm="vm", vm_uid="uid", interface="eth0")
    rec = EventRecord(partition=1, epoch=2, seq=3, source_offset=4, last=True,
                      event=MacLeased(command_id="c", at=5, pool="p", mac="02:00:00:00:00:01", owner=owner))
    schema = json.loads((ROOT / "schemas" / "event-record.json").read_text())
    jsonschema.validate(msgspec.json.decode(msgspec.json.encode(rec)), schema)
    cmd = json.loads((ROOT / "schemas" / "commands" / "LeaseMac.json").read_text())
    jsonschema.validate(msgspec.json.decode(encoder.encode(LeaseMac(command_id="c", at=1, pool="p", owner=owner))), cmd)
    with pytest.raises(jsonschema.ValidationError):
        bad = msgspec.json.decode(msgspec.json.encode(rec))
        bad["event"]["mac"] = "02-00-00-00-00-01"
        jsonschema.validate(bad, schema)


def _structs(kind: type, seen: set) -> set:
    """Every struct a message is made of, nested ones included."""
    if not (isinstance(kind, type) and issubclass(kind, msgspec.Struct)) or kind in seen:
        return seen
    seen.add(kind)
    for field in msgspec.structs.fields(kind):
        for inner in getattr(field.type, "__args__", ()) + (field.type,):
            for leaf in getattr(inner, "__args__", ()) + (inner,):
                _structs(leaf, seen)
    return seen


def test_no_message_or_nested_struct_forbids_unknown_fields():
    structs = set()
    for kind in (*COMMAND_TYPES, *EVENT_TYPES, EventRecord):
        _structs(kind, structs)
    assert {s.__name__ for s in structs} >= {"Owner", "SubnetSpec", "ObservedInterface", "ObservedAddresses"}
    assert [s.__name__ for s in structs if s.__struct_config__.forbid_unknown_fields] == []


def test_a_consumer_on_an_older_schema_reads_a_record_that_gained_fields():
    """What a newer ipam may write: new fields at every level, with defaults.  Today's decoder is the
    older consumer: it must read the record, ignore what it does not know, and keep the rest."""
    owner = Owner(namespace="ns", vm="vm", vm_uid="uid", interface="eth0")
    rec = msgspec.json.decode(msgspec.json.encode(EventRecord(
        partition=1, epoch=2, seq=3, source_offset=4, last=True,
        event=MacLeased(command_id="c", at=5, pool="p", mac="02:00:00:00:00:01", owner=owner))))
    rec["trace"] = {"id": "abc"}
    rec["event"]["zone"] = "east"
    rec["event"]["owner"]["zone"] = "east"
    read = record_decoder.decode(msgspec.json.encode(rec))
    assert read.event.owner == owner and read.event.mac == "02:00:00:00:00:01"


def _expected_lease_commands(kind: Kind) -> dict[str, list[str]]:
    """Each lease command's fields, as its ``Kind`` says (the shapes the commands were once made from)."""
    s, a = kind.space, kind.address
    return {
        "lease": [s, "owner", kind.requested[0], "pending_until", "dry_run", "receives"],
        "release_owner": [s, "namespace", "vm", "interface", "vm_uid", "workload", "cluster"],
        "release_address": [s, a],
        "observe": [s, "namespace", "vm", "vm_uid", "interfaces", "deleted", "workload", "cluster"],
        "expire": [s, a, "vm_uid"],
    }


def _expected_lease_events(kind: Kind) -> dict[str, list[str]]:
    head = [kind.space, kind.address]
    given = head + [name for name, _ in kind.detail] + ["owner"]
    extra = [name for name, _, _ in kind.extra]
    return {
        "leased": given + ["static", "pending_until", "adopted", *extra],
        "returned": given + extra,
        "offered": given + extra,
        "confirmed": head + ["owner", "previous"] + [name for name, _ in kind.detail] + extra,  # detail added later
        "released": head + ["owner", "quarantined_until", "reason"] + [name for name, _ in kind.detail] + extra,
        "conflict": head + ["owner", "holder"],
    }


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.name)
def test_the_static_lease_structs_say_what_their_kind_says(kind):
    """The lease commands and events are declared statically, a MAC's and an IP's side by side; the ``Kind`` table
    is what the code written once for both kinds reads (field names, tags, what a request asks for, what an
    interface is observed as, the extra fields answers report).  Both must agree, field by field and in order."""
    commands, events = LEASE_COMMANDS[kind], LEASE_EVENTS[kind]
    for role, fields in _expected_lease_commands(kind).items():
        struct = getattr(commands, role)
        assert struct.__struct_config__.tag == kind.tags[role]
        assert list(struct.__struct_fields__) == [*fields, "command_id", "at"], role
    requested = msgspec.structs.fields(commands.lease)[2]
    assert (requested.name, requested.type, requested.default) == kind.requested
    observed = msgspec.structs.fields(commands.observe)[4].type
    assert observed == tuple[kind.observed, ...]
    for role, fields in _expected_lease_events(kind).items():
        struct = getattr(events, role)
        assert struct.__struct_config__.tag.startswith(kind.prefix)
        assert list(struct.__struct_fields__) == [*fields, "command_id", "at"], role
        by_name = {f.name: f for f in msgspec.structs.fields(struct)}
        for name, _, default in kind.extra:  # added later: a default, so older producers' records still decode
            if name in by_name:
                assert by_name[name].default == default, (role, name)
