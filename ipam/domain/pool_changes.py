"""Changing and deleting MAC pools, with one writer for every fact.

Two writers are involved, each the only one for what it decides: the registry partition decides
what range each pool *claims* (no two claims overlap) and its namespaces and default flag; the
pool's own partition decides what range it *hands out from* (it alone knows the leases).  The
invariant is "hands out ⊆ claims", kept by the order of the steps (``plan``): a pool grows on the
registry first and then on its partition; it shrinks on its partition first (refused while live
leases lie outside) and then on the registry; a pool is retired on its partition, then deleted
from the registry.  Each writer reads what the other decided from the projection, which the API
waits for between steps, and refuses a step taken out of order.  The API runs the steps of one pool
one change at a time (docs/rest.md#changing-a-pool).
"""

from __future__ import annotations

import dataclasses

from .commands import ChangePool, DeletePool, RetirePool, SetPoolRange
from .events import Event, PoolChanged, PoolDeleted, PoolRangeSet, PoolRetired
from .kinds import MAC
from .leasing import named, reject
from .pools import NAMESPACE_MAX, MacRange, Pool, RangeError, overlap, parse_range, start_offset


def _refuse(cmd, code: str, reason: str, field: str | None = None, name: str | None = None) -> list[Event]:
    return reject("pool", cmd, code, reason, field, space=name or getattr(cmd, "name", None) or cmd.pool)


def _live(state, name: str) -> dict:
    book = state.books[MAC].get(name)
    return {} if book is None else book.by_key


# --- the registry -----------------------------------------------------------------------------


def change(state, cmd: ChangePool) -> list[Event]:
    pools = state.pools
    current = pools.get(cmd.name)
    if current is None or current.retired:
        return _refuse(cmd, "unknown_pool", f"pool {cmd.name!r} does not exist", "name")
    namespaces = current.namespaces if cmd.namespaces is None else tuple(cmd.namespaces)
    default = current.default if cmd.default is None else cmd.default
    for ns in namespaces:
        if not ns or len(ns) > NAMESPACE_MAX:
            return _refuse(cmd, "invalid", f"namespace {ns[:80]!r} is not a valid namespace name", "namespaces")
    if len(set(namespaces)) != len(namespaces):
        return _refuse(cmd, "invalid", "namespaces lists a namespace twice", "namespaces")
    for p in pools.values():
        bound = set(p.namespaces).intersection(namespaces) if p.name != cmd.name else set()
        if bound:
            return _refuse(cmd, "conflict", f"namespace {sorted(bound)[0]!r} is already bound to pool {p.name!r}",
                           "namespaces")
        if default and p.default and p.name != cmd.name:
            return _refuse(cmd, "conflict", f"pool {p.name!r} is already the default pool", "default")
    if default and current.external:
        return _refuse(cmd, "invalid", "the external pool cannot be the default pool", "default")
    claim = current.claim
    if cmd.range is not None:
        claim = _new_range(current, cmd)
        if isinstance(claim, list):
            return claim
        other = overlap(pools, claim, cmd.name)
        if other is not None:
            return _refuse(cmd, "overlap", f"range {claim} overlaps pool {other.name!r} ({other.claim})", "range")
        if not _within(current.range, claim):
            return _refuse(cmd, "in_use", f"pool {cmd.name!r} still hands out {current.range}, which {claim} does not "
                                          "hold: shrink it on its partition first (PATCH /v1/pools does both)", "range")
        static = external_holdings(state, claim)
        if static:
            return _refuse(cmd, "in_use", f"range {claim} covers {static}: release it from the external pool first "
                                          "(the grown pool would hand it out again)", "range")
    return [PoolChanged(command_id=cmd.command_id, at=cmd.at, name=cmd.name, range=None if claim is None else str(claim),
                        namespaces=namespaces, default=default)]


def external_holdings(state, claim: MacRange) -> str:
    """The external pool's leases (static MACs outside every ranged pool) that ``claim`` covers, for people;
    empty when none.  The external pool's book is here when it shares the registry's partition (and in a
    single-state model); the API checks Postgres too, for the external pool on another partition."""
    for name, pool in state.pools.items():
        book = state.books[MAC].get(name) if pool.external else None
        covered = [] if book is None else [key for key in book.by_key if key in claim]
        if book is not None and covered:
            return named(book, covered)
    return ""


def delete(state, cmd: DeletePool) -> list[Event]:
    current = state.pools.get(cmd.name)
    if current is None:
        return _refuse(cmd, "unknown_pool", f"pool {cmd.name!r} does not exist", "name")
    if not current.retired:
        return _refuse(cmd, "in_use", f"pool {cmd.name!r} is still in service on its partition: retire it first "
                                      "(DELETE /v1/pools does both)", "name")
    return [PoolDeleted(command_id=cmd.command_id, at=cmd.at, name=cmd.name)]


# --- the pool's partition ---------------------------------------------------------------------


