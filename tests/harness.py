"""Test harness: real servers, fresh databases and topics per test, the service in-process or as a child process."""

from __future__ import annotations

import asyncio
import os
import signal
import ssl
import subprocess
import sys
import time
import uuid
from contextlib import asynccontextmanager
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg

from ipam.config import Config
from ipam.devenv import free_port
from ipam.service import Service

from .backends import LOCAL_BROKERS


async def create_database(admin_dsn: str) -> str:
    name = f"ipam_t_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return urlunsplit(urlsplit(admin_dsn)._replace(path=f"/{name}"))


async def drop_database(admin_dsn: str, dsn: str) -> None:
    name = urlsplit(dsn).path.lstrip("/")
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def make_config(kafka_bootstrap: str, database_url: str, **overrides) -> Config:
    uid = uuid.uuid4().hex[:8]
    values = dict(
        database_url=database_url, kafka_bootstrap=kafka_bootstrap, commands_topic=f"t{uid}.commands",
        events_topic=f"t{uid}.events", dead_letter_topic=f"t{uid}.dead-letter", group_prefix=f"t{uid}",
        http_addr="127.0.0.1:0", partitions=4,
        log_format="console", log_level="warning", plain_http=True,
        kafka_broker="local" if kafka_bootstrap in LOCAL_BROKERS else "apache-kafka",
    )
    values.update(overrides)
    return Config.from_env(env={}, **values)


def env_of(cfg: Config) -> dict[str, str]:
    """The environment that makes `ipam serve` use this configuration."""
    env = dict(os.environ)
    env.update({
        "IPAM_DATABASE_URL": cfg.database_url, "IPAM_KAFKA_BOOTSTRAP": cfg.kafka_bootstrap or "",
        "IPAM_COMMANDS_TOPIC": cfg.commands_topic, "IPAM_EVENTS_TOPIC": cfg.events_topic,
        "IPAM_DEAD_LETTER_TOPIC": cfg.dead_letter_topic,
        "IPAM_GROUP_PREFIX": cfg.group_prefix, "IPAM_PARTITIONS": str(cfg.partitions),
        "IPAM_HTTP_ADDR": cfg.http_addr, "IPAM_QUARANTINE_SECONDS": str(cfg.quarantine_seconds),
        "IPAM_LOG_LEVEL": cfg.log_level, "IPAM_LOG_FORMAT": "json", "IPAM_PLAIN_HTTP": str(cfg.plain_http).lower(),
        "IPAM_KAFKA_BROKER": cfg.kafka_broker, "IPAM_KAFKA_REPLICATION": str(cfg.kafka_replication),
        "IPAM_KAFKA_MIN_INSYNC_REPLICAS": str(cfg.kafka_min_insync_replicas),
    })
    return env


async def eventually(check, timeout: float = 20.0, interval: float = 0.1):
    """Await ``check()`` until it is truthy (and return it), failing after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


async def lease_one(http: aiohttp.ClientSession, url: str, pool: str, mac_range: str, namespace: str = "team") -> dict:
    """Create a pool serving ``namespace`` and lease one MAC in it through REST: the pipeline works end to end."""
    async with http.post(url + "/v1/pools", json={"name": pool, "range": mac_range, "namespaces": [namespace]}) as r:
        assert r.status == 201, await r.text()
    body = {"namespace": namespace, "vm": "v", "vm_uid": "u", "interface": "eth0"}
    async with http.post(url + "/v1/mac-leases", json=body) as r:
        assert r.status == 201, await r.text()
        return (await r.json())["lease"]


class ServiceProcess:
    """`ipam serve` as a child process, so a test can kill -9 it."""

    def __init__(self, cfg: Config, roles: tuple[str, ...] = ("all",), log_path: str | None = None,
                 extra_env: dict[str, str] | None = None, client_ssl: ssl.SSLContext | None = None,
                 wrapper: tuple[str, ...] = ()) -> None:
        """``wrapper``: what runs the process (``ip netns exec NAME``: in a network namespace of a test's own)."""
        port = free_port() if cfg.http_addr.endswith(":0") else int(cfg.http_addr.rsplit(":", 1)[1])
        self.cfg = cfg
        self.env = env_of(cfg)
        self.env["IPAM_HTTP_ADDR"] = f"127.0.0.1:{port}"
        self.env.update(extra_env or {})
        self.client_ssl = client_ssl  # set when the process serves HTTPS: how clients trust it
        self.url = f"{'https' if client_ssl else 'http'}://127.0.0.1:{port}"
        self.roles, self.wrapper = roles, wrapper
        self.log_path = log_path or f"/tmp/ipam-test-{uuid.uuid4().hex[:8]}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> ServiceProcess:
        args = [*self.wrapper, sys.executable, "-m", "ipam", "serve"]
        for r in self.roles:
            args += ["--role", r]
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(args, env=self.env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        return self

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def terminate(self, timeout: float = 30) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    async def wait_ready(self, timeout: float = 90) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self.client_ssl or True)) as http:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"ipam serve exited with {self.proc.returncode}; log: {self.log_path}")
                try:
                    async with http.get(self.url + "/readyz") as r:
                        if r.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                if asyncio.get_running_loop().time() > deadline:
                    raise TimeoutError(f"not ready after {timeout}s; log: {self.log_path}")
                await asyncio.sleep(0.2)


@asynccontextmanager
async def kubevirt_service(backends, kube_url: str, tls, pools: tuple[dict, ...] = (), **settings):
    """A service with the webhook (over HTTPS with ``tls``) and the watcher (on ``kube_url``) on a fresh
    database, the given pools made through REST; the database goes with it."""
    dsn = await create_database(backends.postgres_dsn)
    cfg = make_config(backends.kafka_bootstrap, dsn, tls_cert_file=str(tls.cert_file), tls_key_file=str(tls.key_file),
                      webhook_addr="127.0.0.1:0", kube_api=kube_url, **settings)
    try:
        async with Service(cfg) as svc:
            await svc.wait_ready()
            async with aiohttp.ClientSession() as http:
                for pool in pools:
                    async with http.post(f"{svc.url}/v1/pools", json=pool) as r:
                        assert r.status == 201, await r.json()
            yield svc
    finally:
        await drop_database(backends.postgres_dsn, dsn)


async def confirmed_to(dsn: str, view: str, vm: str, count: int, uid: str) -> None:
    """Wait until the watcher has bound ``count`` leases of ``vm`` (in a lease view) to the VM's uid."""

    async def done():
        conn = await asyncpg.connect(dsn)
        try:
            got = await conn.fetch(f"SELECT state, vm_uid FROM {view} WHERE vm = $1", vm)
        finally:
            await conn.close()
        return len(got) == count and all(r["state"] == "confirmed" and r["vm_uid"] == uid for r in got)

    await eventually(done)


async def query(svc, sql: str, *args) -> list:
    """Rows of one query on a service's database."""
    conn = await asyncpg.connect(svc.cfg.database_url)
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()
