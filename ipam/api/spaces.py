"""REST for the address spaces: MAC pools (``/v1/pools``) and IP networks (``/v1/networks``)."""

from __future__ import annotations

from aiohttp import web

from ..adapters.postgres.read_model import ReadModel
from . import models
from .http import ApiError, Gateway, command_id, decode_body, reply
from .openapi import Route
from .space_changes import SpaceChanges


class SpacesApi:
    def __init__(self, gateway: Gateway, read: ReadModel) -> None:
        self.ops, self.read = SpaceChanges(gateway, read), read

    # --- pools --------------------------------------------------------------------------------

    async def create_pool(self, request: web.Request) -> web.Response:
        body = await decode_body(request, models.PoolRequest)
        created = await self.ops.create_pool(command_id(request, body.command_id), body)
        (pool,) = await self.pools(created.name)  # a retried key answers with the pool it created
        return reply(pool, 201)

    async def change_pool(self, request: web.Request) -> web.Response:
        body = await decode_body(request, models.PoolUpdate)
        name = request.match_info["name"]
        await self.ops.change_pool(name, body, command_id(request, body.command_id))
        (pool,) = await self.pools(name)
        return reply(pool)

    async def delete_pool(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        await self.ops.delete_pool(name, command_id(request, None))
        return reply(models.PoolDeleted(deleted=name))

    async def list_pools(self, request: web.Request) -> web.Response:
        return reply(models.PoolList(pools=await self.pools()))

    async def pools(self, name: str | None = None) -> list[models.Pool]:
        return [models.Pool(name=r["pool"], range=r["range"], size=r["size"], used=r["used"], quarantined=r["quarantined"],
                            free=r["free"], percent=r["percent"], namespaces=list(r["namespaces"]), default=r["is_default"])
                for r in await self.read.pools(name)]

    # --- networks -----------------------------------------------------------------------------

    async def create_network(self, request: web.Request) -> web.Response:
        body = await decode_body(request, models.NetworkRequest)
        return await self._define(request, body.name, body, create_only=True)

    async def update_network(self, request: web.Request) -> web.Response:
        body = await decode_body(request, models.NetworkUpdate)
        name = request.match_info["name"]
        if name not in (await self.read.catalog()).networks:
            raise ApiError(404, "unknown_network", f"network {name!r} does not exist", "name")
        return await self._define(request, name, body, create_only=False)

    async def change_network(self, request: web.Request) -> web.Response:
        """Change what the body gives (subnets, DNS, attachments) and keep the rest of the definition."""
        body = await decode_body(request, models.NetworkChange)
        name = request.match_info["name"]
        current = (await self.read.catalog()).networks.get(name)
        if current is None:
            raise ApiError(404, "unknown_network", f"network {name!r} does not exist", "name")
        subnets = body.subnets if body.subnets is not None else [
            models.SubnetRequest(cidr=s.cidr, gateway=s.gateway, exclude=list(s.exclude)) for s in current.specs]
        merged = models.NetworkUpdate(subnets=subnets, dns=list(current.dns if body.dns is None else body.dns),
                                      attachments=list(current.attachments if body.attachments is None else body.attachments),
                                      command_id=body.command_id)
        return await self._define(request, name, merged, create_only=False)

    async def _define(self, request: web.Request, name: str, body, create_only: bool) -> web.Response:
        defined = await self.ops.define_network(command_id(request, body.command_id), name, body, create_only,
                                                getattr(body, "source", "api"))
        (network,) = await self.networks(defined.name)
        return reply(network, 201 if create_only and defined.created else 200)

    async def list_networks(self, request: web.Request) -> web.Response:
        return reply(models.NetworkList(networks=await self.networks()))

    async def show_network(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        found = await self.networks(name)
        if not found:
            raise ApiError(404, "unknown_network", f"network {name!r} does not exist", "name")
        return reply(found[0])

    async def delete_network(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        await self.ops.delete_network(command_id(request, None), name)
        return reply(models.NetworkDeleted(deleted=name))

    async def networks(self, name: str | None = None) -> list[models.Network]:
        nets, usage = await self.read.networks(name)
        subnets: dict[str, list] = {}
        for r in usage:
            subnets.setdefault(r["network"], []).append(models.SubnetUsage(
                cidr=r["cidr"], family=r["family"], gateway=r["gateway"], exclude=list(r["exclude"]), size=int(r["size"]),
                used=r["used"], quarantined=r["quarantined"], free=int(r["free"]), percent=r["percent"]))
        return [models.Network(name=n["name"], subnets=subnets.get(n["name"], []), dns=list(n["dns"]),
                               attachments=list(n["attachments"]), source=n["source"]) for n in nets]

    def routes(self) -> list[Route]:
        pool, network = models.Pool, models.Network
        return [
            Route("POST", "/v1/pools", self.create_pool, "Create a MAC pool", "createPool", body=models.PoolRequest,
                  ok={201: (pool, "Created")}, errors=(400, 409, 413, 504), idempotent=True),
            Route("PATCH", "/v1/pools/{name}", self.change_pool, "Change a pool: grow or shrink its range (refused while "
                  "live leases would fall outside it), its namespaces, whether it is the default", "changePool",
                  body=models.PoolUpdate, ok={200: (pool, "Changed")}, errors=(400, 404, 409, 413, 422, 504), idempotent=True),
            Route("DELETE", "/v1/pools/{name}", self.delete_pool, "Delete a pool (refused while it holds leases)",
                  "deletePool", ok={200: (models.PoolDeleted, "Deleted")}, errors=(404, 409, 504), idempotent=True),
            Route("GET", "/v1/pools", self.list_pools, "List pools with usage", "listPools",
                  ok={200: (models.PoolList, "Pools")}),
            Route("POST", "/v1/networks", self.create_network, "Create an IP network (subnets, exclusions, gateway, DNS, "
                  "attachments)", "createNetwork", body=models.NetworkRequest,
                  ok={201: (network, "Created"), 200: (network, "It existed with the same definition")},
                  errors=(400, 409, 413, 504), idempotent=True),
            Route("GET", "/v1/networks", self.list_networks, "List networks with usage per subnet", "listNetworks",
                  ok={200: (models.NetworkList, "Networks")}),
            Route("GET", "/v1/networks/{name}", self.show_network, "One network with usage per subnet", "getNetwork",
                  ok={200: (network, "The network")}, errors=(404,)),
            Route("PUT", "/v1/networks/{name}", self.update_network, "Replace a network's definition (refused while a live "
                  "lease would fall outside it)", "updateNetwork", body=models.NetworkUpdate, ok={200: (network, "Updated")},
                  errors=(400, 404, 409, 413, 504), idempotent=True),
            Route("PATCH", "/v1/networks/{name}", self.change_network, "Change part of a network's definition (subnets, "
                  "DNS, attachments: what is given replaces it); refused while a live lease would fall outside it",
                  "changeNetwork", body=models.NetworkChange, ok={200: (network, "Changed")},
                  errors=(400, 404, 409, 413, 504), idempotent=True),
            Route("DELETE", "/v1/networks/{name}", self.delete_network, "Delete a network (refused while it holds leases)",
                  "deleteNetwork", ok={200: (models.NetworkDeleted, "Deleted")}, errors=(404, 409, 504), idempotent=True),
        ]
