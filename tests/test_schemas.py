"""Events are a public API: schemas/ must be current and backward compatible with every
version of each schema ever committed."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import jsonschema
import msgspec
import pytest

from ipam.domain.commands import LeaseMac
from ipam.domain.events import MacLeased, encoder
from ipam.domain.owners import Owner
from ipam.domain.records import EventRecord
from ipam.schemas import compatibility_problems, generate, render

ROOT = Path(__file__).resolve().parents[1]


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
