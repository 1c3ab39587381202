"""The one wall clock commands are stamped with: milliseconds since the epoch.

Commands carry their time (``at``) so that the pure domain decides without reading a clock, and replays
decide the same; whoever makes a command (REST, the webhook, the watcher's roles) takes ``at`` from here."""

from __future__ import annotations

import time


def now_ms() -> int:
    return int(time.time() * 1000)
