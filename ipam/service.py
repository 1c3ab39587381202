"""Compose the roles into one process: ``all`` (default), or ``api``, ``allocator``, ``projector``, ``watcher``.

``api`` serves REST, and the admission webhook over HTTPS when TLS files are configured;
``watcher`` follows the Kubernetes API (part of ``all`` when IPAM_KUBE_API is set).

Start-up is a list of steps, each after the ones it needs (a local broker when none is
configured, migrations, the database pool, topics, the roles, the listeners), and each step
that leaves something running registers how to stop it.  Shutdown (SIGTERM/SIGINT) runs those
in reverse: stop taking work, finish the batch in flight, give the partition leases back, close
connections, exit 0.  Background work runs as named, supervised tasks (``supervisor``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import signal
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web

from .adapters.bus import CommandBus
from .adapters.kubernetes import NamespaceLabels
from .adapters.postgres.codecs import create_pool
from .adapters.postgres.migrations import check_current, check_partitions, ensure_database, migrate
from .adapters.postgres.read_model import ReadModel
from .adapters.topics import ensure_topics
from .api.app import api_routes, make_app, ops_routes
from .api.auth import Authenticator, TlsFiles
from .api.declared import DeclaredSpaces
from .api.http import Gateway
from .api.openapi import Route
from .api.space_changes import SpaceChanges
from .api.webhook import Webhook, make_webhook_app
from .config import Config
from .devenv import EmbeddedPostgres, LocalBroker
from .devenv.log_trim import LogTrimmer, trimmer_for
from .roles.allocator import Allocator
from .roles.projector import Projector
from .roles.retention import CommandRetention
from .roles.watchdog import TopicWatchdog
from .roles.watcher import Watcher
from .supervisor import Supervisor

log = structlog.get_logger("ipam.service")
ROLES = ("all", "api", "allocator", "projector", "watcher")


class Service:
    def __init__(self, cfg: Config, roles: set[str] | None = None) -> None:
        roles = set(roles or {"all"})
        if "all" in roles:
            roles = {"api", "allocator", "projector"} | ({"watcher"} if cfg.kube_api else set())
        self.roles, self.cfg = roles, cfg
        self.supervisor = Supervisor()
        self.namespaces = NamespaceLabels()
        self._stops: list[tuple[str, Callable[[], Awaitable | None]]] = []  # in start order
        self.broker: LocalBroker | None = None
        self.postgres: EmbeddedPostgres | None = None
        self.read: ReadModel | None = None
        self.bus: CommandBus | None = None
        self.allocator: Allocator | None = None
        self.projector: Projector | None = None
        self.watcher: Watcher | None = None
        self.trimmer: LogTrimmer | None = None
        self.retention: CommandRetention | None = None
        self.declared: DeclaredSpaces | None = None
        self.http_tls: TlsFiles | None = None
        self.webhook_tls: TlsFiles | None = None
        self.port: int | None = None
        self.webhook_port: int | None = None

    @property
    def url(self) -> str:
        host = self.cfg.http_addr.rsplit(":", 1)[0]
        return f"{'https' if self.http_tls else 'http'}://{host}:{self.port}"

    @property
    def db(self):
        return self.read.db

    def readiness(self) -> dict[str, bool]:
        checks = {}
        if self.allocator is not None:
            checks["allocator_partitions"] = self.allocator.ready
        if self.projector is not None:
            checks["projector_partitions"] = self.projector.ready
        if self.declared is not None:
            checks["declared_config_reconciled"] = self.declared.reconciled
        if self.watcher is not None:  # a standby watcher (another one leads) is ready as it is
            checks["watcher_synced"] = self.watcher.ready or not self.watcher.is_leader
        return checks

    def _on_stop(self, name: str, stop: Callable[[], Awaitable | None]) -> None:
        self._stops.append((name, stop))

    async def start(self) -> Service:
        cfg = self.cfg
        cfg.check_listener()
        self.auth = Authenticator(cfg)
        self._on_stop("tokens", self.auth.close)
        if cfg.kafka_bootstrap is None:
            self.broker = LocalBroker(cfg.local_broker_addr).start()
            self._on_stop("local broker", self.broker.stop)
            log.info("started local broker (memory only)", bootstrap=self.broker.bootstrap, log=self.broker.log_path)
            # no idempotent producer there, and one broker: one replica
            cfg = self.cfg = dataclasses.replace(cfg, kafka_bootstrap=self.broker.bootstrap, kafka_broker="local",
                                                 kafka_replication=1, kafka_min_insync_replicas=0)
        dsn = cfg.database_url
        if dsn is None:
            dsn = await self._start_embedded_postgres()
            cfg = self.cfg = dataclasses.replace(cfg, database_url=dsn)
        if cfg.migrate:
            applied = await migrate(dsn)
            if applied:
                log.info("migrations applied", versions=applied)
        else:
            await check_current(dsn)
        db = await create_pool(dsn, min_size=2, max_size=12)
        self._on_stop("database", db.close)
        read = self.read = ReadModel(db)
        async with db.acquire() as conn:
            await check_partitions(conn, cfg.partitions)
        await ensure_topics(cfg)
        await self._start_partition_roles(db)
        if self.roles & {"api", "watcher"}:
            bus = self.bus = CommandBus(cfg, db)
            await bus.start()
            self._on_stop("command bus", bus.stop)
        self._start_log_upkeep(db)
        if "api" in self.roles:
            await self._serve_api(read)
        else:
            await self._serve_rest(ops_routes(self.readiness))
        if "watcher" in self.roles:
            if not cfg.kube_api:
                raise ValueError("the watcher role needs IPAM_KUBE_API")
            assert self.bus is not None, "the watcher role starts the bus"
            self.watcher = Watcher(cfg, read, self.bus)
            self.supervisor.spawn("watcher", self.watcher.run, recover=self.watcher.recover)
            self._on_stop("watcher", lambda: self.supervisor.cancel("watcher"))
        log.info("ipam started", roles=sorted(self.roles), partitions=cfg.partitions, bootstrap=cfg.kafka_bootstrap)
        return self

    async def _serve_api(self, read: ReadModel) -> None:
        """REST (and the declared configuration it applies), and the webhook when TLS files are configured."""
        cfg = self.cfg
        assert self.bus is not None, "the api role starts the bus"
        gateway = Gateway(self.bus, cfg.request_timeout_seconds)
        if cfg.config_file:
            self.declared = DeclaredSpaces(cfg.config_file, cfg.config_poll_seconds, SpaceChanges(gateway, read), read)
            self.supervisor.spawn("declared-config", self.declared.run, recover=self.declared.recover)
            self._on_stop("declared configuration", lambda: self.supervisor.cancel("declared-config"))
        await self._serve_rest(api_routes(cfg, gateway, read, self.bus, self.readiness, self.declared))
        if cfg.tls_cert_file and cfg.tls_key_file:
            await self._serve_webhook(gateway, read)

    async def _start_embedded_postgres(self) -> str:
        """IPAM_DATABASE_URL unset: a Postgres of our own on IPAM_EMBEDDED_POSTGRES_DIR, stopped with us."""
        self.postgres = EmbeddedPostgres(self.cfg.embedded_postgres_dir, self.cfg.embedded_postgres_addr).start()
        self._on_stop("embedded Postgres", self.postgres.stop)
        await ensure_database(self.cfg.embedded_database_url)
        log.info("started embedded Postgres", dsn=self.cfg.embedded_database_url, data=str(self.postgres.data),
                 log=str(self.postgres.log_path))
        return self.cfg.embedded_database_url

    async def _start_partition_roles(self, db) -> None:
        if "projector" in self.roles:
            self.projector = Projector(self.cfg, db)
        if "allocator" in self.roles:
            self.allocator = Allocator(self.cfg, db)
        roles = [r for r in (self.projector, self.allocator) if r is not None]
        if not roles:
            return
        await asyncio.gather(*(r.start() for r in roles))
        for role in roles:
            # the beats are essential: a member that cannot beat for a reason other than an unreachable
            # Postgres would keep partitions nobody works, so its process stops and is restarted
            self.supervisor.spawn(f"{role.name}-membership", role.membership.run)
            self.supervisor.spawn(role.name, role.run, recover=role.recover)
        self.supervisor.spawn("topic-watchdog", TopicWatchdog(self.cfg, roles, lambda: self.trimmer).run)

        async def stop_roles() -> None:
            await self.supervisor.cancel("topic-watchdog")
            for role in roles:
                await role.stop()
            await self.supervisor.drain([r.name for r in roles], timeout=10)
            for role in roles:
                await role.close()

        self._on_stop("partition roles", stop_roles)

    def _start_log_upkeep(self, db) -> None:
        """Keep the commands log short: on Apache Kafka, DeleteRecords below what was projected (any process with
        the projector role); on the local broker, trim by swapping topics (devenv/log_trim.py, which decides)."""
        if not self.cfg.local_broker:
            if self.projector is not None:
                self.retention = CommandRetention(self.cfg, db)
                self.supervisor.spawn("command-retention", self.retention.run)
                self._on_stop("command retention", lambda: self.supervisor.cancel("command-retention"))
            return
        self.trimmer = trimmer_for(self.cfg, db, self.bus, self.allocator, self.projector,
                                   broker_started=self.broker is not None)

    async def _serve_rest(self, routes: list[Route]) -> None:
        cfg = self.cfg
        if not cfg.plain_http:
            self.http_tls = TlsFiles(cfg.tls_cert_file, cfg.tls_key_file)
            self.supervisor.spawn("rest-tls-reload", self.http_tls.watch)
            self._on_stop("REST certificate reload", lambda: self.supervisor.cancel("rest-tls-reload"))
        self.port = await self._listen("REST", make_app(cfg, self.auth, routes), cfg.http_addr,
                                       self.http_tls.context if self.http_tls else None)
        log.info("serving REST" if "api" in self.roles else "serving health and metrics", url=self.url,
                 tokens="required" if self.auth.enabled else "not required (plain HTTP on loopback)")

    async def _serve_webhook(self, gateway: Gateway, read: ReadModel) -> None:
        cfg = self.cfg
        tls = self.webhook_tls = TlsFiles(cfg.tls_cert_file, cfg.tls_key_file, cfg.webhook_client_ca_file)
        hook = Webhook(cfg, gateway, read, self.namespaces)
        self.supervisor.spawn("webhook-tls-reload", tls.watch)
        if cfg.kube_api:
            self.supervisor.spawn("namespaces", lambda: self.namespaces.follow(cfg.kube_api, cfg.resync_seconds))
        self._on_stop("webhook background", lambda: self.supervisor.cancel("webhook-tls-reload", "namespaces"))
        self.webhook_port = await self._listen("webhook", make_webhook_app(hook, cfg), cfg.webhook_addr, tls.context)
        log.info("serving the admission webhook", url=f"https://{cfg.webhook_addr.rsplit(':', 1)[0]}:{self.webhook_port}"
                                                      "/mutate-virtualmachines")

    async def _listen(self, name: str, app: web.Application, addr: str, ssl_context) -> int:
        # a client that hung up stops its request: under overload the work of requests nobody waits for
        # any more took the capacity of those still waiting (docs/performance.md, "Overload")
        runner = web.AppRunner(app, access_log=None, handle_signals=False, handler_cancellation=True)
        await runner.setup()
        self._on_stop(f"{name} listener", runner.cleanup)
        host, port = addr.rsplit(":", 1)
        # a deep accept queue: under overload a connection waits to be refused with 429, not for a SYN resent
        # seconds later (the default 128 dropped them, and clients waited 1 + 3 + 7 s to connect)
        site = web.TCPSite(runner, host, int(port), ssl_context=ssl_context, backlog=4096)
        await site.start()
        return runner.addresses[0][1]  # the port bound (addr may ask for 0: any free one)

    async def wait_ready(self, timeout: float = 60) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while not all(self.readiness().values()):
            if self.supervisor.failure is not None:
                raise self.supervisor.failure
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"not ready after {timeout}s: {self.readiness()}")
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        while self._stops:
            name, stop = self._stops.pop()
            try:
                result = stop()
                if asyncio.iscoroutine(result):
                    await result
            except Exception as e:  # keep stopping the rest
                log.warning("stopping failed", step=name, error=repr(e))
        await self.supervisor.cancel()
        log.info("ipam stopped")

    async def __aenter__(self) -> Service:
        try:
            return await self.start()
        except BaseException:  # what started before the failure stops, not left to the garbage collector
            await self.stop()
            raise

    async def __aexit__(self, *exc) -> None:
        await self.stop()


async def serve_forever(cfg: Config, roles: set[str]) -> None:
    """Run until SIGTERM/SIGINT; an essential task that fails stops the process with its error."""
    service = Service(cfg, roles)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await service.__aenter__()
    try:
        waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(service.supervisor.failed.wait())]
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for w in waits:
            w.cancel()
        if service.supervisor.failure is not None:
            raise service.supervisor.failure
    finally:
        await service.stop()
