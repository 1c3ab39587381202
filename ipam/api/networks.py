"""REST for IP networks and IP leases (``/v1/networks``, ``/v1/ip-leases``), in the style of the MAC endpoints:
commands go through the bus and the answer comes after the projection committed them."""

from __future__ import annotations


import datetime as dt

import asyncpg
from aiohttp import web

from ..domain.ip import AddressError, format_address, parse_address
from ..domain.messages import DefineNetwork, DeleteNetwork, LeaseIp, Owner, ReleaseIp, ReleaseIps, SubnetSpec
from . import models
from .http import ApiError, decode_body, limit_of, now_ms, raise_rejection, reply

LEASE_EVENTS = ("IpLeased", "IpLeaseReturned", "IpLeaseConfirmed")


def _iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).isoformat()


def _lease_of(ev: dict, prefix: int | None = None) -> models.IpLease:
    o = ev["owner"]
    return models.IpLease(network=ev["network"], address=ev["address"], prefix_length=ev.get("prefix_length", prefix or 0),
                          namespace=o["namespace"], vm=o["vm"], vm_uid=o["vm_uid"], interface=o["interface"],
                          static=ev.get("static", False), since=_iso(ev["at"]),
                          state="pending" if ev.get("pending_until") else "confirmed",
                          pending_until=_iso(ev["pending_until"]) if ev.get("pending_until") else None)


def _address(text: str, field: str) -> str:
    try:
        return format_address(parse_address(text))
    except AddressError as e:
        raise ApiError(400, "invalid", str(e), field) from None


