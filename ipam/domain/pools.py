"""MAC pools: named, non-overlapping ranges, optionally bound to namespaces; the pool registry; routing.

A pool gives the lease core (``leasing``) its range as a next-fit region over unicast ordinals and
one slot (an interface holds one MAC per pool).  Every pool is decided on one partition
(``REGISTRY_KEY``) so that one writer checks overlaps; other partitions learn pools as reference data.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field

from .commands import CreatePool
from .events import Event, PoolCreated
from .kinds import MAC
from .leasing import reject
from .mac import MacFormatError, format_mac, parse_mac, parse_unicast, unicast_at, unicast_below, unicast_problem

POOL_NAME_MAX = 63
NAMESPACE_MAX = 63
REGISTRY_KEY = "@registry"


class RangeError(ValueError):
    """A pool range that cannot be used."""


@dataclass(frozen=True, slots=True)
class MacRange:
    """An inclusive range of MACs; only its unicast members are ever handed out (offsets are unicast ordinals)."""

    first: int
    last: int
    lo: int = field(init=False, compare=False)  # unicast ordinal of the first usable address
    size: int = field(init=False, compare=False)  # number of unicast addresses in the range
    slot = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "lo", unicast_below(self.first))
        object.__setattr__(self, "size", unicast_below(self.last + 1) - self.lo)

    def __contains__(self, mac: int) -> bool:
        return self.first <= mac <= self.last

    def overlaps(self, other: MacRange) -> bool:
        return self.first <= other.last and other.first <= self.last

    def __str__(self) -> str:
        return f"{format_mac(self.first)}-{format_mac(self.last)}"

    span = property(lambda self: self.size)
    ident = property(__str__)

    def key_at(self, offset: int) -> int:
        return unicast_at(self.lo + offset)

    def offset_of(self, key: int) -> int:
        return unicast_below(key) - self.lo

    def skip(self, offset: int) -> None:
        return None  # nothing inside a range is excluded


def parse_range(text: str) -> MacRange:
    """Parse ``first-last``; the two ends may use any accepted MAC form."""
    if not isinstance(text, str):
        raise RangeError("expected a string 'first-last'")
    for i, ch in enumerate(text):  # the dash form of a MAC holds dashes too: split where two MACs result
        if ch != "-":
            continue
        try:
            first, last = parse_mac(text[:i].strip()), parse_mac(text[i + 1:].strip())
        except MacFormatError:
            continue
        if first > last:
            raise RangeError(f"range starts at {format_mac(first)}, after its end {format_mac(last)}")
        if first == 0:
            raise RangeError("range includes the all-zero MAC")
        r = MacRange(first, last)
        if r.size == 0:
            raise RangeError(f"range {r} holds only multicast addresses")
        return r
    raise RangeError(f"{text[:80]!r} is not a range 'first-last' of two MAC addresses")


def name_problem(name: object) -> str | None:
    """Pools, networks and namespaces follow Kubernetes naming."""
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
    """A pool definition, the lease core's space for MACs.  ``range`` is None for the external pool,
    which only takes static requests for MACs outside every ranged pool."""

    name: str
    range: MacRange | None  # what the pool hands out from, decided on its own partition (``SetPoolRange``)
    namespaces: tuple[str, ...] = ()
    default: bool = False
    start: int = 0  # ordinal offset where the allocation cursor begins
    claimed: MacRange | None = None  # what the registry granted it, when wider than ``range`` (a change under way)
    retired: bool = False  # its partition hands out nothing more: being deleted
    kind, slots = MAC, (0,)
    claim = property(lambda self: self.claimed or self.range)  # what no other pool may overlap
    external = property(lambda self: self.range is None)
    allocates = property(lambda self: self.range is not None)
    size = property(lambda self: 0 if self.range is None else self.range.size)
    regions = property(lambda self: () if self.range is None else (self.range,))
    starts = property(lambda self: () if self.range is None else (self.start,))
    slot_of = staticmethod(lambda key: 0)
    slot_name = staticmethod(lambda slot: "")
    detail = extra = staticmethod(lambda key: dict[str, object]())

    def region_of(self, key: int) -> int | None:
        return None if self.range is None else 0

    def problem(self, key: int) -> tuple[str, str] | None:
        if unicast_problem(key):
            return "invalid", f"cannot be held: {unicast_problem(key)}"
        if self.range is not None and key not in self.range:
            return "outside_pool", f"is outside pool {self.name!r} ({self.range})"
        return None

    format = staticmethod(format_mac)
    parse = staticmethod(parse_unicast)
    parse_own = staticmethod(lambda text: int(text.replace(":", ""), 16))  # ipam's own canonical form: fast


def start_offset(name: str, salt: str, size: int) -> int:
    """Deterministic 'random' cursor start: replays must make the same choice."""
    if size <= 0:
        return 0
    digest = hashlib.blake2b(f"{name}\x00{salt}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % size


def pool_from_event(ev: PoolCreated) -> Pool:
    return Pool(name=ev.name, range=None if ev.range is None else parse_range(ev.range), namespaces=tuple(ev.namespaces),
                default=ev.default, start=ev.start)


# --- deciding the registry -------------------------------------------------------------------


def create(pools: Mapping[str, Pool], cmd: CreatePool) -> list[Event]:
    def refuse(code: str, reason: str, field: str) -> list[Event]:
        return reject("pool", cmd, code, reason, field, space=cmd.name)

    problem = name_problem(cmd.name)
    if problem:
        return refuse("invalid", f"pool name {problem}", "name")
    if cmd.name in pools:
        return refuse("exists", f"pool {cmd.name!r} already exists", "name")
    for ns in cmd.namespaces:
        if not ns or len(ns) > NAMESPACE_MAX:
            return refuse("invalid", f"namespace {ns[:80]!r} is not a valid namespace name", "namespaces")
    if len(set(cmd.namespaces)) != len(cmd.namespaces):
        return refuse("invalid", "namespaces lists a namespace twice", "namespaces")
    rng, refusal = _range_of(pools, cmd)
    if refusal:
        return refuse(*refusal)
    for p in pools.values():
        bound = set(p.namespaces).intersection(cmd.namespaces)
        if bound:
            return refuse("conflict", f"namespace {sorted(bound)[0]!r} is already bound to pool {p.name!r}", "namespaces")
        if cmd.default and p.default:
            return refuse("conflict", f"pool {p.name!r} is already the default pool", "default")
    if cmd.default and rng is None:
        return refuse("invalid", "the external pool cannot be the default pool", "default")
    return [PoolCreated(command_id=cmd.command_id, at=cmd.at, name=cmd.name, range=None if rng is None else str(rng),
                        namespaces=tuple(cmd.namespaces), default=cmd.default,
                        start=start_offset(cmd.name, cmd.command_id, 0 if rng is None else rng.size))]


def _range_of(pools: Mapping[str, Pool], cmd: CreatePool) -> tuple[MacRange | None, tuple | None]:
    """The new pool's range, or why it cannot have it: (code, reason, field)."""
    if cmd.external:
        if cmd.range is not None:
            return None, ("invalid", "an external pool has no range", "range")
        other = next((p for p in pools.values() if p.external), None)
        return None, None if other is None else ("exists", f"pool {other.name!r} is already the external pool", "external")
    if cmd.range is None:
        return None, ("invalid", "a range 'first-last' is required (or external: true)", "range")
    try:
        rng = parse_range(cmd.range)
    except RangeError as e:
        return None, ("invalid", str(e), "range")
    overlapping = overlap(pools, rng, None)
    if overlapping is not None:
        return None, ("overlap", f"range {rng} overlaps pool {overlapping.name!r} ({overlapping.claim})", "range")
    return rng, None


