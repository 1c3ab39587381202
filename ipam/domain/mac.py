"""MAC addresses as 48-bit integers: strict parsing, canonical formatting, unicast rules."""

from __future__ import annotations

import re

MAC_MAX = (1 << 48) - 1
_MULTICAST_BIT = 1 << 40  # the I/G bit: lowest bit of the first octet

_COLON = re.compile(r"^([0-9a-fA-F]{2})([:-])([0-9a-fA-F]{2})\2([0-9a-fA-F]{2})\2([0-9a-fA-F]{2})\2([0-9a-fA-F]{2})"
                    r"\2([0-9a-fA-F]{2})$")
_DOT = re.compile(r"^([0-9a-fA-F]{4})\.([0-9a-fA-F]{4})\.([0-9a-fA-F]{4})$")


class MacFormatError(ValueError):
    """The text is not a MAC address in one of the accepted forms."""


def parse_mac(text: str) -> int:
    """Parse colon (aa:bb:..), dash (aa-bb-..) or dot (aabb.ccdd.eeff) form, any case."""
    if not isinstance(text, str):
        raise MacFormatError("expected a string")
    m = _COLON.match(text)
    if m:
        return int("".join(m.group(1, 3, 4, 5, 6, 7)), 16)
    m = _DOT.match(text)
    if m:
        return int("".join(m.groups()), 16)
    raise MacFormatError(
        f"{text[:40]!r} is not a MAC address (use aa:bb:cc:dd:ee:ff, aa-bb-cc-dd-ee-ff or aabb.ccdd.eeff)"
    )


def format_mac(value: int) -> str:
    """Canonical lower-case colon form."""
    h = f"{value:012x}"
    return f"{h[0:2]}:{h[2:4]}:{h[4:6]}:{h[6:8]}:{h[8:10]}:{h[10:12]}"


def is_multicast(value: int) -> bool:
    return bool(value & _MULTICAST_BIT)


def unicast_problem(value: int) -> str | None:
    """Why this MAC cannot be assigned to an interface, or None when it can."""
    if value == 0:
        return "the all-zero MAC cannot be assigned"
    if value == MAC_MAX:
        return "the broadcast MAC cannot be assigned"
    if is_multicast(value):
        return "multicast MACs (lowest bit of the first octet set) cannot be assigned"
    return None


def parse_unicast(text: str) -> int:
    """A MAC that can be assigned to an interface: parsed, and refused (MacFormatError) if it is not unicast."""
    mac = parse_mac(text)
    problem = unicast_problem(mac)
    if problem:
        raise MacFormatError(f"{format_mac(mac)}: {problem}")
    return mac


# Unicast ordinals: the n-th unicast MAC.  Bit 40 is the multicast bit, so the unicast
# addresses are the blocks [k*2^41, k*2^41 + 2^40).  Working in ordinal space lets a
# pool like 02:00:00:00:00:00-fd:ff:ff:ff:ff:ff be a contiguous run of integers that we
# can walk with a cursor without ever materialising it.
_BLOCK = 1 << 40


def unicast_below(value: int) -> int:
    """How many unicast MACs are strictly smaller than ``value``."""
    return (value >> 41) * _BLOCK + min(value & ((1 << 41) - 1), _BLOCK)


def unicast_at(ordinal: int) -> int:
    """The MAC whose unicast ordinal is ``ordinal``."""
    return ((ordinal >> 40) << 41) | (ordinal & (_BLOCK - 1))
