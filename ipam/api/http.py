"""What every REST handler and the webhook share: JSON in and out, errors that name the field, decider codes
mapped to HTTP statuses, and the command gateway.

The gateway is how commands are submitted: a client's own command id (Idempotency-Key, command_id,
the webhook's review uid) may have been decided before, after a restart or by another replica; its
stored outcome is the answer, provided it answers the same kind of request.  Otherwise the command
goes through the bus, and the answer comes once the projector has committed it."""

from __future__ import annotations

import asyncio
import hashlib
import re
import uuid

import msgspec
from aiohttp import web

from ..adapters.bus import Busy, CommandBus, OutcomeTimeout
from ..config import Config
from ..domain.commands import nul_field
from ..domain.events import AnyEvent, CommandRejected
from . import models

_json = msgspec.json.Encoder()

# Stable rejection codes from the decider -> HTTP status.
STATUS = {
    "invalid": 400, "malformed": 400, "unknown_pool": 404, "not_found": 404, "no_pool": 422,
    "held": 409, "exists": 409, "overlap": 409, "conflict": 409, "exhausted": 409,
    "outside_pool": 422, "wrong_pool": 422, "static_only": 422, "misrouted": 500,
    "unknown_network": 404, "outside_network": 422, "unusable": 422, "in_use": 409, "limit": 422, "key_reused": 422,
    "internal": 500, "not_granted": 409,
}
CONFIG = web.AppKey("config", Config)
_FIELD = re.compile(r"at `\$\.([A-Za-z_][\w.\[\]]*)`|field `([A-Za-z_]\w*)`")


class ApiError(Exception):
    """A request that cannot be served: becomes a JSON error body naming the field."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None,
                 retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field
        self.retry_after = retry_after  # seconds, sent as Retry-After (429 under overload)

    def response(self) -> web.Response:
        body = models.Error(models.ErrorBody(code=self.code, message=self.message, field=self.field))
        headers = {"Retry-After": str(self.retry_after)} if self.retry_after is not None else None
        return web.Response(body=_json.encode(body), status=self.status, content_type="application/json", headers=headers)


def busy_error(e: Busy) -> ApiError:
    """429 with Retry-After: refused at once, nothing was done, the same request may be sent again."""
    return ApiError(429, "busy", f"ipam is busy ({e}); nothing was done, retry in {e.retry_after}s",
                    retry_after=e.retry_after)


def reply(obj, status: int = 200) -> web.Response:
    return web.Response(body=_json.encode(obj), status=status, content_type="application/json")


async def decode_body(request: web.Request, kind: type):
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise ApiError(413, "too_large", f"request body is over {request.app[CONFIG].max_body_bytes} bytes", "body") from None
    try:
        body: msgspec.Struct = msgspec.json.decode(raw, type=kind)
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


def raise_rejection(events: list[AnyEvent]) -> None:
    for ev in events:
        if isinstance(ev, CommandRejected):
            raise ApiError(STATUS.get(ev.code, 400), ev.code, ev.reason, ev.field)


# The address space a command (or event) is about: a retry must be the same kind of request, and
# no command of one family ever produces events of another.
_POOL_MESSAGES = ("CreatePool", "PoolCreated", "ChangePool", "PoolChanged", "DeletePool", "PoolDeleted", "SetPoolRange",
                  "PoolRangeSet", "RetirePool", "PoolRetired")
_FAMILY = {**dict.fromkeys(_POOL_MESSAGES, "pool"), "DefineNetwork": "network", "DeleteNetwork": "network",
           "NetworkDefined": "network", "NetworkDeleted": "network", "ObserveVmIps": "ip", "ExpirePendingIp": "ip"}


def _family(name: str) -> str | None:
    if name in _FAMILY:
        return _FAMILY[name]
    if name.startswith(("Mac", "LeaseMac", "ReleaseMac", "ReleaseOwner", "ObserveVm", "ExpirePending")):
        return "mac"
    if name.startswith(("Ip", "LeaseIp", "ReleaseIp", "ObserveGuestIps")):
        return "ip"
    return None  # unknown: no opinion


def answers(command, events: list[AnyEvent]) -> bool:
    """Whether a stored outcome can be the outcome of this command (same family of request)."""
    mine = _family(type(command).__name__)
    for ev in events:
        theirs = _family(ev.command if isinstance(ev, CommandRejected) else type(ev).__name__)
        if theirs is not None and theirs != mine:
            return False
    return True


def command_id(request: web.Request, body_id: str | None) -> str:
    """The client's retry key, or a fresh id (prefixed so it never collides with a client key)."""
    return request.headers.get("Idempotency-Key") or body_id or f"api-{uuid.uuid4()}"


