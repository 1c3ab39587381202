"""``ipam events tail``: the events topic as people read it (one line per event) or as JSON lines.

What is shown and how lives here, with the CLI; reading the topic is the adapter's
(``adapters/events_topic``: no consumer group, nothing committed, the service's connection settings).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable

from ..adapters.events_topic import EventsTopicError, read_events
from ..config import Config

__all__ = ["EventsTopicError", "describe", "run"]

# fields worth a glance, in the order they are shown; everything is in --json
_SHOWN = ("pool", "network", "mac", "address", "addresses", "code", "reason", "kind", "name")


def describe(partition: int, offset: int, record: dict) -> str:
    """One line: when, where, what, which owner, the fields that matter."""
    event = record.get("event", {})
    at = dt.datetime.fromtimestamp(event.get("at", 0) / 1000, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    owner = event.get("owner") or {}
    who = "/".join(owner[k] for k in ("namespace", "vm", "interface") if owner.get(k))
    details = [f"{k}={event[k]}" for k in _SHOWN if event.get(k) not in (None, "", [], ())]
    if who:
        details.insert(0, f"owner={who}")
    where = f"p{partition}@{offset} e{record.get('epoch')}#{record.get('seq')}"
    return f"{at}  {where:<18} {event.get('type', '?'):<18} {' '.join(details)}  [{event.get('command_id', '')}]"


def run(cfg: Config, last: int, follow: bool, as_json: bool, partitions: list[int] | None,
        write: Callable[[str], None]) -> int:
    """Print the last ``last`` events of each partition (then what comes, with ``follow``); how many were shown."""
    def emit(partition: int, offset: int, record: dict) -> None:
        if as_json:
            write(json.dumps({"partition": partition, "offset": offset, **record}))
        else:
            write(describe(partition, offset, record))

    return read_events(cfg, last, follow, emit, partitions)
