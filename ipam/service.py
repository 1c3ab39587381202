"""Compose the roles into one process: ``all`` (default), or ``api``, ``allocator``, ``projector``, ``watcher``.

``api`` serves REST, and the admission webhook over HTTPS when TLS files are configured;
``watcher`` follows the Kubernetes API (part of ``all`` when IPAM_KUBE_API is set).

Start-up: a local broker when none is configured, migrations, topics; then the roles.
Shutdown (SIGTERM/SIGINT): stop taking work, finish the batch in flight, leave the
consumer groups, close connections, exit 0.
"""

from __future__ import annotations

import asyncio
import dataclasses
import signal

import asyncpg
import structlog
from aiohttp import web

from .adapters.kafka import ensure_topics, missing_topics
from .adapters.postgres.codecs import create_pool
from .adapters.postgres.migrations import check_current, check_partitions, migrate
from .adapters.kubernetes import NamespaceLabels
from .api.app import Api, make_app, make_ops_app
from .api.auth import Authenticator
from .api.tls import TlsFiles
from .api.webhook import Webhook, make_webhook_app
from .adapters.bus import CommandBus
from .config import Config
from .devenv import LocalBroker
from .roles.allocator import Allocator
from .roles.projector import ProjectorRole
from .roles.watcher import Watcher

log = structlog.get_logger("ipam.service")
ROLES = ("all", "api", "allocator", "projector", "watcher")


