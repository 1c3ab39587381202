"""One description of each REST route, and the OpenAPI 3.1 document made from them.

The aiohttp router and the document are both made from the same ``Route`` list, so the document
cannot drift from what is served; request and response bodies come from the msgspec structs.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

import msgspec
from aiohttp import web

from .. import __version__
from . import models
from .auth import OPEN_PATHS

_ERRORS = {400: "Invalid input; `error.field` names the field", 404: "Not found",
           409: "Conflict (held, exhausted, overlap, in use)", 413: "Body too large",
           422: "Request cannot be routed to a space, or a limit was reached",
           429: "ipam is busy: nothing was done; send it again after Retry-After seconds",
           504: "No answer in time; retry with the same command id"}
_IDEMPOTENCY = {"name": "Idempotency-Key", "in": "header", "required": False,
                "schema": {"type": "string", "minLength": 1, "maxLength": 128},
                "description": "Command id: a retry with the same key gets the same outcome."}


def _ref(model: type) -> dict:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _json(model: type, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": _ref(model)}}}


def _parameters(route: Route) -> list[dict]:
    string = {"type": "string", "minLength": 1}
    params = [{"name": p, "in": "path", "required": True, "description": WORDS[p].capitalize(), "schema": string}
              for p in re.findall(r"{(\w+)}", route.path)]
    params += [{"name": q, "in": "query", "required": False, "description": f"Only this {WORDS[q]}",
                "schema": {"type": "string", "enum": list(WORKLOADS)} if q == "workload" else string} for q in route.query]
    if route.limit:
        params.append({"name": "limit", "in": "query", "required": False,
                       "schema": {"type": "integer", "minimum": 1, "maximum": 100000}})
    return params + ([_IDEMPOTENCY] if route.idempotent else [])


def _operation(route: Route) -> dict:
    responses = {}
    for status, (model, description) in route.ok.items():
        if route.text:
            responses[str(status)] = {"description": description, "content": {"text/plain": {"schema": {"type": "string"}}}}
        else:
            responses[str(status)] = _json(model, description) if model is not None else {"description": description}
    responses |= {str(c): _json(models.Error, _ERRORS[c]) for c in route.errors}
    op: dict[str, object] = {"summary": route.summary, "operationId": route.operation, "responses": responses}
    if route.body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": _ref(route.body)}}}
    if params := _parameters(route):
        op["parameters"] = params
    if route.path in OPEN_PATHS:  # probes and clients need these before they hold a token
        op["security"] = []
        return op
    responses["401"] = _json(models.Error, "No token, or a token that is not valid")
    responses["403"] = _json(models.Error, "The token's role may not do this (reading needs reader, changing needs admin)")
    responses.setdefault("400", _json(models.Error, _ERRORS[400]))
    if route.idempotent:
        responses.setdefault("422", _json(models.Error, "The Idempotency-Key was used for another kind of request"))
    return op


def openapi_document(routes: list[Route]) -> dict:
    structs = {m for r in routes for m in [r.body, *(model for model, _ in r.ok.values())]
               if isinstance(m, type) and issubclass(m, msgspec.Struct)}
    _, components = msgspec.json.schema_components(sorted(structs | {models.Error}, key=lambda m: m.__name__),
                                                   ref_template="#/components/schemas/{name}")
    paths: dict[str, dict] = {}
    for route in routes:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route)
    return {
        "openapi": "3.1.0",
        "info": {"title": "ipam", "version": __version__,
                 "description": "MAC and IP address management for KubeVirt VMs. Answers come after the lease is committed "
                                "in Postgres."},
        "paths": paths,
        "components": {"schemas": components, "securitySchemes": {"bearer": {
            "type": "http", "scheme": "bearer",
            "description": "A token from IPAM_TOKEN_FILE, or a Kubernetes token checked by TokenReview. Reading needs the "
                           "reader role, changing anything the admin role."}}},
        "security": [{"bearer": []}],
    }


# What a path or query parameter names, for people.
WORDS = {"namespace": "namespace", "vm": "VM name", "interface": "interface name", "pool": "pool", "mac": "MAC address",
         "network": "network", "address": "IP address", "name": "name", "vm_uid": "uid (one incarnation of the VM, pod or claim)",
         "workload": "kind of holder", "cluster": "Kubernetes cluster of the holder"}
WORKLOADS = ("VirtualMachine", "Pod", "IPAMClaim")


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
    sheds: bool = False  # refused at once (429) under overload: new leases, which a client may send again


def add_routes(app: web.Application, routes: list[Route]) -> None:
    app.add_routes([web.route(r.method, r.path, r.handler) for r in routes])
