"""Type codecs set on every connection: macaddr travels as canonical text in Python and as
six raw bytes on the wire (asyncpg has no binary macaddr codec, which COPY needs); inet is
written from the domain's integer address keys (or text, or ``ipaddress`` objects) straight to
its binary form, because asyncpg's own codec formats and re-parses every address (it was most of
the IP projection's time), and read back as canonical text."""

from __future__ import annotations

import ipaddress

import asyncpg

from ...domain.ip import V6, parse_address

_PGSQL_AF_INET, _PGSQL_AF_INET6 = 2, 3


def _encode_mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", "").replace("-", "").replace(".", ""))


def _decode_mac(data: bytes) -> str:
    return data.hex(":")


def _encode_inet(value) -> bytes:
    bits = None
    if isinstance(value, int):
        key = value
    elif isinstance(value, str):
        if "/" in value:
            iface = ipaddress.ip_interface(value.strip())
            key, bits = int(iface.ip) | (V6 if iface.version == 6 else 0), iface.network.prefixlen
        else:
            key = parse_address(value)
    else:  # ipaddress.IPv4Address / IPv6Address
        key = int(value) | (V6 if value.version == 6 else 0)
    if key & V6:
        return bytes((_PGSQL_AF_INET6, 128 if bits is None else bits, 0, 16)) + (key ^ V6).to_bytes(16, "big")
    return bytes((_PGSQL_AF_INET, 32 if bits is None else bits, 0, 4)) + key.to_bytes(4, "big")


def _decode_inet(data: bytes) -> str:
    family, bits = data[0], data[1]
    value = int.from_bytes(data[4:], "big")
    if family == _PGSQL_AF_INET6:
        text, full = str(ipaddress.IPv6Address(value)), 128
    else:
        text, full = str(ipaddress.IPv4Address(value)), 32
    return text if bits == full else f"{text}/{bits}"


async def init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("macaddr", schema="pg_catalog", encoder=_encode_mac, decoder=_decode_mac, format="binary")
    await conn.set_type_codec("inet", schema="pg_catalog", encoder=_encode_inet, decoder=_decode_inet, format="binary")


# Statements are prepared once per connection and run for the life of the process. With the default
# plan_cache_mode, Postgres settles on a generic plan after five runs; planned while a table is still
# small (a fresh database), that plan is a sequential scan, kept as the table grows to millions of rows:
# the projector's per-batch DELETE ... WHERE mac = ANY($1) then slowed the pipeline several-fold within
# seconds (docs/performance.md). Batched statements are few and large, so planning each one is cheap.
SERVER_SETTINGS = {"plan_cache_mode": "force_custom_plan"}


async def _keep_session(_conn: asyncpg.Connection) -> None:
    """What a connection goes back to the pool with: asyncpg's default reset sends ``pg_advisory_unlock_all(); CLOSE
    ALL; UNLISTEN *; RESET ALL`` on every release, a round trip that took 6 % of the service's CPU at 500 REST
    leases/s.  ipam's pooled connections keep no session state: no SET, no LISTEN (the outcome listener has a
    connection of its own), cursors only inside transactions (rolled back by asyncpg before this runs), and the
    one session lock (``ReadModel.pool_change``) is unlocked by its holder, which closes the connection when it
    cannot.  So nothing to send."""


async def create_pool(dsn: str, **kwargs) -> asyncpg.Pool:
    kwargs["server_settings"] = {**SERVER_SETTINGS, **kwargs.get("server_settings", {})}
    return await asyncpg.create_pool(dsn, init=init_connection, reset=_keep_session, **kwargs)


async def connect(dsn: str) -> asyncpg.Connection:
    conn = await asyncpg.connect(dsn, server_settings=SERVER_SETTINGS)
    await init_connection(conn)
    return conn
