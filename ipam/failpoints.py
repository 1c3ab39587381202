"""Failpoints: named places where a fault-injection run may make this process die, abruptly, or raise.

Off unless ``IPAM_FAILPOINTS`` is set (``name:probability,...``), and then only in the
processes a test started that way.  A hit logs one line and sends SIGKILL to ourselves:
exactly what ``kill -9`` does, at exactly this point of the pipeline.

Points: ``allocator.before_produce`` (decided, nothing produced), ``allocator.after_produce``
(events on the log, not yet projected), ``projector.mid_batch`` (batch written inside the
transaction, offset not yet stored), ``projector.after_commit`` (committed, in-memory
position not yet advanced).

Raising points (``fault``) raise ``InjectedFault`` instead, so the role's task fails and the
supervisor recovers it inside the process: ``allocator.raise_before_produce`` (decided, state
changed in memory, nothing produced) and ``projector.raise_mid_batch`` (batch written inside the
transaction, which rolls back).
"""

from __future__ import annotations

import os
import random
import signal
import sys


def _parse(text: str) -> dict[str, float]:
    points = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        name, _, prob = item.partition(":")
        points[name] = float(prob or 1)
    return points


_POINTS = _parse(os.environ.get("IPAM_FAILPOINTS", ""))


def hit(name: str) -> None:
    p = _POINTS.get(name)
    if p and random.random() < p:
        sys.stderr.write(f'{{"event": "failpoint hit", "failpoint": "{name}", "level": "warning"}}\n')
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)


class InjectedFault(RuntimeError):
    """Raised by a failpoint: an unexpected exception inside a role's loop."""


raised: dict[str, int] = {}  # raising points hit in this process, by name (tests read it)


def fault(name: str) -> None:
    p = _POINTS.get(name)
    if p and random.random() < p:
        raised[name] = raised.get(name, 0) + 1
        sys.stderr.write(f'{{"event": "failpoint hit", "failpoint": "{name}", "level": "warning"}}\n')
        sys.stderr.flush()
        raise InjectedFault(f"failpoint {name}")
