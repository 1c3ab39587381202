"""The REST application: leases of every kind, pools and networks, status, health, metrics and the OpenAPI
document, with the middleware every request goes through (tokens, errors that name the field, metrics).

/metrics serves what the cluster and the webhook look like right now: gauges read from Postgres at
scrape time (the views are the truth, and any API replica gives the same answer), then what this
process counted (telemetry)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest

from .. import telemetry
from ..adapters.bus import Backlog, Busy, CommandBus
from ..adapters.kafka import topic_ends
from ..adapters.postgres.read_model import ReadModel
from ..config import Config
from ..domain.kinds import KINDS
from . import models
from .auth import AUTH, Authenticator
from .http import CONFIG, ApiError, Gateway, busy_error, check_request_text, reply
from .leases import IP_REST, MAC_REST, LeaseApi
from .openapi import Route, add_routes, openapi_document
from .reservations import ReservationApi
from .spaces import SpacesApi

log = structlog.get_logger("ipam.api")


class StatusApi:
    """What an operator asks: how far the pipeline is, whether this process is ready, its metrics."""

    def __init__(self, cfg: Config, read: ReadModel, bus: CommandBus, readiness: Callable[[], dict[str, bool]], spaces: SpacesApi,
                 declared=None) -> None:
        self.cfg, self.read, self.bus, self.readiness, self.spaces = cfg, read, bus, readiness, spaces
        self.declared = declared  # the declared configuration's reconciler, when IPAM_CONFIG_FILE is set
        self.metrics = Metrics()

    async def status(self, request: web.Request) -> web.Response:
        """Partitions (owner, epoch, how far decided and projected, what waits), pools, networks, pending leases."""
        rows = await self.read.partitions()
        ends = await topic_ends(self.cfg)
        partitions = []
        for r in rows:
            commands_end = ends.get((self.cfg.commands_topic, r["partition"]))
            events_end = ends.get((self.cfg.events_topic, r["partition"]))
            partitions.append(models.PartitionStatus(
                partition=r["partition"], generation=r["generation"], epoch=r["epoch"], owner=r["owner"],
                caught_up=r["caught_up"], commands_decided=r["commands_decided"], events_projected=r["events_projected"],
                commands_end=commands_end, events_end=events_end,
                commands_waiting=None if commands_end is None else max(0, commands_end - r["commands_decided"]),
                events_waiting=None if events_end is None else max(0, events_end - r["events_projected"])))
        pending = models.PendingCounts(mac=await self.read.pending(MAC_REST.kind), ip=await self.read.pending(IP_REST.kind))
        return reply(models.Status(broker=bool(ends) or not rows, partitions=partitions, pools=await self.spaces.pools(),
                                   networks=await self.spaces.networks(), pending=pending,
                                   config=None if self.declared is None else self.declared.status,
                                   database=without_password(self.cfg.database_dsn),
                                   kafka_bootstrap=self.cfg.kafka_bootstrap or ""))

    async def healthz(self, request: web.Request) -> web.Response:
        return reply({"status": "ok"})


    async def readyz(self, request: web.Request) -> web.Response:
        checks = dict(self.readiness())
        try:
            await asyncio.wait_for(self.read.ping(), 2)
            checks["database"] = True
        except Exception:  # any way the database is unreachable is "not ready"
            checks["database"] = False
        checks["notifications"] = await self.bus.healthy()
        checks["broker"] = await self.bus.broker_reachable()
        ok = all(checks.values())
        return reply({"ready": ok, "checks": checks}, 200 if ok else 503)

    async def metrics_text(self, request: web.Request) -> web.Response:
        await self.metrics.current(self.read)
        body, content_type = self.metrics.render()
        return web.Response(body=body, headers={"Content-Type": content_type})

    def routes(self) -> list[Route]:
        return [
            Route("GET", "/v1/status", self.status, "Partitions (owner, epoch, what waits), pools and networks with usage, "
                  "pending leases", "status", ok={200: (models.Status, "Status")}),
            Route("GET", "/healthz", self.healthz, "Process is up", "healthz", ok={200: (None, "Up")}),
            Route("GET", "/readyz", self.readyz, "Partitions loaded, broker and database reachable", "readyz",
                  ok={200: (None, "Ready"), 503: (None, "Not ready")}),
            Route("GET", "/metrics", self.metrics_text, "Prometheus metrics (text exposition format)", "metrics",
                  ok={200: (None, "Metrics")}, text=True),
        ]


def api_routes(cfg: Config, gateway: Gateway, read: ReadModel, bus: CommandBus, readiness: Callable[[], dict[str, bool]],
               declared=None) -> list[Route]:
    """Every REST route of the API role (the OpenAPI document among them, made from the others)."""
    spaces = SpacesApi(gateway, read)
    routes = spaces.routes()
    for rest in (MAC_REST, IP_REST):
        leases = LeaseApi(rest, cfg, gateway, read)
        routes += leases.routes() + ReservationApi(leases).routes()
    routes += StatusApi(cfg, read, bus, readiness, spaces, declared).routes()
    document = None

    async def openapi(request: web.Request) -> web.Response:
        nonlocal document
        document = document or openapi_document(routes)
        return reply(document)

    routes.append(Route("GET", "/openapi.json", openapi, "This document", "openapi", ok={200: (None, "OpenAPI 3.1 document")}))
    return routes


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


class Admission:
    """Every request answered by its deadline, and new leases refused at once under overload.

    The bus sheds by the commands waiting on it, but a lease request first reads Postgres (the VM's leases,
    the catalogue) and those reads queue on the pool; and before any of that a request waits, unseen, in
    the event loop's queue of ready sockets.  At twice the capacity both queues grew without bound, under
    no deadline, until the clients gave up (docs/performance.md, "Overload").  So a route marked ``sheds``
    is refused with 429 when the requests in flight here are old (``IPAM_SHED_AFTER_SECONDS`` with
    ``IPAM_SHED_MIN_WAITING`` of them, or more than ``IPAM_SHED_MAX_WAITING`` however young: the bus's
    ``Backlog`` counting requests from their first line of code) or when the loop runs ``LATE`` seconds
    behind (a timer that should fire every ``TICK`` seconds): a lease request waits for the loop at each of
    its ten or so awaits, so a loop 0.5 s late already made answers 5 s late, while at full capacity but not
    beyond it runs a few milliseconds late (measured: docs/performance.md).  Every request runs under
    ``IPAM_REQUEST_TIMEOUT_SECONDS``: 504 when it ends, wherever it waits."""

    TICK = 0.05
    LATE = 0.1

    def __init__(self, cfg: Config, routes: list[Route]) -> None:
        self.timeout = cfg.request_timeout_seconds
        self.backlog = Backlog(cfg.shed_after_seconds, cfg.shed_min_waiting, cfg.shed_max_waiting)
        self.late_limit = self.LATE if cfg.shed_after_seconds else 0.0  # IPAM_SHED_AFTER_SECONDS=0: no shedding
        self.shedding = {(r.method, r.path) for r in routes if r.sheds}
        self.late = 0.0  # how late the loop ran the last tick (s)
        self._ticking: asyncio.Task | None = None

    async def _tick(self) -> None:
        """``late``: the lesser lateness of the last two ticks, so one pause (a garbage collection) sheds nothing."""
        loop = asyncio.get_running_loop()
        before = 0.0
        while True:
            due = loop.time() + self.TICK
            await asyncio.sleep(self.TICK)
            now_late = loop.time() - due
            self.late, before = min(now_late, before), now_late
            telemetry.loop_late.set(now_late)

    def _refusal(self, now: float) -> web.Response | None:
        if self._ticking is None:
            self._ticking = asyncio.get_running_loop().create_task(self._tick())
        try:
            if self.late_limit and self.late >= self.late_limit:
                telemetry.requests_shed.inc()
                raise Busy(len(self.backlog), self.late)
            self.backlog.check(now)
        except Busy as e:
            return busy_error(e).response()
        return None

    @web.middleware
    async def handle(self, request: web.Request, handler):
        now = asyncio.get_running_loop().time()
        resource = request.match_info.route.resource
        if resource is not None and (request.method, resource.canonical) in self.shedding:
            refused = self._refusal(now)
            if refused is not None:
                return refused
        ticket = self.backlog.enter(now)
        try:
            async with asyncio.timeout(self.timeout):
                return await handler(request)
        except TimeoutError:
            return ApiError(504, "timeout", f"no answer within {self.timeout:g}s; send the same request again with the "
                                            "same Idempotency-Key or command_id to get the same outcome").response()
        finally:
            self.backlog.leave(ticket)


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


def make_app(cfg: Config, auth: Authenticator, routes: list[Route]) -> web.Application:
    app = web.Application(client_max_size=cfg.max_body_bytes, middlewares=[observed, Admission(cfg, routes).handle, errors])
    app[CONFIG] = cfg
    app[AUTH] = auth
    add_routes(app, routes)
    return app


def ops_routes(readiness: Callable[[], dict[str, bool]]) -> list[Route]:
    """Health, readiness and metrics of a process without the REST API (allocator, projector, watcher)."""

    async def healthz(request: web.Request) -> web.Response:
        return reply({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        checks = readiness()
        ok = all(checks.values())
        return reply({"ready": ok, "checks": checks}, 200 if ok else 503)

    async def metrics_text(request: web.Request) -> web.Response:
        body, content_type = render()
        return web.Response(body=body, headers={"Content-Type": content_type})

    return [Route("GET", "/healthz", healthz, "Process is up", "healthz"),
            Route("GET", "/readyz", readyz, "Ready", "readyz"),
            Route("GET", "/metrics", metrics_text, "Metrics", "metrics")]


SCRAPE_BUDGET_SECONDS = 0.1  # a refresh slower than this is done in the background, after the scrape


class Metrics:
    """The gauges read from Postgres (usage views, counts) for /metrics.

    Every scrape of every API replica would run the usage views: cheap for a small cluster, seconds
    at a million leases.  So a scrape waits for fresh gauges only while refreshing them takes less
    than ``SCRAPE_BUDGET_SECONDS``; once a refresh took longer, a scrape is answered with the gauges of
    the last refresh and starts the next one in the background (one at a time): the figures are then
    one scrape interval old, and a scrape costs the rendering only."""

    def __init__(self) -> None:
        self._refreshing: asyncio.Task | None = None
        self._last_refresh_seconds: float | None = None  # None: never refreshed
        r = self.registry = CollectorRegistry()
        self.collisions = Gauge("ipam_mac_collisions", "MACs used by more than one running VirtualMachineInstance", registry=r)
        self.conflicts = Gauge("ipam_mac_conflicts", "VM interfaces whose spec carries a MAC another interface holds",
                               registry=r)
        self.leases = {kind: Gauge(f"ipam_{kind.name}_leases", f"Live {kind.word} leases", [kind.space, "state"], registry=r)
                       for kind in KINDS}
        self.ip_free = Gauge("ipam_ip_free", "Addresses that can be handed out now, per subnet", ["network", "cidr"], registry=r)
        self.ip_drift = Gauge("ipam_ip_drift", "Addresses running guests use that are not their lease (ipam.ip_drift)",
                              registry=r)
        self.pool_used = Gauge("ipam_pool_used_ratio", "Share of a MAC pool leased or quarantined (0-1)", ["pool"], registry=r)
        self.subnet_used = Gauge("ipam_subnet_used_ratio", "Share of a network's subnet leased or quarantined (0-1)",
                                 ["network", "cidr"], registry=r)
        self.pending = Gauge("ipam_pending_leases", "Leases made at admission still waiting for their VM", ["kind"], registry=r)

    async def current(self, read) -> None:
        """Gauges as fresh as the scrape budget allows (see the class)."""
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.get_running_loop().create_task(self.refresh(read))
        if self._last_refresh_seconds is None or self._last_refresh_seconds < SCRAPE_BUDGET_SECONDS:
            await asyncio.shield(self._refreshing)

    async def settled(self) -> float | None:
        """Wait for a refresh in progress (if any) and return how long the last refresh took, in seconds
        (None: never refreshed); for measuring the scrape budget from outside."""
        if self._refreshing is not None:
            await asyncio.shield(self._refreshing)
        return self._last_refresh_seconds

    async def refresh(self, read) -> None:
        started = time.perf_counter()
        try:
            await self._refresh(read)
        finally:
            self._last_refresh_seconds = time.perf_counter() - started

    async def _refresh(self, read) -> None:
        # read everything first, then set without awaiting: a scrape rendering meanwhile sees whole sets
        gauges = await read.gauges()
        counts = {kind: (await read.lease_counts(kind), await read.pending(kind)) for kind in self.leases}
        self.collisions.set(gauges["collisions"])
        self.conflicts.set(gauges["conflicts"])
        self.ip_drift.set(gauges["drift"])
        for kind, gauge in self.leases.items():
            gauge.clear()
            for space, state, n in counts[kind][0]:
                gauge.labels(space, state).set(n)
            self.pending.labels(kind.name).set(counts[kind][1])
        for gauge in (self.pool_used, self.ip_free, self.subnet_used):
            gauge.clear()
        for pool, ratio in gauges["pools"]:
            self.pool_used.labels(pool).set(ratio)
        for network, cidr, free, ratio in gauges["subnets"]:
            self.ip_free.labels(network, cidr).set(free)
            self.subnet_used.labels(network, cidr).set(ratio)

    def render(self) -> tuple[bytes, str]:
        return render(self.registry)


def render(*registries: CollectorRegistry) -> tuple[bytes, str]:
    """This process's counters and histograms, then the given registries, in the text format."""
    return b"".join(generate_latest(r) for r in (telemetry.REGISTRY, *registries)), CONTENT_TYPE_LATEST


def without_password(dsn: str) -> str:
    """The DSN with any password left out, for status answers and logs."""
    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    host = (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=f"{parts.username}@{host}" if parts.username else host))
