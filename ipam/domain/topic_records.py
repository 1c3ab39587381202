"""Records on the events topic, and which of them count.

A record is a domain event plus where it came from: ``epoch`` fences zombie allocators, ``seq``
orders events inside an epoch, ``source_offset`` is the commands-topic offset the event was
decided from and ``last`` marks the final event of its command (the answer is complete).

Which records count is the fencing rule shared by allocator catch-up and the projector: an
allocator that takes a partition claims a new epoch, reads the events log to its end (offset F)
and records F as the fence of its epoch before producing anything.  A record of epoch e at offset
o is admitted iff o is before the fence of every later epoch: what an older owner (a zombie) wrote
after a newer owner caught up is dropped, so the newer owner never conflicts with writes it could
not have seen.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Mapping

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


class Fences:
    __slots__ = ("_epochs", "_suffix_min", "max_epoch")

    def __init__(self, fences: Mapping[int, int | None]) -> None:
        known = sorted(fences.items())
        self._epochs = [e for e, _ in known]
        self.max_epoch = self._epochs[-1] if known else 0
        # _suffix_min[i]: the smallest fence among epochs[i:]; inf past the end
        suffix: list[float] = [float("inf")] * (len(known) + 1)
        for i in range(len(known) - 1, -1, -1):
            f = known[i][1]
            suffix[i] = suffix[i + 1] if f is None else min(suffix[i + 1], f)
        self._suffix_min = suffix

    def admits(self, epoch: int, offset: int) -> bool:
        return offset < self._suffix_min[bisect_right(self._epochs, epoch)]
