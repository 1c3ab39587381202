"""The stack every scenario runs on: a fresh database and `ipam serve` process, its pools and networks."""

from __future__ import annotations

import asyncio
import subprocess

import aiohttp

from ipam.devenv import free_port
from ipam.devenv.log_trim import LOCAL_TRIM_RECORDS
from tests.harness import ServiceProcess, create_database, drop_database, make_config
from tests.kubevirt import WebhookTls

from .cpu import CpuWindow

POOLS = [f"bench-{i:02d}" for i in range(16)]
NETWORKS = [f"net-{i:02d}" for i in range(16)]
# Requests come from 16 namespaces of each kind, one bound to each pool (and, for VMs on ipam networks,
# attached to each network), so they spread over the partitions as a real cluster's do.  Sending every
# request to one pool made one partition of the local broker grow until it slowed every later scenario.
SPREAD = 16


def pool_range(i: int) -> str:
    return f"0a:{i:02x}:00:00:00:00-0a:{i:02x}:ff:ff:ff:ff"


async def create_pools(url: str, **session) -> None:
    async with aiohttp.ClientSession(**session) as http:
        for i, name in enumerate(POOLS):
            body = {"name": name, "range": pool_range(i), "default": i == 0,
                    "namespaces": [f"lat-{i}", f"hook-{i}", f"hook-ip-{i}"]}
            async with http.post(f"{url}/v1/pools", json=body) as r:
                assert r.status == 201, await r.text()


async def create_networks(url: str, **session) -> None:
    async with aiohttp.ClientSession(**session) as http:
        for i, name in enumerate(NETWORKS):
            body = {"name": name, "subnets": [{"cidr": f"10.{100 + i}.0.0/16", "gateway": f"10.{100 + i}.0.1"},
                                              {"cidr": f"fd00:{100 + i:x}::/64", "gateway": f"fd00:{100 + i:x}::1"}],
                    "attachments": [f"hook-ip-{i}/blue-net", f"hook-ip-{i}/green-net"]}
            async with http.post(f"{url}/v1/networks", json=body) as r:
                assert r.status == 201, await r.text()


class Stack:
    """A fresh database and ``ipam serve`` process, on a fresh log when the broker is the local one.

    Every scenario (and every rate) gets its own: the local broker slows down as a partition grows
    (docs/performance.md), so a scenario run after others would measure their leftovers, not itself.
    Baseline and pipelines still share the Postgres server, as the comparison requires."""

    TOKEN = "bench-admin-token-0123456789"

    def __init__(self, backends, tls: WebhookTls, partitions: int, secure: bool = False, trim: bool = True,
                 wrapper: tuple[str, ...] = (), extra_env: dict[str, str] | None = None) -> None:
        """``secure``: REST over HTTPS with a bearer token (what production runs), not plain HTTP on loopback.
        ``trim``: trim the local broker's log as ``ipam serve`` does; not for scenarios that produce commands
        to the topic themselves (the trimmer holds back only the commands of the service's own API)."""
        self.backends, self.tls, self.partitions, self.secure, self.trim = backends, tls, partitions, secure, trim
        self.wrapper = wrapper  # what runs the service (bench.traced: under tracemalloc)
        self.extra_env = extra_env or {}  # more settings of the service (the soak: its Kubernetes API)

    def session(self, limit: int = 100) -> dict:
        """aiohttp.ClientSession arguments that reach this stack's REST API."""
        if not self.secure:
            return {"connector": aiohttp.TCPConnector(limit=limit)}
        return {"connector": aiohttp.TCPConnector(limit=limit, ssl=self.tls.client_context()),
                "headers": {"Authorization": f"Bearer {self.TOKEN}"}}

    async def __aenter__(self) -> Stack:
        if self.backends.broker is not None:
            self.backends.broker.restart()
        self.dsn = await create_database(self.backends.postgres_dsn)
        self.cfg = make_config(self.backends.kafka_bootstrap, self.dsn, partitions=self.partitions)
        port = free_port()
        self.webhook_url = f"https://127.0.0.1:{port}/mutate-virtualmachines"
        env = {"IPAM_TLS_CERT_FILE": str(self.tls.cert_file), "IPAM_TLS_KEY_FILE": str(self.tls.key_file),
               "IPAM_WEBHOOK_ADDR": f"127.0.0.1:{port}", **self.extra_env}
        if self.trim and self.backends.broker is not None:  # as `ipam serve` trims the local broker it starts
            env["IPAM_LOG_TRIM_RECORDS"] = str(LOCAL_TRIM_RECORDS)
        if self.secure:
            tokens = self.tls.folder / "bench-tokens"
            tokens.write_text(f"{self.TOKEN} admin bench\n")
            env |= {"IPAM_PLAIN_HTTP": "false", "IPAM_TOKEN_FILE": str(tokens)}
        self.svc = ServiceProcess(self.cfg, log_path="/tmp/ipam-bench-service.log", extra_env=env, wrapper=self.wrapper,
                                  client_ssl=self.tls.client_context() if self.secure else None).start()
        try:
            await self.svc.wait_ready()
            await create_pools(self.svc.url, **self.session())
            await create_networks(self.svc.url, **self.session())
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    def cpu(self) -> CpuWindow:
        """A window on the CPU time of this stack's processes: ``ipam serve``, the broker, Postgres."""
        return CpuWindow({"service": self.svc.proc.pid, **self.backends.process_roots()})

    def stop_service(self) -> None:
        try:
            self.svc.terminate(30)
        except subprocess.TimeoutExpired:
            self.svc.kill()

    async def __aexit__(self, *exc) -> None:
        try:
            await asyncio.to_thread(self.svc.terminate, 30)
        except subprocess.TimeoutExpired:
            pass
        self.svc.kill()
        await drop_database(self.backends.postgres_dsn, self.dsn)
