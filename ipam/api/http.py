"""What every REST handler shares: JSON in and out, errors that name the field, decider codes -> HTTP status."""

from __future__ import annotations

import re
import time

import msgspec
from aiohttp import web

from ..config import Config
from ..domain.commands import nul_field
from . import models

_json = msgspec.json.Encoder()

# Stable rejection codes from the decider -> HTTP status.
STATUS = {
    "invalid": 400, "malformed": 400, "unknown_pool": 404, "not_found": 404, "no_pool": 422,
    "held": 409, "exists": 409, "overlap": 409, "conflict": 409, "exhausted": 409,
    "outside_pool": 422, "wrong_pool": 422, "static_only": 422, "misrouted": 500,
    "unknown_network": 404, "outside_network": 422, "unusable": 422, "in_use": 409, "limit": 422, "key_reused": 422,
    "internal": 500,
}
CONFIG = web.AppKey("config", Config)
_FIELD = re.compile(r"at `\$\.([A-Za-z_][\w.\[\]]*)`|field `([A-Za-z_]\w*)`")


class ApiError(Exception):
    """A request that cannot be served: becomes a JSON error body naming the field."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field

    def response(self) -> web.Response:
        body = models.Error(models.ErrorBody(code=self.code, message=self.message, field=self.field))
        return web.Response(body=_json.encode(body), status=self.status, content_type="application/json")


def reply(obj, status: int = 200) -> web.Response:
    return web.Response(body=_json.encode(obj), status=status, content_type="application/json")


def now_ms() -> int:
    return int(time.time() * 1000)


async def decode_body(request: web.Request, kind: type):
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise ApiError(413, "too_large", f"request body is over {request.app[CONFIG].max_body_bytes} bytes", "body") from None
    try:
        body = msgspec.json.decode(raw, type=kind)
    except msgspec.ValidationError as e:
        m = _FIELD.search(str(e))
        field = (m.group(1) or m.group(2)) if m else None
        raise ApiError(400, "invalid", str(e), field) from None
    except msgspec.DecodeError as e:
        raise ApiError(400, "invalid", f"body is not valid JSON: {e}", "body") from None
    bad = nul_field(body) if b"\\u0000" in raw else None  # JSON can only carry U+0000 escaped
    if bad is not None:
        raise ApiError(400, "invalid", f"{bad} contains U+0000, which ipam does not store", bad)
    return body


def check_request_text(request: web.Request) -> None:
    """Query and path parameters and the Idempotency-Key are text ipam stores or compares in Postgres."""
    for name, value in [*request.query.items(), *request.match_info.items()]:
        if "\x00" in value or "\x00" in name:
            raise ApiError(400, "invalid", f"{name} contains U+0000", name)
    for name, value in request.query.items():
        if not value:
            raise ApiError(400, "invalid", f"{name} is empty; leave it out to match everything", name)
    key = request.headers.get("Idempotency-Key")
    if key is not None and not 1 <= len(key) <= 128:
        raise ApiError(400, "invalid", f"Idempotency-Key is {len(key)} characters; a command id has 1 to 128",
                       "Idempotency-Key")


def limit_of(request: web.Request) -> int:
    """The ``limit`` query parameter of a listing (default 1000)."""
    limit = request.query.get("limit", "1000")
    if not limit.isdigit() or not 1 <= int(limit) <= 100000:
        raise ApiError(400, "invalid", "limit must be a whole number from 1 to 100000", "limit")
    return int(limit)


def raise_rejection(events: list[dict]) -> None:
    for ev in events:
        if ev["type"] == "CommandRejected":
            raise ApiError(STATUS.get(ev["code"], 400), ev["code"], ev["reason"], ev.get("field"))
