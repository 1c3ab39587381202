"""Type codecs set on every connection: macaddr travels as canonical text in Python and as
six raw bytes on the wire (asyncpg has no binary macaddr codec, which COPY needs)."""

from __future__ import annotations

import asyncpg


def _encode_mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", "").replace("-", "").replace(".", ""))


def _decode_mac(data: bytes) -> str:
    return data.hex(":")


async def init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("macaddr", schema="pg_catalog", encoder=_encode_mac, decoder=_decode_mac, format="binary")


async def create_pool(dsn: str, **kwargs) -> asyncpg.Pool:
    return await asyncpg.create_pool(dsn, init=init_connection, **kwargs)


async def connect(dsn: str) -> asyncpg.Connection:
    conn = await asyncpg.connect(dsn)
    await init_connection(conn)
    return conn
