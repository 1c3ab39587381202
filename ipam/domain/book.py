"""The lease book of one address space (a MAC pool or an IP network): who holds which address.

One implementation for both kinds.  Addresses are integer keys (a MAC's 48 bits; an IP's value
with bit 128 set for IPv6).  A space is made of regions walked by next-fit (a pool has one, its
range; a network one per subnet), and an owner holds at most one address per slot of its space
(a pool has one slot; a network one per address family).

Memory matters here (a partition may hold millions of leases): the VM index maps a VM name (the
string the Owner already holds) to the key itself, or to a tuple of keys for VMs with several;
namespaces are told apart through ``by_key``.  A dict per VM used to take most of a lease's bytes.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Protocol

from .kinds import Kind, Owner, binds, reserves, supersedes


class Region(Protocol):
    """A run of ``span`` offsets next-fit walks, ``size`` of which can be handed out (a MAC range, a subnet):
    ``key_at(offset)``, ``offset_of(key)``, ``skip(offset)`` (past an excluded run, or None), ``slot`` (the slot
    its addresses fill), ``ident`` (what names it across redefinitions).  Implemented by ``pools.MacRange`` and
    ``ip.Subnet``; the type checker holds both to this shape."""

    @property
    def span(self) -> int: ...
    @property
    def size(self) -> int: ...
    @property
    def slot(self) -> int: ...
    @property
    def ident(self) -> str: ...
    def key_at(self, offset: int) -> int: ...
    def offset_of(self, key: int) -> int: ...
    def skip(self, offset: int) -> int | None: ...


class Space(Protocol):
    """What the lease core needs of a pool or a network (``pools.Pool``, ``networks.Network``): ``name``,
    ``kind``, ``regions``, ``slots``, ``starts`` (next-fit's first offset per region), ``allocates`` (False: only
    addresses asked for by name), ``slot_of(key)``, ``slot_name(slot)``, ``region_of(key)``, ``problem(key)``
    ((code, reason) when the key cannot be held there), ``detail(key)`` and ``extra(key)`` (the further fields of
    a lease event: ``Kind.detail``, ``Kind.extra``),
    ``format(key)``, ``parse(text)`` (people's spelling; ValueError naming the problem) and ``parse_own(text)``
    (ipam's canonical text, fast).  The type checker holds both to this shape."""

    @property
    def name(self) -> str: ...
    @property
    def kind(self) -> Kind: ...
    @property
    def regions(self) -> Sequence[Region]: ...
    @property
    def slots(self) -> tuple[int, ...]: ...
    @property
    def starts(self) -> Sequence[int]: ...
    @property
    def allocates(self) -> bool: ...
    def slot_of(self, key: int) -> int: ...
    def slot_name(self, slot: int) -> str: ...
    def region_of(self, key: int) -> int | None: ...
    def problem(self, key: int) -> tuple[str, str] | None: ...
    def detail(self, key: int) -> dict[str, object]: ...
    def extra(self, key: int) -> dict[str, object]: ...
    def format(self, key: int) -> str: ...
    def parse(self, text: str) -> int: ...
    def parse_own(self, text: str) -> int: ...


class Book:
    __slots__ = ("space", "by_key", "vms", "quarantine", "expiries", "pending", "cursors", "counts")

    def __init__(self, space: Space) -> None:
        self.space = space
        self.by_key: dict[int, Owner] = {}
        self.vms: dict[str, int | tuple[int, ...]] = {}
        self.quarantine: dict[int, int] = {}  # key -> until (ms)
        self.expiries: deque[tuple[int, int]] = deque()  # (until, key) in the order they were quarantined
        self.pending: dict[int, int] = {}  # provisional leases: key -> when they lapse (ms)
        self.cursors = list(space.starts)
        self.counts = [0] * len(space.regions)  # live leases per region: exhaustion without a scan

    def _keys(self, vm: str) -> tuple[int, ...]:
        keys = self.vms.get(vm)
        return () if keys is None else (keys,) if isinstance(keys, int) else keys

    def hold(self, key: int, owner: Owner) -> None:
        self.by_key[key] = owner
        keys = self.vms.get(owner.vm)
        if keys is None:
            self.vms[owner.vm] = key
        else:
            self.vms[owner.vm] = ((keys,) if isinstance(keys, int) else keys) + (key,)
        region = self.space.region_of(key)
        if region is not None:
            self.counts[region] += 1

    def drop(self, key: int) -> Owner | None:
        owner = self.by_key.pop(key, None)
        self.pending.pop(key, None)
        if owner is not None:
            rest = tuple(k for k in self._keys(owner.vm) if k != key)
            if not rest:
                self.vms.pop(owner.vm, None)
            else:
                self.vms[owner.vm] = rest[0] if len(rest) == 1 else rest
            region = self.space.region_of(key)
            if region is not None:
                self.counts[region] -= 1
        return owner

    def held_by(self, owner: Owner) -> dict[int, int]:
        """slot -> the key ``owner`` holds there."""
        by_key, slot_of = self.by_key, self.space.slot_of
        return {slot_of(k): k for k in self._keys(owner.vm) if by_key.get(k) == owner}

    def reserved_for(self, owner: Owner) -> dict[int, int]:
        """slot -> the key a provisional holder of this name and interface holds for ``owner`` (``binds``), a
        reservation made for it (``reserves``), or an earlier admission of it that is still pending
        (``supersedes``)."""
        by_key, slot_of, pending = self.by_key, self.space.slot_of, self.pending
        return {slot_of(k): k for k in self._keys(owner.vm)
                if k in pending and (binds(by_key[k], owner) or reserves(by_key[k], owner)
                                     or supersedes(by_key[k], owner))}

    def leases_of(self, namespace: str, vm: str) -> list[tuple[int, Owner]]:
        """Every lease of one VM (all its incarnations), by key."""
        by_key = self.by_key
        return sorted((k, by_key[k]) for k in self._keys(vm) if by_key[k].namespace == namespace)

    def quarantine_until(self, key: int, until: int, at: int) -> None:
        """Keep ``key`` from automatic reuse until ``until``, and forget every entry that expired by ``at``.

        Without the forgetting a pool whose addresses are rarely leased again (2^32 of them and more) kept
        ~100 bytes per release forever.  Entries expire in about the order they were made (release time plus a
        fixed quarantine), so the oldest are looked at first and the pass stops at the first one still running."""
        self.quarantine[key] = until
        self.expiries.append((until, key))
        self.forget_expired(at)

    def forget_expired(self, at: int) -> None:
        expiries, quarantine = self.expiries, self.quarantine
        while expiries and expiries[0][0] <= at:
            until, key = expiries.popleft()
            if quarantine.get(key) == until:  # not quarantined again since, nor leased (leased() drops it)
                del quarantine[key]

    def quarantined(self, at: int, slot: int | None = None) -> int:
        slot_of = self.space.slot_of
        return sum(1 for k, until in self.quarantine.items() if until > at and (slot is None or slot_of(k) == slot))

    def advance(self, key: int) -> None:
        """Next-fit continues after ``key`` (handed out by ``next_free``)."""
        i = self.space.region_of(key)
        if i is not None:
            region = self.space.regions[i]
            self.cursors[i] = (region.offset_of(key) + 1) % region.span

    def next_free(self, slot: int, at: int) -> int | None:
        """Next-fit from each region's cursor, jumping over excluded runs; regions in order.

        At most (leased + quarantined + 1) candidates are tried per region: one of them is free."""
        used, quarantine = self.by_key, self.quarantine
        for i, region in enumerate(self.space.regions):
            if region.slot != slot or self.counts[i] >= region.size:
                continue
            span, key_at, skip = region.span, region.key_at, region.skip
            budget = min(region.size, self.counts[i] + len(quarantine) + 1)
            offset, tried = self.cursors[i] % span, 0
            while tried < budget:
                past = skip(offset)
                if past is not None:
                    offset = past if past < span else 0
                    continue
                key = key_at(offset)
                tried += 1
                if key not in used:
                    until = quarantine.get(key)
                    if until is None or until <= at:
                        return key
                offset = offset + 1 if offset + 1 < span else 0
        return None

    def exhausted(self, slot: int, at: int) -> str:
        space = self.space
        size = sum(r.size for r in space.regions if r.slot == slot)
        used = sum(c for c, r in zip(self.counts, space.regions, strict=True) if r.slot == slot)
        return (f"{space.kind.space} {space.name!r} is exhausted: all {size} {space.slot_name(slot)}addresses are leased or "
                f"quarantined ({used} leased, {self.quarantined(at, slot)} quarantined)")

    def redefine(self, space: Space) -> None:
        """A new definition of the space: cursors carry over for regions that stay; counts are recomputed."""
        old = {r.ident: c for r, c in zip(self.space.regions, self.cursors, strict=True)}
        self.space = space
        self.cursors = [old.get(r.ident, start) for r, start in zip(space.regions, space.starts, strict=True)]
        self.counts = [0] * len(space.regions)
        for key in self.by_key:
            region = space.region_of(key)
            if region is not None:
                self.counts[region] += 1

    def snapshot(self) -> tuple:
        """A comparable picture, for replay-equality checks."""
        return (self.space, dict(self.by_key), self.quarantine.copy(), list(self.cursors), self.pending.copy())
