"""aiohttp application: REST for pools and MAC leases (IP networks and leases in ``networks``), health, readiness, OpenAPI."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid
from collections.abc import Callable

import asyncpg
import msgspec
import structlog
from aiohttp import web
from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from .. import telemetry

from ..adapters.postgres.ip_projection import network_definitions
from ..adapters.postgres.partitions import load_pools
from ..config import Config
from ..domain.mac import format_mac
from ..domain.messages import CreatePool, LeaseMac, ReleaseMac, ReleaseOwner
from ..domain.routing import RoutingError, choose_pool
from . import models
from .http import CONFIG, STATUS, ApiError, check_request_text, decode_body, limit_of, mac_field, now_ms, raise_rejection, reply
from ..adapters import kafka
from ..adapters.bus import CommandBus, OutcomeTimeout
from .auth import AUTH, Authenticator
from .metrics import Metrics, render
from .networks import NetworkApi, routes as network_routes
from .openapi import openapi_document

log = structlog.get_logger("ipam.api")


def _lease_of(ev: dict) -> models.Lease:
    o = ev["owner"]
    return models.Lease(mac=ev["mac"], pool=ev["pool"], namespace=o["namespace"], vm=o["vm"], vm_uid=o["vm_uid"],
                        interface=o["interface"], static=ev.get("static", False),
                        since=dt.datetime.fromtimestamp(ev["at"] / 1000, dt.timezone.utc).isoformat())


class Api:
    def __init__(self, cfg: Config, db: asyncpg.Pool, bus: CommandBus, readiness: Callable[[], dict[str, bool]]) -> None:
        self.cfg, self.db, self.bus, self.readiness = cfg, db, bus, readiness
        self.pools: dict = {}
        self._pools_at = 0.0
        self.attachments: dict[str, list] = {}
        self._networks_at = 0.0
        self.metrics = Metrics()
        self.networks = NetworkApi(self)

    async def refresh_networks(self, max_age: float = 0.0) -> dict[str, list]:
        """NetworkAttachmentDefinition ("namespace/name") -> the networks that serve it (one, normally)."""
        if time.monotonic() - self._networks_at >= max_age:
            async with self.db.acquire() as conn:
                networks = await network_definitions(conn)
            by_attachment: dict[str, list] = {}
            for network in networks.values():
                for attachment in network.attachments:
                    by_attachment.setdefault(attachment, []).append(network)
            self.attachments = by_attachment
            self._networks_at = time.monotonic()
        return self.attachments

    async def refresh_pools(self, max_age: float = 0.0) -> dict:
        if time.monotonic() - self._pools_at >= max_age:
            async with self.db.acquire() as conn:
                self.pools = {n: p for n, (p, _part, _c) in (await load_pools(conn)).items()}
            self._pools_at = time.monotonic()
        return self.pools

    async def submit(self, command) -> list[dict]:
        """Answer from the stored outcome when a client's command id was decided before; else decide it."""
        if not command.command_id.startswith("api-"):
            known = await self.bus.outcome(command.command_id)
            if known is not None:
                if not answers(command, known):
                    raise ApiError(422, "key_reused", f"command id {command.command_id!r} was already used for another kind "
                                                      "of request; use a new Idempotency-Key or command_id", "Idempotency-Key")
                return known
        try:
            return await self.bus.submit(command)
        except OutcomeTimeout:
            raise ApiError(
                504, "timeout",
                f"no answer within {self.cfg.request_timeout_seconds:g}s; retry with command_id {command.command_id} "
                "to get the same outcome",
            ) from None

    async def check_interfaces(self, table: str, namespace: str, vm: str, interface: str) -> None:
        """IPAM_MAX_INTERFACES bounds the interfaces one VM may hold leases for (the webhook checks the spec;
        REST callers are held to the same bound here).  A new interface past the bound is refused."""
        others = await self.db.fetchval(
            f"SELECT count(DISTINCT interface) FROM ipam_store.{table} WHERE namespace = $1 AND vm = $2 AND interface <> $3",
            namespace, vm, interface)
        if others >= self.cfg.max_interfaces:
            raise ApiError(422, "limit", f"{namespace}/{vm} already holds leases for {others} interfaces; "
                                         f"at most {self.cfg.max_interfaces} per VM (IPAM_MAX_INTERFACES)", "interface")

    @staticmethod
    def _command_id(request: web.Request, body_id: str | None) -> str:
        """The client's retry key, or a fresh id (prefixed so it never collides with a client key)."""
        return request.headers.get("Idempotency-Key") or body_id or f"api-{uuid.uuid4()}"

    # --- pools --------------------------------------------------------------------

    async def create_pool(self, request: web.Request) -> web.Response:
        body = await decode_body(request, models.PoolRequest)
        cmd = CreatePool(command_id=self._command_id(request, body.command_id), at=now_ms(), name=body.name,
                         range=body.range, namespaces=tuple(body.namespaces), default=body.default, external=body.external)
        events = await self.submit(cmd)
        raise_rejection(events)
        await self.refresh_pools()
        pools = await self._pool_rows(body.name)
        return reply(pools[0], 201)

    async def list_pools(self, request: web.Request) -> web.Response:
        return reply(models.PoolList(pools=await self._pool_rows(None)))

    async def _pool_rows(self, name: str | None) -> list[models.Pool]:
        rows = await self.db.fetch(
            "SELECT pool, range, size, used, quarantined, free, percent::float8 AS percent, namespaces, is_default "
            "FROM ipam.pool_usage WHERE $1::text IS NULL OR pool = $1 ORDER BY pool",
            name,
        )
        return [models.Pool(name=r["pool"], range=r["range"], size=r["size"], used=r["used"], quarantined=r["quarantined"],
                            free=r["free"], percent=r["percent"], namespaces=list(r["namespaces"]), default=r["is_default"])
                for r in rows]

    # --- leases -------------------------------------------------------------------

    async def lease(self, request: web.Request) -> web.Response:
        body = await decode_body(request, models.LeaseRequest)
        mac = mac_field(body.mac)
        command_id = self._command_id(request, body.command_id)
        pools = await self.refresh_pools(max_age=2.0)
        if body.pool is not None and body.pool not in pools:
            pools = await self.refresh_pools()
        try:
            pool = choose_pool(pools, body.namespace, body.pool, mac)
        except RoutingError as e:
            raise ApiError(STATUS.get(e.code, 422), e.code, e.reason, e.field) from None
        await self.check_interfaces("mac_leases", body.namespace, body.vm, body.interface)
        owner = {"namespace": body.namespace, "vm": body.vm, "vm_uid": body.vm_uid, "interface": body.interface}
        cmd = msgspec.convert({"type": "LeaseMac", "command_id": command_id, "at": now_ms(), "pool": pool.name,
                               "owner": owner, "mac": None if mac is None else format_mac(mac)}, LeaseMac)
        events = await self.submit(cmd)
        raise_rejection(events)
        final = events[-1]
        existing = final["type"] == "MacLeaseReturned"
        return reply(models.LeaseAnswer(lease=_lease_of(final), existing=existing, command_id=command_id),
                      200 if existing else 201)

    async def list_leases(self, request: web.Request) -> web.Response:
        q = request.query
        limit = limit_of(request)
        mac = mac_field(q.get("mac")) if "mac" in q else None
        rows = await self.db.fetch(
            """SELECT mac::text, pool, namespace, vm, vm_uid, interface, static, since, state, pending_until FROM ipam.mac_leases
               WHERE ($1::text IS NULL OR namespace = $1) AND ($2::text IS NULL OR vm = $2)
                 AND ($3::text IS NULL OR pool = $3) AND ($4::macaddr IS NULL OR mac = $4)
               ORDER BY namespace, vm, interface LIMIT $5""",
            q.get("namespace"), q.get("vm"), q.get("pool"), None if mac is None else format_mac(mac), limit,
        )
        return reply(models.LeaseList(leases=[
            models.Lease(mac=r["mac"], pool=r["pool"], namespace=r["namespace"], vm=r["vm"], vm_uid=r["vm_uid"],
                         interface=r["interface"], static=r["static"], since=r["since"].isoformat(), state=r["state"],
                         pending_until=None if r["pending_until"] is None else r["pending_until"].isoformat())
            for r in rows]))

    async def release_vm(self, request: web.Request) -> web.Response:
        ns, vm = request.match_info["namespace"], request.match_info["vm"]
        interface = request.match_info.get("interface")
        pools = [r["pool"] for r in await self.db.fetch(
            "SELECT DISTINCT pool FROM ipam_store.mac_leases WHERE namespace = $1 AND vm = $2 AND ($3::text IS NULL OR interface = $3)",
            ns, vm, interface)]
        what = f"{ns}/{vm}" + (f" interface {interface}" if interface else "")
        base = self._command_id(request, None)
        if not base.startswith("api-"):
            earlier = await self.bus.outcomes_for_key(base)
            if earlier:  # a retry: answer what was decided then
                return self._released([ev for events in earlier for ev in events], what)
        if not pools:
            raise ApiError(404, "not_found", f"{what} holds no MAC lease")
        results = await asyncio.gather(*[
            self.submit(ReleaseOwner(command_id=f"{base}/{p}", at=now_ms(), pool=p,
                                     namespace=ns, vm=vm, interface=interface))
            for p in pools])
        return self._released([ev for events in results for ev in events], what)

    async def release_mac(self, request: web.Request) -> web.Response:
        mac = mac_field(request.match_info["mac"])
        pool = await self.db.fetchval("SELECT pool FROM ipam_store.mac_leases WHERE mac = $1::macaddr", format_mac(mac))
        if pool is None:
            raise ApiError(404, "not_found", f"{format_mac(mac)} is not leased", "mac")
        events = await self.submit(ReleaseMac(command_id=self._command_id(request, None), at=now_ms(), pool=pool,
                                              mac=format_mac(mac)))
        return self._released(events, format_mac(mac))

    @staticmethod
    def _released(events: list[dict], what: str) -> web.Response:
        released = [e for e in events if e["type"] == "MacReleased"]
        if not released:
            raise_rejection(events)
            raise ApiError(404, "not_found", f"{what} holds no MAC lease")
        until = [dt.datetime.fromtimestamp(e["quarantined_until"] / 1000, dt.timezone.utc).isoformat() for e in released]
        return reply(models.Released(released=[_lease_of(e) for e in released], quarantined_until=until))

    # --- status -------------------------------------------------------------------

    async def status(self, request: web.Request) -> web.Response:
        """Partitions (owner, epoch, how far decided and projected, what waits), pools, networks, pending leases."""
        rows = await self.db.fetch("SELECT * FROM ipam.partitions ORDER BY partition")
        ends = await self._end_offsets()
        partitions = []
        for r in rows:
            commands_end, events_end = ends.get(("commands", r["partition"])), ends.get(("events", r["partition"]))
            partitions.append(models.PartitionStatus(
                partition=r["partition"], generation=r["generation"], epoch=r["epoch"], owner=r["owner"],
                caught_up=r["caught_up"], commands_decided=r["commands_decided"], events_projected=r["events_projected"],
                commands_end=commands_end, events_end=events_end,
                commands_waiting=None if commands_end is None else max(0, commands_end - r["commands_decided"]),
                events_waiting=None if events_end is None else max(0, events_end - r["events_projected"])))
        pending = await self.db.fetchrow(
            "SELECT (SELECT count(*) FROM ipam.mac_leases WHERE state = 'pending') AS mac, "
            "(SELECT count(*) FROM ipam.ip_leases WHERE state = 'pending') AS ip")
        return reply(models.Status(broker=bool(ends) or not rows, partitions=partitions, pools=await self._pool_rows(None),
                                   networks=await self.networks.rows(None),
                                   pending=models.PendingCounts(mac=pending["mac"], ip=pending["ip"])))

    async def _end_offsets(self) -> dict[tuple[str, int], int]:
        cfg = self.cfg
        tps = [TopicPartition(topic, p) for topic in (cfg.commands_topic, cfg.events_topic) for p in range(cfg.partitions)]
        try:
            async with kafka.LogReader(cfg) as reader:
                ends = await asyncio.wait_for(reader.end_offsets(tps), 5)
        except (KafkaError, OSError, asyncio.TimeoutError) as e:
            log.warning("cannot read end offsets for the status", error=repr(e))
            return {}
        name = {cfg.commands_topic: "commands", cfg.events_topic: "events"}
        return {(name[tp.topic], tp.partition): offset for tp, offset in ends.items()}

    # --- health -------------------------------------------------------------------

    async def healthz(self, request: web.Request) -> web.Response:
        return reply({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        checks = dict(self.readiness())
        try:
            await asyncio.wait_for(self.db.fetchval("SELECT 1"), 2)
            checks["database"] = True
        except (OSError, asyncpg.PostgresError, asyncio.TimeoutError):
            checks["database"] = False
        checks["notifications"] = await self.bus.healthy()
        checks["broker"] = await self.bus.broker_reachable()
        ok = all(checks.values())
        return reply({"ready": ok, "checks": checks}, 200 if ok else 503)

    async def metrics_text(self, request: web.Request) -> web.Response:
        async with self.db.acquire() as conn:
            await self.metrics.refresh(conn)
        body, content_type = self.metrics.render()
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def openapi(self, request: web.Request) -> web.Response:
        return reply(openapi_document())


# The address space a command (or event) is about: a retry must be the same kind of request, and
# no command of one family ever produces events of another.
_FAMILY = {"CreatePool": "pool", "PoolCreated": "pool", "DefineNetwork": "network", "DeleteNetwork": "network",
           "NetworkDefined": "network", "NetworkDeleted": "network"}


def _family(name: str) -> str | None:
    if name in _FAMILY:
        return _FAMILY[name]
    if name.startswith(("Mac", "LeaseMac", "ReleaseMac", "ReleaseOwner", "ObserveVm", "ExpirePending")):
        return "ip" if name in ("ObserveVmIps", "ExpirePendingIp") else "mac"
    if name.startswith(("Ip", "LeaseIp", "ReleaseIp", "ObserveGuestIps")):
        return "ip"
    return None  # unknown: no opinion


def answers(command, events: list[dict]) -> bool:
    """Whether a stored outcome can be the outcome of this command (same family of request)."""
    mine = _family(type(command).__name__)
    for ev in events:
        theirs = _family(ev.get("command", "") if ev["type"] == "CommandRejected" else ev["type"])
        if theirs is not None and theirs != mine:
            return False
    return True


@web.middleware
async def observed(request: web.Request, handler):
    """Count every request by route template and status, and time it."""
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    started = time.perf_counter()
    response = await handler(request)
    telemetry.http_seconds.labels(route, request.method).observe(time.perf_counter() - started)
    telemetry.http_requests.labels(route, request.method, str(response.status)).inc()
    return response


@web.middleware
async def errors(request: web.Request, handler):
    try:
        await request.app[AUTH].check(request)
        check_request_text(request)
        return await handler(request)
    except ApiError as e:
        return e.response()
    except web.HTTPRequestEntityTooLarge:
        return ApiError(413, "too_large", f"request body is over {request.app[CONFIG].max_body_bytes} bytes", "body").response()
    except web.HTTPException as e:
        if e.status >= 400:
            response = ApiError(e.status, "http", e.reason).response()
            if "Allow" in e.headers:  # 405 says which methods the path has
                response.headers["Allow"] = e.headers["Allow"]
            return response
        raise
    except Exception:
        log.exception("request failed", path=request.path)
        return ApiError(500, "internal", "internal error; see the service log").response()


def make_app(api: Api, cfg: Config, auth: Authenticator) -> web.Application:
    app = web.Application(client_max_size=cfg.max_body_bytes, middlewares=[observed, errors])
    app[CONFIG] = cfg
    app[AUTH] = auth
    app.add_routes([
        web.post("/v1/pools", api.create_pool),
        web.get("/v1/pools", api.list_pools),
        web.post("/v1/mac-leases", api.lease),
        web.get("/v1/mac-leases", api.list_leases),
        web.delete("/v1/mac-leases/{namespace}/{vm}", api.release_vm),
        web.delete("/v1/mac-leases/{namespace}/{vm}/{interface}", api.release_vm),
        web.delete("/v1/macs/{mac}", api.release_mac),
        *network_routes(api),
        web.get("/v1/status", api.status),
        web.get("/healthz", api.healthz),
        web.get("/readyz", api.readyz),
        web.get("/openapi.json", api.openapi),
        web.get("/metrics", api.metrics_text),
    ])
    return app


def make_ops_app(readiness: Callable[[], dict[str, bool]], cfg: Config, auth: Authenticator) -> web.Application:
    """Health, readiness and metrics for a process without the REST API (allocator, projector, watcher)."""

    async def healthz(request: web.Request) -> web.Response:
        return reply({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        checks = readiness()
        ok = all(checks.values())
        return reply({"ready": ok, "checks": checks}, 200 if ok else 503)

    async def metrics_text(request: web.Request) -> web.Response:
        body, content_type = render()
        return web.Response(body=body, headers={"Content-Type": content_type})

    app = web.Application(client_max_size=cfg.max_body_bytes, middlewares=[observed, errors])
    app[CONFIG] = cfg
    app[AUTH] = auth
    app.add_routes([web.get("/healthz", healthz), web.get("/readyz", readyz), web.get("/metrics", metrics_text)])
    return app
