"""IP addresses as integer keys, and subnets (IPv4, IPv6) with their exclusions and gateway.

An address travels as text (``10.0.0.5``, ``fd00::5``) and lives in memory as an integer key:
its value, with bit 128 set for IPv6 so the two families never collide in one dict.  A subnet
is a next-fit region of the lease core (``book.Region``) and is never materialised: allocation
walks offsets inside ``[lo, hi]`` and jumps over excluded intervals, so a /64 costs as a /24.
Networks (named sets of subnets) are in ``networks``.
"""

from __future__ import annotations

import hashlib
import ipaddress
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from socket import AF_INET, AF_INET6, inet_pton

V6 = 1 << 128
EXCLUDES_MAX = 256
START_SPAN = 1 << 32  # random cursor starts stay within the first 2^32 offsets (JSON-safe, any subnet size)


class NetworkError(ValueError):
    """A network definition that cannot be used; ``field`` names the part of it."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field, self.reason = field, reason


class AddressError(ValueError):
    pass


def leading_zeroes(text: str) -> str | None:
    """Why a dotted IPv4 spelling with a leading zero in an octet (``00192.00168.1.0/24``) is refused, or None.

    Refused on purpose: some parsers read ``010`` as octal 8, others (Whereabouts) as decimal 10, so the same
    text means different addresses to different tools; Python's ``ipaddress`` refuses it too, without saying
    why.  The reason names the decimal reading, which is what the user most likely meant."""
    head, slash, tail = text.strip().partition("/")
    quad = head.rsplit(":", 1)[-1]  # the dotted part of an IPv4-mapped IPv6 address too
    octets = quad.split(".")
    if len(octets) != 4 or not all(o.isdigit() for o in octets) or not any(len(o) > 1 and o[0] == "0" for o in octets):
        return None
    decimal = ".".join(str(int(o)) for o in octets)
    meant = head[: len(head) - len(quad)] + decimal + slash + tail
    return f"{text.strip()[:80]!r} has leading zeroes in an IPv4 octet: leading zeroes are ambiguous (octal to some " \
           f"tools, decimal to others); write {meant} if that is what you mean"


def parse_address(text: object) -> int:
    """An address in any spelling ``ipaddress`` accepts -> its key."""
    if not isinstance(text, str):
        raise AddressError("expected an IP address as a string")
    if "%" in text:  # ipaddress keeps a zone aside and int() drops it: refused, not silently lost
        raise AddressError(f"{text[:80]!r} carries a zone (scope id after '%'); ipam leases addresses without zones")
    if (zeroes := leading_zeroes(text)) is not None:
        raise AddressError(zeroes)
    try:
        addr = ipaddress.ip_address(text.strip())
    except ValueError:
        raise AddressError(f"{text[:80]!r} is not an IPv4 or IPv6 address") from None
    return int(addr) | (V6 if addr.version == 6 else 0)


def family_of(key: int) -> int:
    return 6 if key & V6 else 4


def format_address(key: int) -> str:
    if key & V6:
        return str(ipaddress.IPv6Address(key ^ V6))
    return str(ipaddress.IPv4Address(key))


def canonical(text: str) -> str:
    """An address in its canonical spelling (text that is not an address is returned as it is)."""
    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        return text


def address_of(text: str) -> int:
    """Fast path for addresses we wrote ourselves (events, the database): ``inet_pton`` is C, and
    ``ipaddress`` parsing was a sixth of the projector's time.  Not for user input (see parse_address)."""
    if ":" in text:
        return int.from_bytes(inet_pton(AF_INET6, text), "big") | V6
    return int.from_bytes(inet_pton(AF_INET, text), "big")


@dataclass(frozen=True, slots=True)
class Subnet:
    """One subnet of a network: the usable addresses ``[lo, hi]`` (values, not keys) minus ``excluded``
    (sorted, merged, inclusive intervals, the gateway among them).  ``size`` is what can be handed out."""

    cidr: ipaddress.IPv4Network | ipaddress.IPv6Network
    gateway: int | None  # key
    excluded: tuple[tuple[int, int], ...]
    lo: int
    hi: int
    size: int
    start: int  # offset where the next-fit cursor begins
    _starts: tuple[int, ...] = field(repr=False, compare=False, default=())
    first: int = field(repr=False, compare=False, default=0)  # network and broadcast values: membership is hot
    last: int = field(repr=False, compare=False, default=0)
    cidr_text: str = field(repr=False, compare=False, default="")
    gateway_text: str | None = field(repr=False, compare=False, default=None)  # in lease events (``Network.extra``)

    family = slot = property(lambda self: self.cidr.version)  # an interface holds one address per family of a network
    ident = property(lambda self: self.cidr_text)
    mark = property(lambda self: V6 if self.cidr.version == 6 else 0)
    span = property(lambda self: self.hi - self.lo + 1)

    def key_at(self, offset: int) -> int:
        return (self.lo + offset) | self.mark

    def offset_of(self, key: int) -> int:
        return (key & ~V6) - self.lo

    def skip(self, offset: int) -> int | None:
        end = self.excluded_end(self.lo + offset)
        return None if end is None else end + 1 - self.lo

    def holds(self, key: int) -> bool:
        """Inside the subnet at all (network and broadcast included)."""
        return (key & V6) == self.mark and self.first <= (key & ~V6) <= self.last

    def excluded_end(self, value: int) -> int | None:
        """If ``value`` is excluded, the last value of its excluded interval."""
        i = bisect_right(self._starts, value) - 1
        return self.excluded[i][1] if i >= 0 and value <= self.excluded[i][1] else None

    def why_not(self, key: int) -> str | None:
        """Why an address of this subnet cannot be leased, or None."""
        value = key & ~V6
        if self.cidr.version == 4 and self.cidr.prefixlen <= 30:
            if value == int(self.cidr.network_address):
                return "is the network address"
            if value == int(self.cidr.broadcast_address):
                return "is the broadcast address"
        if self.cidr.version == 6 and self.cidr.prefixlen <= 126 and value == int(self.cidr.network_address):
            return "is the subnet-router anycast address"
        if self.gateway is not None and key == self.gateway:
            return "is the gateway"
        if self.excluded_end(value) is not None:
            return "is excluded"
        return None


