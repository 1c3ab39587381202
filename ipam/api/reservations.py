"""REST for reservations of every kind: ``/v1/mac-reservations`` and ``/v1/ip-reservations``.

A reservation sets an address aside (the one asked for, else the next free) for a VM that does not exist
yet: namespace and name, and an interface unless any of its interfaces may take it.  It is a lease held by
a provisional owner (``kinds.RESERVATION_UID_PREFIX``), so everything the lease core guarantees holds for
it; the VM gets it when admitted (the webhook's lease finds it, ``Book.reserved_for``), and it lapses at
``expires_in_seconds`` if asked to (the watcher releases lapsed provisional leases).  One reservation per
VM interface and space: asking again answers the one there is.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from ..clock import now_ms
from ..domain.commands import LEASE_COMMANDS
from ..domain.events import LEASE_EVENTS
from ..domain.kinds import ANY_INTERFACE, NEVER, RESERVATION_UID_PREFIX, Owner
from .http import ApiError, command_id, decode_body, fanout_id, raise_rejection, reply
from .leases import LeaseApi, check_same_owner
from .openapi import Route


class ReservationApi:
    def __init__(self, leases: LeaseApi) -> None:
        self.leases, self.rest, self.read, self.gateway = leases, leases.rest, leases.read, leases.gateway
        self.path = self.rest.path.replace("-leases", "-reservations")
        self.request = self.rest.models.reservation

    async def reserve(self, request: web.Request) -> web.Response:
        body = await decode_body(request, self.request)
        kind, rest, api = self.rest.kind, self.rest, self.leases
        requested = rest.requested(body)
        space = rest.space_of(body, await self.read.catalog())
        interface = body.interface or ANY_INTERFACE
        cluster = body.cluster or api.cfg.cluster
        held = [r for r in await self.read.leases(kind, namespace=body.namespace, vm=body.vm, space=space, state="reserved",
                                                  workload=body.workload, cluster=cluster) if r["interface"] == interface]
        cid = command_id(request, body.command_id)
        if held:  # asked again: the reservation there is
            return reply(self._answer([api.from_row(r) for r in held], True, cid), 200)
        owner = Owner(namespace=body.namespace, vm=body.vm, vm_uid=f"{RESERVATION_UID_PREFIX}{cid}", interface=interface,
                      workload=body.workload, cluster=cluster)
        until = NEVER if body.expires_in_seconds is None else now_ms() + body.expires_in_seconds * 1000
        self.gateway.admit(1)
        events = await self.gateway.submit(LEASE_COMMANDS[kind].lease(
            command_id=cid, at=now_ms(), owner=owner, pending_until=until, **{kind.space: space, **requested}))
        raise_rejection(events)
        check_same_owner(events, owner, (LEASE_EVENTS[kind].leased, LEASE_EVENTS[kind].returned))
        rows = await self.read.leases(kind, namespace=body.namespace, vm=body.vm, space=space, vm_uid=owner.vm_uid)
        return reply(self._answer([api.from_row(r) for r in rows], False, cid), 201)

    def _answer(self, leases: list, existing: bool, cid: str):
        held = {"lease": leases[-1]} if "lease" in self.leases.answer.__struct_fields__ else {"leases": leases}
        return self.leases.answer(**held, existing=existing, command_id=cid)

    async def list_reservations(self, request: web.Request) -> web.Response:
        q = request.query
        rows = await self.read.leases(self.rest.kind, namespace=q.get("namespace"), vm=q.get("vm"), state="reserved",
                                      cluster=q.get("cluster"))
        return reply(self.leases.listing(leases=[self.leases.from_row(r) for r in rows]))

    async def release(self, request: web.Request) -> web.Response:
        """Release a VM's reservations (of one interface: ``?interface=``, ``*`` for those of any interface)."""
        kind, m = self.rest.kind, request.match_info
        ns, vm, interface = m["namespace"], m["vm"], request.query.get("interface")
        rows = [r for r in await self.read.leases(kind, namespace=ns, vm=vm, state="reserved",
                                                  cluster=request.query.get("cluster") or self.leases.cfg.cluster)
                if interface in (None, r["interface"])]
        what = f"{ns}/{vm}" + (f" interface {interface}" if interface else "")
        if not rows:
            raise ApiError(404, "not_found", f"nothing is reserved for {what}")
        base = command_id(request, None)
        held = sorted({(r[kind.space], r["vm_uid"]) for r in rows})
        results = await asyncio.gather(*[self.gateway.submit(LEASE_COMMANDS[kind].release_owner(
            command_id=fanout_id(base, f"{space}:{uid}"), at=now_ms(), **{kind.space: space}, namespace=ns, vm=vm,
            vm_uid=uid, cluster=rows[0]["cluster"])) for space, uid in held])
        return self.leases.released_answer([ev for events in results for ev in events], what, rows)

    def routes(self) -> list[Route]:
        w, bodies = self.rest.kind.word, self.rest.models
        answer, listing, released, request = bodies.answer, bodies.listing, bodies.released, bodies.reservation
        return [
            Route("POST", self.path, self.reserve, f"Reserve {w} addresses for a VM that does not exist yet (the one asked "
                  "for, else the next free); the VM gets them when admitted", f"reserve{w.title()}", body=request,
                  ok={201: (answer, "Reserved"), 200: (answer, "Already reserved for that VM interface")},
                  errors=(400, 404, 409, 413, 422, 504), idempotent=True),
            Route("GET", self.path, self.list_reservations, f"List {w} reservations", f"list{w.title()}Reservations",
                  ok={200: (listing, "Reservations")}, query=("namespace", "vm", "cluster")),
            Route("DELETE", self.path + "/{namespace}/{vm}", self.release, f"Release a VM's {w} reservations",
                  f"release{w.title()}Reservations", ok={200: (released, "Released")}, errors=(400, 404, 504),
                  idempotent=True, query=("interface", "cluster")),
        ]
