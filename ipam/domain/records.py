"""The shape of a record on the events topic: a domain event plus where it came from.

``epoch`` fences zombie allocators, ``seq`` orders events inside an epoch,
``source_offset`` is the commands-topic offset the event was decided from and
``last`` marks the final event of its command (the caller's answer is complete).
"""

from __future__ import annotations

import msgspec
from msgspec import Struct

from .events import AnyEvent


class EventRecord(Struct, kw_only=True, frozen=True):
    partition: int
    epoch: int
    seq: int
    source_offset: int
    last: bool
    event: AnyEvent
    schema_version: int = 1


record_decoder = msgspec.json.Decoder(EventRecord)
