"""Compose the roles into one process: ``all`` (default), or ``api``, ``allocator``, ``projector``, ``watcher``.

``api`` serves REST, and the admission webhook over HTTPS when TLS files are configured;
``watcher`` follows the Kubernetes API (part of ``all`` when IPAM_KUBE_API is set).

Start-up is a list of steps, each after the ones it needs (a local broker when none is
configured, migrations, the database pool, topics, the roles, the listeners), and each step
that leaves something running registers how to stop it.  Shutdown (SIGTERM/SIGINT) runs those
in reverse: stop taking work, finish the batch in flight, leave the consumer groups, close
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
from .api.space_changes import SpaceChanges
from .api.webhook import Webhook, make_webhook_app
from .config import Config, ConfigError
from .devenv import EmbeddedPostgres, LocalBroker, started_here
from .devenv.log_trim import LogTrimmer
from .roles.allocator import Allocator
from .roles.projector import Projector
from .roles.retention import CommandRetention
from .roles.watchdog import TopicWatchdog
from .roles.watcher import Watcher
from .supervisor import Supervisor

log = structlog.get_logger("ipam.service")
ROLES = ("all", "api", "allocator", "projector", "watcher")
LOCAL_TRIM_RECORDS = 2000  # IPAM_LOG_TRIM_RECORDS on the local broker this process starts (docs/performance.md)


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
        if cfg.database_url is None:
            cfg = self.cfg = dataclasses.replace(cfg, database_url=await self._start_embedded_postgres())
        if cfg.migrate:
            applied = await migrate(cfg.database_url)
            if applied:
                log.info("migrations applied", versions=applied)
        else:
            await check_current(cfg.database_url)
        db = await create_pool(cfg.database_url, min_size=2, max_size=12)
        self._on_stop("database", db.close)
        self.read = ReadModel(db)
        async with db.acquire() as conn:
            await check_partitions(conn, cfg.partitions)
        await ensure_topics(cfg)
        await self._start_partition_roles()
        if self.roles & {"api", "watcher"}:
            self.bus = CommandBus(cfg, db)
            await self.bus.start()
            self._on_stop("command bus", self.bus.stop)
        self._start_log_upkeep()
        gateway = Gateway(self.bus, cfg.request_timeout_seconds) if self.bus else None
        if "api" in self.roles and cfg.config_file:
            self.declared = DeclaredSpaces(cfg.config_file, cfg.config_poll_seconds, SpaceChanges(gateway, self.read), self.read)
            self.supervisor.spawn("declared-config", self.declared.run, recover=self.declared.recover)
            self._on_stop("declared configuration", lambda: self.supervisor.cancel("declared-config"))
        await self._serve_rest(gateway)
        if "api" in self.roles and cfg.tls_cert_file and cfg.tls_key_file:
            await self._serve_webhook(gateway)
        if "watcher" in self.roles:
            if not cfg.kube_api:
                raise ValueError("the watcher role needs IPAM_KUBE_API")
            self.watcher = Watcher(cfg, self.read, self.bus)
            self.supervisor.spawn("watcher", self.watcher.run, recover=self.watcher.recover)
            self._on_stop("watcher", lambda: self.supervisor.cancel("watcher"))
        log.info("ipam started", roles=sorted(self.roles), partitions=cfg.partitions, bootstrap=cfg.kafka_bootstrap)
        return self

    async def _start_embedded_postgres(self) -> str:
        """IPAM_DATABASE_URL unset: a Postgres of our own on IPAM_EMBEDDED_POSTGRES_DIR, stopped with us."""
        self.postgres = EmbeddedPostgres(self.cfg.embedded_postgres_dir, self.cfg.embedded_postgres_addr).start()
        self._on_stop("embedded Postgres", self.postgres.stop)
        await ensure_database(self.cfg.embedded_database_url)
        log.info("started embedded Postgres", dsn=self.cfg.embedded_database_url, data=str(self.postgres.data),
                 log=str(self.postgres.log_path))
        return self.cfg.embedded_database_url

    async def _start_partition_roles(self) -> None:
        if "projector" in self.roles:
            self.projector = Projector(self.cfg, self.read.db)
        if "allocator" in self.roles:
            self.allocator = Allocator(self.cfg, self.read.db)
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

    def _start_log_upkeep(self) -> None:
        """Keep the commands log short: on Apache Kafka, DeleteRecords below what was projected (any process with
        the projector role); on the local broker, trim by swapping topics (devenv/log_trim.py)."""
        if not self.cfg.local_broker:
            if self.projector is not None:
                self.retention = CommandRetention(self.cfg, self.read.db)
                self.supervisor.spawn("command-retention", self.retention.run)
                self._on_stop("command retention", lambda: self.supervisor.cancel("command-retention"))
            return
        self._start_trimming()

    def _start_trimming(self) -> None:
        """On a broker only this process uses (the local one it started, or one IPAM_LOG_TRIM_RECORDS names as
        such and ipam started on this machine), trim the logs once projected; it needs the bus, the allocator and
        the projector in one process.  Any other broker is refused: swapping topics there could lose writes."""
        records = self.cfg.log_trim_records
        if records is None:
            records = LOCAL_TRIM_RECORDS if self.broker is not None else 0
        if records <= 0:
            return
        if self.broker is None and not started_here(self.cfg.kafka_bootstrap):
            raise ConfigError(f"IPAM_LOG_TRIM_RECORDS={records}: {self.cfg.kafka_bootstrap} is not a local broker ipam "
                              "started on this machine; trimming deletes and creates its topics, which only such a "
                              "broker allows (Apache Kafka keeps its log short by DeleteRecords instead)")
        if self.bus is None or self.allocator is None or self.projector is None:
            if self.cfg.log_trim_records is not None:
                raise ConfigError(f"IPAM_LOG_TRIM_RECORDS={records} needs the api, allocator and projector roles in one "
                                  "process (ipam serve, or --role all)")
            log.info("the local broker's log is not trimmed: this process does not run every role")
            return
        self.trimmer = LogTrimmer(self.cfg, self.read.db, self.bus, self.allocator, self.projector, records)
        log.info("trimming the broker's log once projected", records=records)

    async def _serve_rest(self, gateway: Gateway | None) -> None:
        cfg = self.cfg
        routes = api_routes(cfg, gateway, self.read, self.bus, self.readiness, self.declared) if "api" in self.roles else \
            ops_routes(self.readiness)
        if not cfg.plain_http:
            self.http_tls = TlsFiles(cfg.tls_cert_file, cfg.tls_key_file)
            self.supervisor.spawn("rest-tls-reload", self.http_tls.watch)
            self._on_stop("REST certificate reload", lambda: self.supervisor.cancel("rest-tls-reload"))
        self.port = await self._listen("REST", make_app(cfg, self.auth, routes), cfg.http_addr,
                                       self.http_tls.context if self.http_tls else None)
        log.info("serving REST" if "api" in self.roles else "serving health and metrics", url=self.url,
                 tokens="required" if self.auth.enabled else "not required (plain HTTP on loopback)")

    async def _serve_webhook(self, gateway: Gateway) -> None:
        cfg = self.cfg
        tls = self.webhook_tls = TlsFiles(cfg.tls_cert_file, cfg.tls_key_file, cfg.webhook_client_ca_file)
        hook = Webhook(cfg, gateway, self.read, self.namespaces)
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
        return site._server.sockets[0].getsockname()[1]

    async def wait_ready(self, timeout: float = 60) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while not all(self.readiness().values()):
            if self.supervisor.failed.is_set():
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
