"""The command gateway: how REST and the webhook submit commands and get their answers.

A client's own command id (``Idempotency-Key``, ``command_id``, the webhook's review uid) may
have been decided before, after a restart or by another replica: its stored outcome is the
answer, provided it answers the same kind of request.  Otherwise the command goes through the
bus, and the answer comes once the projector has committed it.
"""

from __future__ import annotations

import hashlib
import uuid

from aiohttp import web

from ..adapters.bus import CommandBus, OutcomeTimeout
from .http import ApiError

# The address space a command (or event) is about: a retry must be the same kind of request, and
# no command of one family ever produces events of another.
_FAMILY = {"CreatePool": "pool", "PoolCreated": "pool", "DefineNetwork": "network", "DeleteNetwork": "network",
           "NetworkDefined": "network", "NetworkDeleted": "network", "ObserveVmIps": "ip", "ExpirePendingIp": "ip"}


def _family(name: str) -> str | None:
    if name in _FAMILY:
        return _FAMILY[name]
    if name.startswith(("Mac", "LeaseMac", "ReleaseMac", "ReleaseOwner", "ObserveVm", "ExpirePending")):
        return "mac"
    if name.startswith(("Ip", "LeaseIp", "ReleaseIp", "ObserveGuestIps")):
        return "ip"
    return None  # unknown: no opinion


def answers(command, events: list[dict]) -> bool:
    """Whether a stored outcome can be the outcome of this command (same family of request)."""
    mine = _family(type(command).__name__)
    for ev in events:
        theirs = _family(ev.get("command", "") if ev["type"] == "CommandRejected" else ev["type"])
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
    def __init__(self, bus: CommandBus, timeout_seconds: float) -> None:
        self.bus, self.timeout_seconds = bus, timeout_seconds

    async def submit(self, command) -> list[dict]:
        """Answer from the stored outcome when a client's command id was decided before; else decide it."""
        if not command.command_id.startswith("api-"):
            known = await self.bus.outcome(command.command_id)
            if known is not None:
                if not answers(command, known):
                    raise ApiError(422, "key_reused", f"command id {command.command_id!r} was already used for another kind "
                                                      "of request; use a new Idempotency-Key or command_id", "Idempotency-Key")
                return known
        return await self.decide(command)

    async def decide(self, command) -> list[dict]:
        """Send the command and wait for its committed answer (504 ``timeout`` when none comes in time)."""
        try:
            return await self.bus.submit(command)
        except OutcomeTimeout:
            raise ApiError(504, "timeout", f"no answer within {self.timeout_seconds:g}s; retry with command_id "
                                           f"{command.command_id} to get the same outcome") from None

    async def decided(self, command_ids: list[str]) -> dict[str, list]:
        """Outcomes already committed for these ids (the API server retrying a review)."""
        return await self.bus.outcomes(command_ids)

    async def decided_fanout(self, key: str) -> list[list]:
        """Outcomes of the commands one earlier request fanned out to (``fanout_id``)."""
        return await self.bus.outcomes_for_key(fanout_id(key, "")[:-1])