class Service:
    def __init__(self, cfg: Config, roles: set[str] | None = None) -> None:
        roles = set(roles or {"all"})
        if "all" in roles:
            roles = {"api", "allocator", "projector"} | ({"watcher"} if cfg.kube_api else set())
        self.roles = roles
        self.cfg = cfg
        self.broker: LocalBroker | None = None
        self.db: asyncpg.Pool | None = None
        self.allocator: Allocator | None = None
        self.projector: ProjectorRole | None = None
        self.bus: CommandBus | None = None
        self._runner: web.AppRunner | None = None
        self._webhook_runner: web.AppRunner | None = None
        self.webhook: Webhook | None = None
        self.tls: TlsFiles | None = None
        self.http_tls: TlsFiles | None = None
        self.auth: Authenticator | None = None
        self.webhook_port: int | None = None
        self.watcher: Watcher | None = None
        self.namespaces = NamespaceLabels()
        self._tasks: list[asyncio.Task] = []
        self.port: int | None = None
        self._stopping = False

    @property
    def url(self) -> str:
        host = self.cfg.http_addr.rsplit(":", 1)[0]
        return f"{'https' if self.http_tls else 'http'}://{host}:{self.port}"

    def readiness(self) -> dict[str, bool]:
        checks = {}
        if self.allocator is not None:
            checks["allocator_partitions"] = self.allocator.ready
        if self.projector is not None:
            checks["projector_partitions"] = self.projector.ready
        if self.watcher is not None:  # a standby watcher (another one leads) is ready as it is
            checks["watcher_synced"] = self.watcher.ready or not self.watcher.is_leader
        return checks

    async def start(self) -> Service:
        cfg = self.cfg
        cfg.check_listener()
        self.auth = Authenticator(cfg)
        if cfg.kafka_bootstrap is None:
            self.broker = LocalBroker(cfg.local_broker_addr).start()
            log.info("started local broker (memory only)", bootstrap=self.broker.bootstrap, log=self.broker.log_path)
            cfg = self.cfg = dataclasses.replace(cfg, kafka_bootstrap=self.broker.bootstrap)
        if cfg.migrate:
            applied = await migrate(cfg.database_url)
            if applied:
                log.info("migrations applied", versions=applied)
        else:
            await check_current(cfg.database_url)
        self.db = await create_pool(cfg.database_url, min_size=2, max_size=12)
        async with self.db.acquire() as conn:
            await check_partitions(conn, cfg.partitions)
        await ensure_topics(cfg)
        # Group joins take seconds on some brokers: join both groups at once.
        if "projector" in self.roles:
            self.projector = ProjectorRole(cfg, self.db)
        if "allocator" in self.roles:
            self.allocator = Allocator(cfg, self.db)
        roles = [r for r in (self.projector, self.allocator) if r is not None]
        await asyncio.gather(*(r.start() for r in roles))
        for role in roles:
            self._tasks.append(asyncio.create_task(self._supervise(role), name=type(role).__name__))
        if roles:
            self._tasks.append(asyncio.create_task(self._watch_topics(), name="topic-watchdog"))
        if self.roles & {"api", "watcher"}:
            self.bus = CommandBus(cfg, self.db)
            await self.bus.start()
        api = Api(cfg, self.db, self.bus, self.readiness) if "api" in self.roles else None
        app = make_app(api, cfg, self.auth) if api is not None else make_ops_app(self.readiness, cfg, self.auth)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        if not cfg.plain_http:
            self.http_tls = TlsFiles(cfg.tls_cert_file, cfg.tls_key_file)
            self._tasks.append(asyncio.create_task(self.http_tls.watch(), name="tls-reload"))
        host, port = cfg.http_addr.rsplit(":", 1)
        site = web.TCPSite(self._runner, host, int(port), ssl_context=self.http_tls.context if self.http_tls else None)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        log.info("serving REST" if api else "serving health and metrics", url=self.url,
                 tokens="required" if self.auth.enabled else "not required (plain HTTP on loopback)")
        if api is not None and cfg.tls_cert_file and cfg.tls_key_file:
            await self._serve_webhook(api)
        if "watcher" in self.roles:
            if not cfg.kube_api:
                raise ValueError("the watcher role needs IPAM_KUBE_API")
            self.watcher = Watcher(cfg, self.db, self.bus)
            self._tasks.append(asyncio.create_task(self._supervise(self.watcher), name="Watcher"))
        log.info("ipam started", roles=sorted(self.roles), partitions=cfg.partitions, bootstrap=cfg.kafka_bootstrap)
        return self

    async def _serve_webhook(self, api: Api) -> None:
        cfg = self.cfg
        self.tls = TlsFiles(cfg.tls_cert_file, cfg.tls_key_file, cfg.webhook_client_ca_file)
        self.webhook = Webhook(cfg, api, self.namespaces)
        self._webhook_runner = web.AppRunner(make_webhook_app(self.webhook, cfg), access_log=None, handle_signals=False)
        await self._webhook_runner.setup()
        host, port = cfg.webhook_addr.rsplit(":", 1)
        site = web.TCPSite(self._webhook_runner, host, int(port), ssl_context=self.tls.context)
        await site.start()
        self.webhook_port = site._server.sockets[0].getsockname()[1]
        self._tasks.append(asyncio.create_task(self.tls.watch(), name="tls-reload"))
        if cfg.kube_api:
            self._tasks.append(asyncio.create_task(self.namespaces.follow(cfg.kube_api, cfg.resync_seconds), name="namespaces"))
        log.info("serving the admission webhook", url=f"https://{host}:{self.webhook_port}/mutate-virtualmachines")

    async def _supervise(self, role) -> None:
        """Keep a role running through broker and database hiccups: recover from Postgres, go on."""
        while True:
            try:
                await role.run()
                return
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.error("role failed; recovering its partitions from Postgres", role=type(role).__name__, error=repr(e))
                while not await _attempt(role.recover, "recovery failed; retrying", role=type(role).__name__):
                    pass

    async def _watch_topics(self) -> None:
        """A broker that lost its topics (the memory-only one after a restart) gets them back."""
        while not self._stopping:
            await _attempt(self._recreate_missing_topics, "cannot check topics")

    async def _recreate_missing_topics(self) -> None:
        missing = await missing_topics(self.cfg)
        if missing:
            log.warning("topics missing on the broker; creating them again", topics=missing)
            await ensure_topics(self.cfg)

    async def wait_ready(self, timeout: float = 60) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while not all(self.readiness().values()):
            for t in self._tasks:
                if t.done() and not t.cancelled() and t.exception():
                    raise t.exception()
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"not ready after {timeout}s: {self.readiness()}")
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        self._stopping = True
        for t in self._tasks:
            if t.get_name() in ("topic-watchdog", "tls-reload", "Watcher", "namespaces"):
                t.cancel()
        if self._webhook_runner is not None:
            await self._webhook_runner.cleanup()
        if self._runner is not None:
            await self._runner.cleanup()
        for role in (self.allocator, self.projector):
            if role is not None:
                await role.stop()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=10)
        for role in (self.allocator, self.projector):
            if role is not None:
                await role.close()
        if self.bus is not None:
            await self.bus.stop()
        if self.db is not None:
            await self.db.close()
        if self.auth is not None:
            await self.auth.close()
        if self.broker is not None:
            self.broker.stop()
        log.info("ipam stopped")

    async def __aenter__(self) -> Service:
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.stop()


async def _attempt(step, failure: str, pause: float = 1.0, **context) -> bool:
    """Wait ``pause``, run ``step``; log ``failure`` and return False if it raised."""
    await asyncio.sleep(pause)
    try:
        await step()
        return True
    except asyncio.CancelledError:
        raise
    except Exception as e:
        log.warning(failure, error=repr(e), **context)
        return False


async def serve_forever(cfg: Config, roles: set[str]) -> None:
    service = Service(cfg, roles)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await service.start()
    try:
        waiter = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait([waiter, *service._tasks], return_when=asyncio.FIRST_COMPLETED)
        for t in done:
            if t is not waiter and not t.cancelled() and t.exception():
                raise t.exception()
    finally:
        await service.stop()
