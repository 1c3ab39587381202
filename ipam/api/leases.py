"""REST for leases of every kind: ``/v1/mac-leases`` and ``/v1/ip-leases``, written once.

Lease, list, release a VM's (or one interface's) leases, release the lease holding an address.
What differs between kinds is a ``LeaseRest`` description: paths, bodies, how a request finds
its space (a MAC request is routed to a pool; an IP request names its network) and what it asks
for by name.  Answers come after the projection committed the command.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from msgspec import Struct

from ..adapters.postgres.read_model import ReadModel
from ..clock import now_ms
from ..config import Config
from ..domain.catalog import Catalog
from ..domain.commands import LEASE_COMMANDS
from ..domain.events import LEASE_EVENTS, AnyEvent
from ..domain.ip import AddressError, format_address, parse_address
from ..domain.kinds import IP, MAC, Kind, Owner
from ..domain.mac import MacFormatError, format_mac, parse_unicast
from ..domain.pools import RoutingError, choose_pool
from . import models
from .http import STATUS, ApiError, Gateway, command_id, decode_body, fanout_id, limit_of, raise_rejection, reply
from .openapi import WORKLOADS, Route


def _iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat()


def canonical_mac(text: str, field: str) -> str:
    try:
        return format_mac(parse_unicast(text))
    except MacFormatError as e:
        raise ApiError(400, "invalid", str(e), field) from None


def canonical_ip(text: str, field: str) -> str:
    try:
        return format_address(parse_address(text))
    except AddressError as e:
        raise ApiError(400, "invalid", str(e), field) from None


def check_same_owner(events: list[AnyEvent], owner: Owner, kinds: tuple[type, ...]) -> None:
    """A stored outcome answered for this request's key must be this owner's: a key reused for another owner's
    lease is refused (422) instead of answering with someone else's lease."""
    for ev in events:
        o: Owner | None = getattr(ev, "owner", None) if isinstance(ev, kinds) else None
        if o and (o.namespace, o.vm, o.vm_uid, o.interface) != (owner.namespace, owner.vm, owner.vm_uid, owner.interface):
            raise ApiError(422, "key_reused", "this Idempotency-Key (or command_id) was used for another owner's lease; "
                                              "use a new one", "Idempotency-Key")


def workload_of(request: web.Request) -> str | None:
    """The ``workload`` query parameter: one of the kinds of holder, or absent."""
    workload = request.query.get("workload")
    if workload is not None and workload not in WORKLOADS:
        raise ApiError(400, "invalid", f"workload {workload[:40]!r} is not one of {', '.join(WORKLOADS)}", "workload")
    return workload


def _route_mac(body: models.LeaseRequest | models.ReservationRequest, catalog: Catalog) -> str:
    mac = None if body.mac is None else parse_unicast(canonical_mac(body.mac, "mac"))
    try:
        return choose_pool(catalog.pools, body.namespace, body.pool, mac).name
    except RoutingError as e:
        raise ApiError(STATUS.get(e.code, 422), e.code, e.reason, e.field) from None


@dataclass(frozen=True)
class LeaseRest:
    kind: Kind
    path: str  # of leases
    by_address: str  # of the lease holding an address
    models: models.LeaseModels  # the kind's REST bodies
    head: tuple[str, ...]  # the fields of a lease before its owner
    filters: tuple[str, ...]  # query parameters of a listing, in the order of ReadModel.leases
    canonical: Callable[[str, str], str]  # an address written by people, in ipam's spelling (400 naming the field)
    space_of: Callable[[Any, Catalog], str]  # which space a lease request (the kind's body) goes to
    requested: Callable[[Any], dict[str, Any]]  # what a lease request asks for by name, as the lease command's field
    operations: dict  # operationIds, kept stable for generated clients


MAC_REST = LeaseRest(
    kind=MAC, path="/v1/mac-leases", by_address="/v1/macs/{mac}", models=models.MAC_MODELS, head=("mac", "pool"),
    filters=("namespace", "vm", "pool", "mac", "workload", "vm_uid", "cluster"), canonical=canonical_mac, space_of=_route_mac,
    requested=lambda body: {"mac": None if body.mac is None else canonical_mac(body.mac, "mac")},
    operations={"lease": "leaseMac", "list": "listMacLeases", "vm": "releaseVm", "interface": "releaseInterface",
                "address": "releaseMac"})