def fanout_id(key: str, space: str) -> str:
    """The id of the command one request sends to one space (``key/space``), within a command id's 128
    characters: a long key is replaced by its digest, the same on every retry."""
    if len(key) > 64:
        key = "k" + hashlib.blake2b(key.encode(), digest_size=16).hexdigest()
    return f"{key}/{space}"


class Gateway:
    """The one way a request's commands reach the log and their answers come back: REST, reservations, spaces and
    the webhook all submit through it (the CNI plugin reaches it through REST).  The bus beneath is the adapter
    (produce, wait for the committed outcome); the gateway adds what every HTTP surface needs on top: stored
    outcomes for retried ids, the check that a reused id asks the same kind of thing, overload refusals, and
    the HTTP errors for all of them."""

    def __init__(self, bus: CommandBus, timeout_seconds: float) -> None:
        self.bus, self.timeout_seconds = bus, timeout_seconds

    async def submit(self, command, shed: bool = False) -> list[AnyEvent]:
        """Answer from the stored outcome when a client's command id was decided before; else decide it
        (``shed``: refused with 429 under overload, for new leases)."""
        if not command.command_id.startswith("api-"):
            known = await self.bus.outcome(command.command_id)
            if known is not None:
                return self._stored(command, known)
        return await self.decide(command, shed)

    async def submit_all(self, commands: list) -> list[list[AnyEvent]]:
        """Each command's answer, in order, as ``submit`` gives it: the stored outcomes read in one query, the
        new commands admitted together (429 before any is sent under overload), then decided concurrently."""
        known = await self.bus.outcomes([c.command_id for c in commands])
        self.admit(sum(c.command_id not in known for c in commands))

        async def one(command) -> list[AnyEvent]:
            stored = known.get(command.command_id)
            return self._stored(command, stored) if stored is not None else await self.decide(command)

        return list(await asyncio.gather(*(one(c) for c in commands)))

    @staticmethod
    def _stored(command, known: list[AnyEvent]) -> list[AnyEvent]:
        if not answers(command, known):
            raise ApiError(422, "key_reused", f"command id {command.command_id!r} was already used for another kind "
                                              "of request; use a new Idempotency-Key or command_id", "Idempotency-Key")
        return known

    async def decide(self, command, shed: bool = False) -> list[AnyEvent]:
        """Send the command and wait for its committed answer (504 ``timeout`` when none comes in time)."""
        try:
            return await self.bus.submit(command, shed)
        except Busy as e:
            raise busy_error(e) from None
        except OutcomeTimeout:
            raise ApiError(504, "timeout", f"no answer within {self.timeout_seconds:g}s; retry with command_id "
                                           f"{command.command_id} to get the same outcome") from None

    def admit(self, commands: int) -> None:
        """Refuse (429) a request of ``commands`` new leases at once under overload, before any is sent."""
        try:
            self.bus.admit(commands)
        except Busy as e:
            raise busy_error(e) from None

    async def decided_fanout(self, key: str) -> list[list[AnyEvent]]:
        """Outcomes of the commands one earlier request fanned out to (``fanout_id``)."""
        return await self.bus.outcomes_for_key(fanout_id(key, "")[:-1])