def set_range(state, cmd: SetPoolRange) -> list[Event]:
    pool = state.pools.get(cmd.pool)
    if pool is None or pool.retired:
        return _refuse(cmd, "unknown_pool", f"pool {cmd.pool!r} does not exist", "pool")
    rng = _new_range(pool, cmd)
    if isinstance(rng, list):
        return rng
    if not _within(rng, pool.claim):
        return _refuse(cmd, "not_granted", f"range {rng} reaches past what pool {cmd.pool!r} was granted ({pool.claim}): "
                                           "grow the pool on the registry first (PATCH /v1/pools does both)", "range")
    what = "moving" if cmd.move else "shrinking"
    outside = [k for k in _live(state, cmd.pool) if k not in rng]
    if outside:
        book = state.books[MAC][cmd.pool]
        return _refuse(cmd, "in_use", f"{what} pool {cmd.pool!r} to {rng} would orphan {len(outside)} live lease(s): "
                                      f"{named(book, outside)}", "range")
    book = state.books[MAC].get(cmd.pool)
    quarantined = [] if book is None else [k for k, until in book.quarantine.items() if k not in rng and until > cmd.at]
    if cmd.move and quarantined:
        shown = ", ".join(pool.format(k) for k in sorted(quarantined)[:5])
        return _refuse(cmd, "in_use", f"{what} pool {cmd.pool!r} to {rng} would drop {len(quarantined)} quarantined "
                                      f"address(es) still kept from reuse: {shown}; move it once their quarantine "
                                      "has run out, or in steps that overlap", "range")
    dropped = 0 if book is None else sum(1 for k in book.quarantine if k not in rng)
    return [PoolRangeSet(command_id=cmd.command_id, at=cmd.at, pool=cmd.pool, range=str(rng),
                         start=start_offset(cmd.pool, cmd.command_id, rng.size), dropped=dropped)]


def retire(state, cmd: RetirePool) -> list[Event]:
    pool = state.pools.get(cmd.pool)
    if pool is None:
        return _refuse(cmd, "unknown_pool", f"pool {cmd.pool!r} does not exist", "pool")
    live = _live(state, cmd.pool)
    if live:
        return _refuse(cmd, "in_use", f"pool {cmd.pool!r} still holds {len(live)} live lease(s): "
                                      f"{named(state.books[MAC][cmd.pool], live)}", "name")
    return [PoolRetired(command_id=cmd.command_id, at=cmd.at, pool=cmd.pool)]


def _new_range(pool: Pool, cmd) -> MacRange | list[Event]:
    """The range a command asks the pool to have, or its refusal."""
    if pool.external:
        return _refuse(cmd, "invalid", "the external pool has no range", "range")
    try:
        return parse_range(cmd.range)
    except RangeError as e:
        return _refuse(cmd, "invalid", str(e), "range")


def _within(inner: MacRange | None, outer: MacRange | None) -> bool:
    return inner is None or (outer is not None and outer.first <= inner.first and inner.last <= outer.last)


# --- evolve -----------------------------------------------------------------------------------


def changed(state, ev: PoolChanged) -> None:
    pool = state.pools.get(ev.name)
    if pool is not None:
        claim = None if ev.range is None else parse_range(ev.range)
        state.pools[ev.name] = dataclasses.replace(pool, claimed=None if claim == pool.range else claim,
                                                   namespaces=tuple(ev.namespaces), default=ev.default)


def deleted(state, ev: PoolDeleted) -> None:
    state.pools.pop(ev.name, None)
    state.books[MAC].pop(ev.name, None)


def range_set(state, ev: PoolRangeSet) -> None:
    pool = state.pools.get(ev.pool)
    if pool is None:
        return
    rng = parse_range(ev.range)
    pool = state.pools[ev.pool] = dataclasses.replace(pool, range=rng, start=ev.start,
                                                      claimed=None if pool.claim == rng else pool.claim)
    book = state.books[MAC].get(ev.pool)
    if book is not None:
        for key in [k for k in book.quarantine if k not in rng]:
            del book.quarantine[key]
        book.redefine(pool)


def retired(state, ev: PoolRetired) -> None:
    pool = state.pools.get(ev.pool)
    if pool is not None:
        state.pools[ev.pool] = dataclasses.replace(pool, retired=True)
        book = state.books[MAC].get(ev.pool)
        if book is not None:
            book.quarantine.clear()


def merge(mine: Pool | None, stored: Pool, registry_here: bool, pool_here: bool) -> Pool:
    """This partition's copy of a pool, with what the other writer decided taken from the projection: the
    registry decides the claim, namespaces and default; the pool's partition its range, start and retirement.
    A retired pool stored as not retired is a new pool of that name (deleted and made again)."""
    if mine is None or (mine.retired and not stored.retired):
        return stored
    registry, own = (mine if registry_here else stored), (mine if pool_here else stored)
    claim = registry.claim
    return dataclasses.replace(own, namespaces=registry.namespaces, default=registry.default,
                               claimed=None if claim == own.range else claim)


@dataclasses.dataclass(frozen=True)
class RangeSteps:
    """The partition steps of a range change around the registry's.  ``shrink``: the range the partition
    shrinks to first; ``grow``: the range it grows to after.  ``span``: for a move to a range that shares no
    address with the old one, what the registry claims first (from the lowest to the highest address of
    both), so that the partition may move the range inside its claim before the claim is narrowed to the
    new range; hands-out ⊆ claims holds after every step."""

    shrink: str | None = None
    grow: str | None = None
    span: str | None = None


def plan(current: Pool, range_text: str | None) -> RangeSteps:
    if range_text is None or current.range is None:
        return RangeSteps()
    new = parse_range(range_text)
    old = current.range
    if not old.overlaps(new):
        return RangeSteps(span=str(MacRange(min(old.first, new.first), max(old.last, new.last))))
    keep = MacRange(max(old.first, new.first), min(old.last, new.last))
    return RangeSteps(shrink=None if keep == old else str(keep), grow=None if new == keep else str(new))
