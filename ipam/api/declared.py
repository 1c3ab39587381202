"""Pools and networks declared in a file kept in Git (``IPAM_CONFIG_FILE``; a ConfigMap in a cluster).

The file has two lists, ``pools:`` and ``networks:``, whose entries are the bodies of ``POST /v1/pools``
and ``POST /v1/networks``, and an optional ``delete:`` with the names of pools and networks to remove.
It is reconciled on start and then every ``IPAM_CONFIG_POLL_SECONDS``: what is missing is created, what
differs is changed, with the same commands and refusals as REST (``SpaceChanges``); nothing is deleted unless
``delete:`` names it.  A refusal (a shrink that would orphan leases, an overlap) is logged naming the
entry, kept for ``GET /v1/status`` and counted in ``ipam_config_refusals``; the rest of the file is still
applied, and the refused entry is tried again at the next poll.  Every replica reconciles: command ids
derive from the entry and the catalogue version, so replicas seeing the same file and state send the same
commands and each is decided once.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import time

import msgspec
import structlog
import yaml
from msgspec import Struct

from .. import telemetry
from ..adapters.postgres.read_model import ReadModel
from ..domain.commands import SubnetSpec
from ..domain.errors import ConfigError
from ..domain.networks import build_network
from ..domain.pools import RangeError, parse_range
from . import models
from .http import ApiError
from .space_changes import SpaceChanges

log = structlog.get_logger("ipam.declared")


class Deleted(Struct, forbid_unknown_fields=True):
    pools: list[str] = []
    networks: list[str] = []


class Declared(Struct, forbid_unknown_fields=True):
    """The whole file."""

    pools: list[models.PoolRequest] = []
    networks: list[models.NetworkRequest] = []
    delete: Deleted = msgspec.field(default_factory=Deleted)


def parse(text: str) -> Declared:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"not YAML: {e}") from None
    try:
        return msgspec.convert(data or {}, Declared)
    except msgspec.ValidationError as e:
        raise ConfigError(str(e).replace("`$.", "`")) from None


class DeclaredSpaces:
    def __init__(self, path: str, poll_seconds: float, ops: SpaceChanges, read: ReadModel) -> None:
        self.path, self.poll_seconds, self.ops, self.read = path, poll_seconds, ops, read
        self.status = models.ConfigStatus(file=path)

    async def run(self) -> None:
        while True:
            await self.reconcile_once()
            await asyncio.sleep(self.poll_seconds)

    async def recover(self) -> None:
        """After a failure (Postgres away, say): nothing to restore; the next reconcile reads everything again."""

    @property
    def reconciled(self) -> bool:
        """Tried at least once: a replica is ready when what its file declares has been applied (or refused)."""
        return self.status.applied_at is not None or self.status.error is not None

    async def reconcile_once(self) -> models.ConfigStatus:
        try:
            with open(self.path, encoding="utf-8") as f:
                declared = parse(f.read())
        except (OSError, ConfigError) as e:
            if self.status.error != str(e):
                log.error("declared configuration not applied", file=self.path, error=str(e))
            self.status = models.ConfigStatus(file=self.path, applied_at=self.status.applied_at, error=str(e),
                                       refusals=self.status.refusals)
            return self.status
        refusals: list[models.Refusal] = []
        async for where, step in self._steps(declared):
            try:
                await step
            except ApiError as e:
                refusals.append(models.Refusal(entry=where, code=e.code, reason=e.message, field=e.field))
        known = {(r.entry, r.reason) for r in self.status.refusals}
        for r in refusals:
            if (r.entry, r.reason) not in known:
                log.warning("declared configuration refused", file=self.path, entry=r.entry, code=r.code, reason=r.reason,
                            field=r.field)
        telemetry.config_refusals.set(len(refusals))
        self.status = models.ConfigStatus(file=self.path, applied_at=dt.datetime.now(dt.UTC).isoformat(), refusals=refusals)
        return self.status

    async def _steps(self, declared: Declared):
        """(entry, awaitable) for every entry of the file, in file order; each awaits nothing when in line."""
        catalog = await self.read.catalog()
        # Ids shared by replicas that see the same file and state in the same poll; a new one each poll, so a
        # refusal is decided again once its cause (the leases it named, say) is gone.
        tag = f"{self.read.catalog_version}.{int(time.time() // max(self.poll_seconds, 1.0))}"
        for i, pool in enumerate(declared.pools):
            yield f"pools[{i}] ({pool.name})", self._pool(catalog.pools.get(pool.name), pool, tag)
        for i, network in enumerate(declared.networks):
            yield f"networks[{i}] ({network.name})", self._network(catalog.networks.get(network.name), network, tag)
        for name in declared.delete.pools:
            if name in catalog.pools:
                yield f"delete.pools ({name})", self.ops.delete_pool(name, _cid(tag, "delete-pool", name))
        for name in declared.delete.networks:
            if name in catalog.networks:
                yield f"delete.networks ({name})", self.ops.delete_network(_cid(tag, "delete-network", name), name)

    async def _pool(self, current, body: models.PoolRequest, tag: str) -> None:
        cid = _cid(tag, "pool", msgspec.json.encode(body))
        if current is None:
            try:
                await self.ops.create_pool(cid, body)
            except ApiError as e:
                if e.code != "exists":  # another replica made it first: the next poll compares it
                    raise
            return
        update = pool_update(current, body)
        if update is not None:
            await self.ops.change_pool(body.name, update, cid)

    async def _network(self, current, body: models.NetworkRequest, tag: str) -> None:
        specs = tuple(SubnetSpec(cidr=s.cidr, gateway=s.gateway, exclude=tuple(s.exclude)) for s in body.subnets)
        try:
            wanted = build_network(body.name, specs, body.dns, body.attachments)
        except ValueError:
            wanted = None  # the decider names the field
        if current is None or wanted is None or wanted.spec != current.spec:
            await self.ops.define_network(_cid(tag, "network", msgspec.json.encode(body)), body.name, body,
                                          create_only=False, source="config")


def pool_update(current, body: models.PoolRequest) -> models.PoolUpdate | None:
    """What must change for the pool to be as declared (None: nothing); the external pool has no range."""
    wanted_range = None
    if body.range is not None and current.range is not None:
        try:
            rng = parse_range(body.range)
        except RangeError:
            rng = None  # the decider names the field
        if rng is None or rng != current.claim or rng != current.range:
            wanted_range = body.range
    namespaces = list(body.namespaces) if sorted(body.namespaces) != sorted(current.namespaces) else None
    default = body.default if body.default != current.default else None
    if wanted_range is None and namespaces is None and default is None:
        return None
    return models.PoolUpdate(range=wanted_range, namespaces=namespaces, default=default)


def _cid(tag: str, what: str, content: bytes | str) -> str:
    raw = content if isinstance(content, bytes) else content.encode()
    return f"config:{what}:{tag}:{hashlib.blake2b(raw, digest_size=10).hexdigest()}"
