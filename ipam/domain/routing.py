"""Which pool a lease request goes to: the one named, the one holding the static MAC,
the namespace's pool, or the default pool."""

from __future__ import annotations

from collections.abc import Mapping

from .mac import format_mac
from .pools import Pool


class RoutingError(ValueError):
    def __init__(self, code: str, field: str, reason: str) -> None:
        super().__init__(reason)
        self.code, self.field, self.reason = code, field, reason


def choose_pool(pools: Mapping[str, Pool], namespace: str, pool: str | None, mac: int | None) -> Pool:
    if pool is not None:
        chosen = pools.get(pool)
        if chosen is None:
            raise RoutingError("unknown_pool", "pool", f"pool {pool!r} does not exist")
        if mac is not None and chosen.range is not None and mac not in chosen.range:
            raise RoutingError("outside_pool", "mac", f"{format_mac(mac)} is outside pool {pool!r} ({chosen.range})")
        return chosen
    if mac is not None:
        for p in pools.values():
            if p.range is not None and mac in p.range:
                return p
        for p in pools.values():
            if p.external:
                return p
        raise RoutingError("outside_pool", "mac", f"{format_mac(mac)} is outside every pool and there is no external pool")
    for p in pools.values():
        if namespace in p.namespaces:
            return p
    for p in pools.values():
        if p.default:
            return p
    raise RoutingError(
        "no_pool", "pool", f"no pool given, namespace {namespace!r} is bound to no pool and there is no default pool"
    )
