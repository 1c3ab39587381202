"""Every change of a pool or a network as the commands its deciders need, in order: what REST's handlers
and the declared configuration (``declared``) both run, so that a change made from a file is the same
change, with the same refusals, as one made over HTTP."""

from __future__ import annotations

from ..adapters.postgres.read_model import ReadModel
from ..clock import now_ms
from ..domain import pool_changes
from ..domain.commands import (
    ChangePool,
    CreatePool,
    DefineNetwork,
    DeleteNetwork,
    DeletePool,
    RetirePool,
    SetPoolRange,
    SubnetSpec,
)
from ..domain.events import NetworkDefined, PoolCreated
from ..domain.mac import format_mac
from ..domain.pools import RangeError, parse_range
from . import models
from .http import ApiError, Gateway, raise_rejection


class SpaceChanges:
    def __init__(self, gateway: Gateway, read: ReadModel) -> None:
        self.gateway, self.read = gateway, read

    async def create_pool(self, cid: str, body: models.PoolRequest) -> PoolCreated:
        """The pool's creation (a retried key answers with the pool it created, whatever the body says now)."""
        events = await self.gateway.submit(CreatePool(
            command_id=cid, at=now_ms(), name=body.name, range=body.range, namespaces=tuple(body.namespaces),
            default=body.default, external=body.external))
        raise_rejection(events)
        return next(e for e in reversed(events) if isinstance(e, PoolCreated))

    async def change_pool(self, name: str, update: models.PoolUpdate, base: str) -> None:
        """Grow, shrink, rebind or (un)default a pool, in the steps ``pool_changes.plan`` gives, one change of a
        pool at a time across replicas.  A registry refusal after a shrink puts the range back as it was."""
        async with self.read.pool_change(name):
            current = await self.live_pool(name)
            try:
                steps = pool_changes.plan(current, update.range)
            except RangeError as e:
                raise ApiError(400, "invalid", str(e), "range") from None
            if update.range is not None and not current.external:
                await self._no_static_macs_in(parse_range(update.range))
            if steps.span is not None and update.range is not None:  # a span is planned for a new range only
                await self._move(name, current, update.range, steps.span, base)
            shrink, grow = steps.shrink, steps.grow
            if shrink is not None:
                await self._step(SetPoolRange(command_id=f"{base}:shrink", at=now_ms(), pool=name, range=shrink))
            registry = ChangePool(command_id=f"{base}:registry", at=now_ms(), name=name, range=update.range,
                                  namespaces=None if update.namespaces is None else tuple(update.namespaces),
                                  default=update.default)
            try:
                await self._step(registry)
            except ApiError:
                if shrink is not None:
                    await self._step(SetPoolRange(command_id=f"{base}:undo", at=now_ms(), pool=name, range=str(current.range)))
                raise
            if grow is not None:
                await self._step(SetPoolRange(command_id=f"{base}:grow", at=now_ms(), pool=name, range=grow))

    async def _no_static_macs_in(self, claim) -> None:
        """A pool may not grow over static MACs the external pool holds: it would hand them out again.  The
        registry refuses it when it sees the external pool's book; this covers the external pool on another
        partition, from Postgres (a static lease racing this check is caught by the unique MAC)."""
        held = await self.read.external_leases(format_mac(claim.first), format_mac(claim.last))
        if held:
            shown = ", ".join(f"{r['mac']} ({r['namespace']}/{r['vm']} {r['interface']})" for r in held)
            raise ApiError(409, "in_use", f"range {claim} covers {shown}, held in the external pool: release it "
                                          "there first (the grown pool would hand it out again)", "range")

    async def _move(self, name: str, current, new: str, span: str, base: str) -> None:
        """A range that shares no address with the old one: claim both and what lies between, move the range on
        the pool's partition (refused while a live lease, reservation or quarantined address is in the old
        range), and leave the narrowing of the claim to the new range to the registry step that follows."""
        where = f"moving pool {name!r} from {current.range} to {new} in one step claims {span} first"
        try:
            await self._step(ChangePool(command_id=f"{base}:span", at=now_ms(), name=name, range=span))
        except ApiError as e:
            raise ApiError(e.status, e.code, f"{where}: {e.message}", "range") from None
        try:
            await self._step(SetPoolRange(command_id=f"{base}:move", at=now_ms(), pool=name, range=new, move=True))
        except ApiError:
            await self._step(ChangePool(command_id=f"{base}:unspan", at=now_ms(), name=name, range=str(current.range)))
            raise

    async def delete_pool(self, name: str, base: str) -> None:
        """Retire the pool on its partition (refused while it holds leases), then remove it from the registry."""
        async with self.read.pool_change(name):
            await self.live_pool(name, retired_ok=True)
            await self._step(RetirePool(command_id=f"{base}:retire", at=now_ms(), pool=name))
            await self._step(DeletePool(command_id=f"{base}:delete", at=now_ms(), name=name))

    async def live_pool(self, name: str, retired_ok: bool = False):
        current = (await self.read.catalog()).pools.get(name)
        if current is None or (current.retired and not retired_ok):
            raise ApiError(404, "unknown_pool", f"pool {name!r} does not exist", "name")
        return current

    async def define_network(self, cid: str, name: str, body, create_only: bool, source: str = "api") -> NetworkDefined:
        events = await self.gateway.submit(DefineNetwork(
            command_id=cid, at=now_ms(), name=name,
            subnets=tuple(SubnetSpec(cidr=s.cidr, gateway=s.gateway, exclude=tuple(s.exclude)) for s in body.subnets),
            dns=tuple(body.dns), attachments=tuple(body.attachments), create_only=create_only, source=source))
        raise_rejection(events)
        return next(e for e in reversed(events) if isinstance(e, NetworkDefined))

    async def delete_network(self, cid: str, name: str) -> None:
        await self._step(DeleteNetwork(command_id=cid, at=now_ms(), name=name))

    async def _step(self, command) -> None:
        raise_rejection(await self.gateway.submit(command))