class NetworkApi:
    def __init__(self, api) -> None:
        self.api = api  # the MAC Api: database, submit with retries, command ids
        self.db: asyncpg.Pool = api.db

    # --- networks -----------------------------------------------------------------

    async def create(self, request: web.Request) -> web.Response:
        body = await decode_body(request, models.NetworkRequest)
        return await self._define(request, body.name, body, create_only=True)

    async def update(self, request: web.Request) -> web.Response:
        body = await decode_body(request, models.NetworkUpdate)
        name = request.match_info["name"]
        if not await self.db.fetchval("SELECT 1 FROM ipam_store.networks WHERE name = $1", name):
            raise ApiError(404, "unknown_network", f"network {name!r} does not exist", "name")
        return await self._define(request, name, body, create_only=False)

    async def _define(self, request: web.Request, name: str, body, create_only: bool) -> web.Response:
        cmd = DefineNetwork(
            command_id=self.api._command_id(request, body.command_id), at=now_ms(), name=name,
            subnets=tuple(SubnetSpec(cidr=s.cidr, gateway=s.gateway, exclude=tuple(s.exclude)) for s in body.subnets),
            dns=tuple(body.dns), attachments=tuple(body.attachments), create_only=create_only)
        events = await self.api.submit(cmd)
        raise_rejection(events)
        (network,) = await self.rows(name)
        return reply(network, 201 if create_only and events[-1].get("created") else 200)

    async def list(self, request: web.Request) -> web.Response:
        return reply(models.NetworkList(networks=await self.rows(None)))

    async def show(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        rows = await self.rows(name)
        if not rows:
            raise ApiError(404, "unknown_network", f"network {name!r} does not exist", "name")
        return reply(rows[0])

    async def delete(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        events = await self.api.submit(DeleteNetwork(command_id=self.api._command_id(request, None), at=now_ms(), name=name))
        raise_rejection(events)
        return reply(models.NetworkDeleted(deleted=name))

    async def rows(self, name: str | None) -> list[models.Network]:
        nets = await self.db.fetch(
            "SELECT name, array(SELECT host(d) FROM unnest(dns) d) AS dns, attachments, source FROM ipam_store.networks "
            "WHERE $1::text IS NULL OR name = $1 ORDER BY name", name)
        usage = await self.db.fetch(
            "SELECT u.network, u.cidr::text, u.family, host(u.gateway) AS gateway, s.exclude, u.size, u.used, u.quarantined, "
            "u.free, u.percent::float8 AS percent FROM ipam.network_usage u "
            "JOIN ipam_store.network_subnets s ON s.network = u.network AND s.cidr = u.cidr "
            "WHERE $1::text IS NULL OR u.network = $1 ORDER BY u.network, s.idx", name)
        subnets: dict[str, list] = {}
        for r in usage:
            subnets.setdefault(r["network"], []).append(models.SubnetUsage(
                cidr=r["cidr"], family=r["family"], gateway=r["gateway"], exclude=list(r["exclude"]), size=int(r["size"]),
                used=r["used"], quarantined=r["quarantined"], free=int(r["free"]), percent=r["percent"]))
        return [models.Network(name=n["name"], subnets=subnets.get(n["name"], []), dns=list(n["dns"]),
                               attachments=list(n["attachments"]), source=n["source"]) for n in nets]

    # --- leases -------------------------------------------------------------------

    async def lease(self, request: web.Request) -> web.Response:
        body = await decode_body(request, models.IpLeaseRequest)
        addresses = tuple(_address(a, f"addresses[{i}]") for i, a in enumerate(body.addresses))
        command_id = self.api._command_id(request, body.command_id)
        await self.api.check_interfaces("ip_leases", body.namespace, body.vm, body.interface)
        owner = Owner(namespace=body.namespace, vm=body.vm, vm_uid=body.vm_uid, interface=body.interface)
        events = await self.api.submit(LeaseIp(command_id=command_id, at=now_ms(), network=body.network, owner=owner,
                                               addresses=addresses))
        raise_rejection(events)
        leases = [e for e in events if e["type"] in LEASE_EVENTS]
        existing = all(e["type"] == "IpLeaseReturned" for e in leases)
        return reply(models.IpLeaseAnswer(leases=[_lease_of(e) for e in leases], existing=existing, command_id=command_id),
                     200 if existing else 201)

    async def list_leases(self, request: web.Request) -> web.Response:
        q = request.query
        limit = limit_of(request)
        address = _address(q["address"], "address") if "address" in q else None
        rows = await self.db.fetch(
            """SELECT network, host(address) AS address, prefix_length, namespace, vm, vm_uid, interface, static, since,
                      state, pending_until FROM ipam.ip_leases
               WHERE ($1::text IS NULL OR network = $1) AND ($2::text IS NULL OR namespace = $2)
                 AND ($3::text IS NULL OR vm = $3) AND ($4::inet IS NULL OR address = $4::inet)
               ORDER BY network, namespace, vm, interface, family LIMIT $5""",
            q.get("network"), q.get("namespace"), q.get("vm"), address, limit)
        return reply(models.IpLeaseList(leases=[
            models.IpLease(network=r["network"], address=r["address"], prefix_length=r["prefix_length"],
                           namespace=r["namespace"], vm=r["vm"], vm_uid=r["vm_uid"], interface=r["interface"],
                           static=r["static"], since=r["since"].isoformat(), state=r["state"],
                           pending_until=None if r["pending_until"] is None else r["pending_until"].isoformat())
            for r in rows]))

    async def release_vm(self, request: web.Request) -> web.Response:
        m = request.match_info
        network, ns, vm, interface = m["network"], m["namespace"], m["vm"], m.get("interface")
        events = await self.api.submit(ReleaseIps(command_id=self.api._command_id(request, None), at=now_ms(),
                                                  network=network, namespace=ns, vm=vm, interface=interface))
        return self._released(events)

    async def release_address(self, request: web.Request) -> web.Response:
        network = request.match_info["network"]
        address = _address(request.match_info["address"], "address")
        events = await self.api.submit(ReleaseIp(command_id=self.api._command_id(request, None), at=now_ms(),
                                                 network=network, address=address))
        return self._released(events)

    @staticmethod
    def _released(events: list[dict]) -> web.Response:
        raise_rejection(events)
        released = [e for e in events if e["type"] == "IpReleased"]
        return reply(models.IpReleased(released=[_lease_of(e) for e in released],
                                       quarantined_until=[_iso(e["quarantined_until"]) for e in released]))


def routes(api) -> list[web.RouteDef]:
    n = api.networks
    return [
        web.post("/v1/networks", n.create),
        web.get("/v1/networks", n.list),
        web.get("/v1/networks/{name}", n.show),
        web.put("/v1/networks/{name}", n.update),
        web.delete("/v1/networks/{name}", n.delete),
        web.post("/v1/ip-leases", n.lease),
        web.get("/v1/ip-leases", n.list_leases),
        web.delete("/v1/ip-leases/{network}/{namespace}/{vm}", n.release_vm),
        web.delete("/v1/ip-leases/{network}/{namespace}/{vm}/{interface}", n.release_vm),
        web.delete("/v1/ips/{network}/{address}", n.release_address),
    ]



