"""One description of each REST route: the aiohttp router and the OpenAPI document are both made from it,
so the document cannot drift from what is served."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web

# What a path or query parameter names, for people.
WORDS = {"namespace": "namespace", "vm": "VM name", "interface": "interface name", "pool": "pool", "mac": "MAC address",
         "network": "network", "address": "IP address", "name": "name"}


@dataclass(frozen=True, eq=False)
class Route:
    method: str
    path: str
    handler: Callable
    summary: str
    operation: str  # operationId
    body: type | None = None  # request body struct
    ok: dict = field(default_factory=dict)  # status -> (response struct or None, description)
    errors: tuple[int, ...] = ()
    query: tuple[str, ...] = ()  # optional query parameters (filters)
    limit: bool = False  # takes ?limit=
    idempotent: bool = False  # takes an Idempotency-Key
    text: bool = False  # answers text/plain (the Prometheus exposition format)


def add_routes(app: web.Application, routes: list[Route]) -> None:
    app.add_routes([web.route(r.method, r.path, r.handler) for r in routes])