def overlap(pools: Mapping[str, Pool], rng: MacRange, besides: str | None) -> Pool | None:
    """A pool (other than ``besides``) whose granted range overlaps ``rng``."""
    return next((p for p in pools.values() if p.name != besides and p.claim is not None and p.claim.overlaps(rng)), None)


def outside_every_range(pools: Mapping[str, Pool], pool: Pool, cmd) -> list[Event]:
    """The external pool takes only MACs that no ranged pool holds: a refusal, or nothing."""
    if pool.range is not None or cmd.mac is None:
        return []
    try:
        mac = parse_unicast(cmd.mac)
    except MacFormatError:
        return []  # the lease core says why
    inside = next((p for p in pools.values() if p.range is not None and mac in p.range), None)
    if inside is None:
        return []
    return reject("pool", cmd, "wrong_pool", f"{format_mac(mac)} is inside pool {inside.name!r}; lease it from there", "mac")


# --- routing a request to a pool -------------------------------------------------------------


class RoutingError(ValueError):
    """A request that cannot be routed to a pool; ``code`` and ``field`` as a decider refusal has them."""

    def __init__(self, code: str, field: str, reason: str) -> None:
        super().__init__(reason)
        self.code, self.field, self.reason = code, field, reason


def choose_pool(pools: Mapping[str, Pool], namespace: str, pool: str | None, mac: int | None) -> Pool:
    """The pool named, the one holding the static MAC (else the external pool), the namespace's, or the default."""
    if pool is not None:
        chosen = pools.get(pool)
        if chosen is None or chosen.retired:
            raise RoutingError("unknown_pool", "pool", f"pool {pool!r} does not exist")
        if mac is not None and chosen.range is not None and mac not in chosen.range:
            raise RoutingError("outside_pool", "mac", f"{format_mac(mac)} is outside pool {pool!r} ({chosen.range})")
        return chosen
    pools = {n: p for n, p in pools.items() if not p.retired}
    if mac is not None:
        found = next((p for p in pools.values() if p.range is not None and mac in p.range), None)
        found = found or next((p for p in pools.values() if p.external), None)
        if found is None:
            raise RoutingError("outside_pool", "mac", f"{format_mac(mac)} is outside every pool and there is no external pool")
        return found
    found = next((p for p in pools.values() if namespace in p.namespaces), None) or \
        next((p for p in pools.values() if p.default), None)
    if found is None:
        raise RoutingError("no_pool", "pool",
                           f"no pool given, namespace {namespace!r} is bound to no pool and there is no default pool")
    return found