IP_REST = LeaseRest(
    kind=IP, path="/v1/ip-leases", by_address="/v1/ips/{network}/{address}", models=models.IP_MODELS,
    head=("network", "address", "prefix_length"), filters=("namespace", "vm", "network", "address", "workload", "vm_uid",
                                                            "cluster"),
    canonical=canonical_ip,
    space_of=lambda body, catalog: body.network,
    requested=lambda body: {"addresses": tuple(canonical_ip(a, f"addresses[{i}]") for i, a in enumerate(body.addresses))},
    operations={"lease": "leaseIp", "list": "listIpLeases", "vm": "releaseVmIps", "interface": "releaseInterfaceIps",
                "address": "releaseIp"})


class LeaseApi:
    def __init__(self, rest: LeaseRest, cfg: Config, gateway: Gateway, read: ReadModel) -> None:
        self.rest, self.cfg, self.gateway, self.read = rest, cfg, gateway, read
        bodies = rest.models
        self.request, self.lease_model, self.answer, self.listing, self.released = (
            bodies.request, bodies.lease, bodies.answer, bodies.listing, bodies.released)

    def lease_of(self, ev: AnyEvent) -> Struct:
        """A lease as its event tells it (the lease events of a kind, which name their owner; fields an event of
        that role does not carry, such as a confirmation's prefix length, are 0 as an older answer gave them)."""
        o, pending = ev.owner, getattr(ev, "pending_until", 0)  # type: ignore[union-attr]  # a lease event
        return self.lease_model(**{h: getattr(ev, h, 0) for h in self.rest.head}, namespace=o.namespace, vm=o.vm,
                                vm_uid=o.vm_uid, interface=o.interface, static=getattr(ev, "static", False),
                                since=_iso(ev.at), state="pending" if pending else "confirmed",
                                pending_until=_iso(pending) if pending else None, workload=o.workload, cluster=o.cluster,
                                **self._extra(ev))

    def _extra(self, ev: AnyEvent) -> dict:
        """The kind's fields an answer takes from the lease event (an IP's gateway)."""
        return {name: getattr(ev, name, default) for name, _, default in self.rest.kind.extra}

    async def lease(self, request: web.Request) -> web.Response:
        body = await decode_body(request, self.request)
        self.gateway.admit(1)  # under overload refused before any read: 429 with Retry-After
        kind, rest = self.rest.kind, self.rest
        requested = rest.requested(body)
        owner = Owner(namespace=body.namespace, vm=body.vm, vm_uid=body.vm_uid, interface=body.interface,
                      workload=body.workload, cluster=body.cluster or self.cfg.cluster)
        vm_leases, version = await self.read.vm_leases(kind, owner.namespace, owner.vm, owner.workload, owner.cluster)
        space = self._held_space(body, owner, vm_leases) or rest.space_of(body, await self.read.catalog(version))
        self._check_interfaces(body, vm_leases)
        cid = command_id(request, body.command_id)
        events = await self.gateway.submit(LEASE_COMMANDS[kind].lease(command_id=cid, at=now_ms(), owner=owner,
                                                                      **{kind.space: space, **requested}))
        raise_rejection(events)
        roles = LEASE_EVENTS[kind]
        kinds = (roles.leased, roles.returned, roles.confirmed)
        check_same_owner(events, owner, kinds)
        existing = all(isinstance(e, roles.returned) for e in events if isinstance(e, kinds))
        leases = []
        if existing:  # answered as stored: the lease's own time and whether it was static
            leases = self._as_read(events, kinds, space, owner, vm_leases) or await self._read_back(events, kinds, space,
                                                                                                  owner)
        if not leases:  # new, or none stored: a release decided right after this answer took it away
            leases = [self.lease_of(e) for e in events if isinstance(e, kinds)]
        if not leases:
            raise ApiError(409, "conflict", "the lease was released by a concurrent request before it could be read; "
                           "ask again")
        held = {"lease": leases[-1]} if "lease" in self.answer.__struct_fields__ else {"leases": leases}
        return reply(self.answer(**held, existing=existing, command_id=cid), 200 if existing else 201)

    def _as_read(self, events: list[AnyEvent], kinds: tuple[type, ...], space: str, owner: Owner, rows) -> list[Struct]:
        """A repeat's leases from the rows read before its command (so a repeat reads nothing after its answer),
        in the order the decider gave them; [] when one of them was not there (leased in between: read again).
        A release and a re-lease of the same address to the same owner in between would leave the earlier
        lease's ``since``: a window of one request, for three requests about one interface at once."""
        kind = self.rest.kind
        held = {str(r[kind.address]): r for r in rows
                if r[kind.space] == space and r["vm_uid"] == owner.vm_uid and r["interface"] == owner.interface}
        answered = [e for e in events if isinstance(e, kinds)]
        if not answered or any(getattr(e, kind.address) not in held for e in answered):
            return []
        return [self.from_row(held[getattr(e, kind.address)], self._extra(e)) for e in answered]

    async def _read_back(self, events: list[AnyEvent], kinds: tuple[type, ...], space: str, owner: Owner) -> list[Struct]:
        """A repeat's leases as stored now (one read): where the rows read before its command did not hold them."""
        kind = self.rest.kind
        extras = {getattr(e, kind.address): self._extra(e) for e in events if isinstance(e, kinds)}
        rows = await self.read.leases(kind, namespace=owner.namespace, vm=owner.vm, space=space, workload=owner.workload,
                                      vm_uid=owner.vm_uid, cluster=owner.cluster)
        return [self.from_row(r, extras.get(str(r[kind.address]), {})) for r in rows if r["interface"] == owner.interface]

    def _held_space(self, body, owner: Owner, vm_leases) -> str | None:
        """A MAC request naming neither pool nor MAC goes where the interface already holds its MAC, whatever
        pool that is (asked for by name or by a static MAC earlier): one interface, one MAC."""
        if self.rest.kind is not MAC or body.pool is not None or body.mac is not None:
            return None
        held = [r["pool"] for r in vm_leases if r["vm_uid"] == owner.vm_uid and r["interface"] == owner.interface]
        return min(held) if held else None

    def _check_interfaces(self, body, vm_leases) -> None:
        """IPAM_MAX_INTERFACES bounds the interfaces one VM may hold leases for (the webhook checks the spec;
        REST callers are held to the same bound here).  A new interface past the bound is refused."""
        others = len({r["interface"] for r in vm_leases} - {body.interface})
        if others >= self.cfg.max_interfaces:
            raise ApiError(422, "limit", f"{body.namespace}/{body.vm} already holds leases for {others} interfaces; "
                                         f"at most {self.cfg.max_interfaces} per VM (IPAM_MAX_INTERFACES)", "interface")

    async def list_leases(self, request: web.Request) -> web.Response:
        q, kind = request.query, self.rest.kind
        limit = limit_of(request)
        address = self.rest.canonical(q[kind.address], kind.address) if kind.address in q else None
        namespace, vm, space, _, _, vm_uid, _ = (q.get(f) for f in self.rest.filters)
        workload = workload_of(request)
        rows = await self.read.leases(kind, namespace=namespace, vm=vm, space=space, address=address, workload=workload,
                                      vm_uid=vm_uid, cluster=q.get("cluster"), limit=limit)
        return reply(self.listing(leases=[self.from_row(r) for r in rows]))

    def from_row(self, r, extra: dict | None = None) -> Struct:
        """A stored lease; ``extra``: the kind's fields its event carried (rows do not keep them)."""
        return self.lease_model(
            **{h: r[h] for h in self.rest.head}, namespace=r["namespace"], vm=r["vm"], vm_uid=r["vm_uid"],
            interface=r["interface"], static=r["static"], since=r["since"].isoformat(), state=r["state"],
            pending_until=None if r["pending_until"] is None else r["pending_until"].isoformat(), workload=r["workload"],
            cluster=r["cluster"], **(extra or {}))

    async def release_vm(self, request: web.Request) -> web.Response:
        m, kind = request.match_info, self.rest.kind
        ns, vm, interface = m["namespace"], m["vm"], m.get("interface")
        vm_uid, workload = request.query.get("vm_uid"), workload_of(request)
        cluster = request.query.get("cluster") or self.cfg.cluster  # a release never reaches into another cluster
        what = f"{ns}/{vm}" + (f" interface {interface}" if interface else "")
        base = command_id(request, None)
        if not base.startswith("api-"):
            earlier = await self.gateway.decided_fanout(base)
            if earlier:  # a retry: answer what was decided then
                return self.released_answer([ev for events in earlier for ev in events], what)
        stored = [r for r in await self.read.leases(kind, namespace=ns, vm=vm, space=m.get(kind.space), workload=workload,
                                                    vm_uid=vm_uid, cluster=cluster) if interface in (None, r["interface"])]
        spaces = [m[kind.space]] if kind.space in m else sorted({r[kind.space] for r in stored})
        if not spaces:
            raise ApiError(404, "not_found", f"{what} holds no {kind.word} lease")
        results = await asyncio.gather(*[self.gateway.submit(LEASE_COMMANDS[kind].release_owner(
            command_id=fanout_id(base, space), at=now_ms(), **{kind.space: space}, namespace=ns, vm=vm, interface=interface,
            vm_uid=vm_uid, workload=workload, cluster=cluster))
            for space in spaces])
        return self.released_answer([ev for events in results for ev in events], what, stored)

    async def release_address(self, request: web.Request) -> web.Response:
        m, kind = request.match_info, self.rest.kind
        address = self.rest.canonical(m[kind.address], kind.address)
        space = m.get(kind.space) or await self.read.space_holding(kind, address)
        if space is None:
            raise ApiError(404, "not_found", f"{address} is not leased", kind.address)
        stored = await self.read.leases(kind, space=space, address=address)
        events = await self.gateway.submit(LEASE_COMMANDS[kind].release_address(
            command_id=command_id(request, None), at=now_ms(), **{kind.space: space, kind.address: address}))
        return self.released_answer(events, address, stored)

    def released_answer(self, events: list[AnyEvent], what: str, stored=()) -> web.Response:
        """The released leases as they were stored (read just before: their own time, static or not), else as
        the events tell them (a retried release, whose leases are gone)."""
        kind = self.rest.kind
        released = [e for e in events if isinstance(e, LEASE_EVENTS[kind].released)]
        if not released:
            raise_rejection(events)
            raise ApiError(404, "not_found", f"{what} holds no {kind.word} lease")
        rows = {(r[kind.space], str(r[kind.address])): r for r in stored}
        leases = [self.from_row(rows[key], self._extra(e)) if (key := (getattr(e, kind.space), getattr(e, kind.address))) in rows
                  else self.lease_of(e) for e in released]
        return reply(self.released(released=leases, quarantined_until=[_iso(e.quarantined_until) for e in released]))

    def routes(self) -> list[Route]:
        rest, kind, bodies = self.rest, self.rest.kind, self.rest.models
        request, answer, listing, released = bodies.request, bodies.answer, bodies.listing, bodies.released
        owner = rest.path + ("/{network}" if kind is IP else "") + "/{namespace}/{vm}"
        w, s = kind.word, kind.space
        release = {200: (released, f"Released; the {w} addresses are quarantined")}
        return [
            Route("POST", rest.path, self.lease, f"Lease a VM interface its {w} addresses (sticky: the same owner gets the "
                  "same ones)", rest.operations["lease"], body=request, ok={201: (answer, "Leased"),
                  200: (answer, "The owner already held these addresses")}, errors=(400, 404, 409, 413, 422, 429, 504),
                  idempotent=True, sheds=True),
            Route("GET", rest.path, self.list_leases, f"List live {w} leases", rest.operations["list"],
                  ok={200: (listing, "Leases")}, errors=(400,), query=rest.filters, limit=True),
            Route("DELETE", owner, self.release_vm, f"Release a VM's {w} leases" + (f" in a {s}" if kind is IP else ""),
                  rest.operations["vm"], ok=release, errors=(400, 404, 504), idempotent=True,
                  query=("vm_uid", "workload", "cluster")),
            Route("DELETE", owner + "/{interface}", self.release_vm, f"Release one interface's {w} leases",
                  rest.operations["interface"], ok=release, errors=(400, 404, 504), idempotent=True,
                  query=("vm_uid", "workload", "cluster")),
            Route("DELETE", rest.by_address, self.release_address, f"Release the lease holding a {w} address",
                  rest.operations["address"], ok=release, errors=(400, 404, 504), idempotent=True),
        ]
