"""MAC pools: named, non-overlapping ranges, optionally bound to namespaces."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from .mac import MacFormatError, format_mac, parse_mac, unicast_below

POOL_NAME_MAX = 63
EXTERNAL = "external"


class RangeError(ValueError):
    """A pool range that cannot be used."""


@dataclass(frozen=True, slots=True)
class MacRange:
    """An inclusive range of MACs; only its unicast members are ever handed out."""

    first: int
    last: int
    lo: int = field(init=False, compare=False)  # unicast ordinal of the first usable address
    size: int = field(init=False, compare=False)  # number of unicast addresses in the range

    def __post_init__(self) -> None:
        # derived once: evolve needs both for every lease event
        object.__setattr__(self, "lo", unicast_below(self.first))
        object.__setattr__(self, "size", unicast_below(self.last + 1) - self.lo)

    def __contains__(self, mac: int) -> bool:
        return self.first <= mac <= self.last

    def overlaps(self, other: MacRange) -> bool:
        return self.first <= other.last and other.first <= self.last

    def __str__(self) -> str:
        return f"{format_mac(self.first)}-{format_mac(self.last)}"


def parse_range(text: str) -> MacRange:
    """Parse ``first-last``; the two ends may use any accepted MAC form."""
    if not isinstance(text, str):
        raise RangeError("expected a string 'first-last'")
    # The dash form of a MAC also contains dashes, so split on the dash that
    # separates two valid MACs.
    for i, ch in enumerate(text):
        if ch != "-":
            continue
        try:
            first, last = parse_mac(text[:i].strip()), parse_mac(text[i + 1 :].strip())
        except MacFormatError:
            continue
        return checked_range(first, last)
    raise RangeError(f"{text[:80]!r} is not a range 'first-last' of two MAC addresses")


def checked_range(first: int, last: int) -> MacRange:
    if first > last:
        raise RangeError(f"range starts at {format_mac(first)}, after its end {format_mac(last)}")
    if first == 0:
        raise RangeError("range includes the all-zero MAC")
    r = MacRange(first, last)
    if r.size == 0:
        raise RangeError(f"range {r} holds only multicast addresses")
    return r


def pool_name_problem(name: object) -> str | None:
    if not isinstance(name, str) or not name:
        return "must be a non-empty string"
    if len(name) > POOL_NAME_MAX:
        return f"must be at most {POOL_NAME_MAX} characters"
    if not all(c.isalnum() and c.isascii() and (c.islower() or c.isdigit()) or c in "-." for c in name):
        return "must use lower-case letters, digits, '-' and '.' (a Kubernetes-style name)"
    if name[0] in "-." or name[-1] in "-.":
        return "must start and end with a letter or digit"
    return None


@dataclass(frozen=True, slots=True)
class Pool:
    """A pool definition.  ``range`` is None for the external pool, which only takes
    static requests for MACs outside every ranged pool."""

    name: str
    range: MacRange | None
    namespaces: tuple[str, ...] = ()
    default: bool = False
    start: int = 0  # ordinal offset where the allocation cursor begins

    @property
    def external(self) -> bool:
        return self.range is None

    @property
    def size(self) -> int:
        return 0 if self.range is None else self.range.size


def start_offset(name: str, salt: str, size: int) -> int:
    """Deterministic 'random' cursor start: replays must make the same choice."""
    if size <= 0:
        return 0
    digest = hashlib.blake2b(f"{name}\x00{salt}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % size