def _address_in(text: str, net, field_name: str) -> int:
    try:
        key = parse_address(text)
    except AddressError as e:
        raise NetworkError(field_name, str(e)) from None
    if family_of(key) != net.version or not (int(net.network_address) <= key & ~V6 <= int(net.broadcast_address)):
        raise NetworkError(field_name, f"{text} is outside subnet {net}")
    return key


def _interval(text: str, net, field_name: str) -> tuple[int, int]:
    """One exclusion: an address, ``first-last``, or a CIDR inside the subnet."""
    if not isinstance(text, str) or not text.strip():
        raise NetworkError(field_name, "expected an address, a range 'first-last' or a CIDR")
    text = text.strip()
    if (zeroes := leading_zeroes(text.partition("-")[0])) or (zeroes := leading_zeroes(text.partition("-")[2])):
        raise NetworkError(field_name, zeroes)
    if "/" in text:
        try:
            sub = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise NetworkError(field_name, f"{text[:80]!r} is not a CIDR") from None
        if sub.version != net.version or not sub.subnet_of(net):
            raise NetworkError(field_name, f"{text} is outside subnet {net}")
        return int(sub.network_address), int(sub.broadcast_address)
    if "-" in text:
        first, _, last = text.partition("-")
        lo, hi = _address_in(first, net, field_name) & ~V6, _address_in(last, net, field_name) & ~V6
        if lo > hi:
            raise NetworkError(field_name, f"range {text} starts after it ends")
        return lo, hi
    value = _address_in(text, net, field_name) & ~V6
    return value, value


def _merge(intervals: Iterable[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    merged: list[list[int]] = []
    for lo, hi in sorted(intervals):
        if merged and lo <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    return tuple((a, b) for a, b in merged)


def start_of(network: str, cidr: str, span: int) -> int:
    """Deterministic 'random' cursor start per (network, subnet): replays make the same choice."""
    digest = hashlib.blake2b(f"{network}\x00{cidr}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % min(span, START_SPAN)


def build_subnet(network: str, index: int, cidr: str, gateway: str | None, exclude: Sequence[str]) -> Subnet:
    where = f"subnets[{index}]"
    if not isinstance(cidr, str):
        raise NetworkError(f"{where}.cidr", "expected a CIDR such as 10.0.0.0/24 or fd00::/64")
    if (zeroes := leading_zeroes(cidr)) is not None:
        raise NetworkError(f"{where}.cidr", zeroes)
    try:
        net = ipaddress.ip_network(cidr.strip())
    except ValueError as e:
        try:
            loose = ipaddress.ip_network(cidr.strip(), strict=False)
        except ValueError:
            raise NetworkError(f"{where}.cidr", f"{cidr[:80]!r} is not a CIDR: {e}") from None
        raise NetworkError(f"{where}.cidr", f"{cidr} has host bits set; did you mean {loose}?") from None
    first, last = int(net.network_address), int(net.broadcast_address)
    if net.version == 4:
        lo, hi = (first + 1, last - 1) if net.prefixlen <= 30 else (first, last)
    else:
        lo, hi = (first + 1, last) if net.prefixlen <= 126 else (first, last)
    if len(exclude) > EXCLUDES_MAX:
        raise NetworkError(f"{where}.exclude", f"at most {EXCLUDES_MAX} exclusions per subnet")
    intervals = [_interval(x, net, f"{where}.exclude[{i}]") for i, x in enumerate(exclude)]
    gw = None
    if gateway is not None:
        gw = _address_in(gateway, net, f"{where}.gateway")
        if not lo <= gw & ~V6 <= hi:
            raise NetworkError(f"{where}.gateway", f"{gateway} is the network or broadcast address of {net}")
        intervals.append((gw & ~V6, gw & ~V6))
    clipped = [(max(a, lo), min(b, hi)) for a, b in intervals if b >= lo and a <= hi]
    excluded = _merge(clipped)
    size = hi - lo + 1 - sum(b - a + 1 for a, b in excluded)
    if size <= 0:
        raise NetworkError(f"{where}.exclude", f"nothing of {net} is left to hand out")
    return Subnet(cidr=net, gateway=gw, excluded=excluded, lo=lo, hi=hi, size=size,
                  start=start_of(network, str(net), hi - lo + 1), _starts=tuple(a for a, _ in excluded),
                  first=first, last=last, cidr_text=str(net),
                  gateway_text=None if gw is None else format_address(gw))


