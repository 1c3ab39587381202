"""The OpenAPI 3.1 document, generated from the request/response structs so it cannot drift."""

from __future__ import annotations

from functools import lru_cache

import msgspec

from .. import __version__
from . import models
from .auth import OPEN_PATHS

_MODELS = (models.PoolRequest, models.Pool, models.PoolList, models.LeaseRequest, models.Lease, models.LeaseAnswer,
           models.LeaseList, models.Released, models.Error, models.NetworkRequest, models.NetworkUpdate, models.Network,
           models.NetworkList, models.NetworkDeleted, models.IpLeaseRequest, models.IpLeaseAnswer, models.IpLeaseList,
           models.IpReleased, models.Status)


def _ref(model: type) -> dict:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _json(model: type, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": _ref(model)}}}


def _errors(*codes: int) -> dict:
    text = {400: "Invalid input; `error.field` names the field", 404: "Not found",
            409: "Conflict (held, exhausted, overlap, in use)",
            413: "Body too large", 422: "Request cannot be routed to a pool, or a limit was reached",
            504: "No answer in time; retry with the same command id"}
    return {str(c): _json(models.Error, text[c]) for c in codes}


def _param(name: str, where: str, description: str, required: bool = False) -> dict:
    return {"name": name, "in": where, "required": required or where == "path", "description": description,
            "schema": {"type": "string", "minLength": 1}}


@lru_cache(maxsize=1)
def openapi_document() -> dict:
    _, components = msgspec.json.schema_components(_MODELS, ref_template="#/components/schemas/{name}")
    idem = {"name": "Idempotency-Key", "in": "header", "required": False, "schema": {"type": "string", "minLength": 1, "maxLength": 128},
            "description": "Command id: a retry with the same key gets the same outcome."}
    release = {"200": _json(models.Released, "Released; the MACs are quarantined"), **_errors(400, 404, 504)}
    ip_release = {"200": _json(models.IpReleased, "Released; the addresses are quarantined"), **_errors(400, 404, 504)}
    document = {
        "openapi": "3.1.0",
        "info": {"title": "ipam", "version": __version__,
                 "description": "MAC and IP address management for KubeVirt VMs. Answers come after the lease is committed in Postgres."},
        "paths": {
            "/v1/pools": {
                "post": {"summary": "Create a MAC pool", "operationId": "createPool", "parameters": [idem],
                         "requestBody": {"required": True, "content": {"application/json": {"schema": _ref(models.PoolRequest)}}},
                         "responses": {"201": _json(models.Pool, "Created"), **_errors(400, 409, 413, 504)}},
                "get": {"summary": "List pools with usage", "operationId": "listPools",
                        "responses": {"200": _json(models.PoolList, "Pools")}},
            },
            "/v1/mac-leases": {
                "post": {"summary": "Lease a MAC for a VM interface (sticky: the same owner gets the same MAC)",
                         "operationId": "leaseMac", "parameters": [idem],
                         "requestBody": {"required": True, "content": {"application/json": {"schema": _ref(models.LeaseRequest)}}},
                         "responses": {"201": _json(models.LeaseAnswer, "Leased"),
                                       "200": _json(models.LeaseAnswer, "The owner already held this MAC"),
                                       **_errors(400, 404, 409, 413, 422, 504)}},
                "get": {"summary": "List live MAC leases", "operationId": "listMacLeases",
                        "parameters": [_param("namespace", "query", "Only this namespace"), _param("vm", "query", "Only this VM"),
                                       _param("pool", "query", "Only this pool"), _param("mac", "query", "Only this MAC"),
                                       {"name": "limit", "in": "query", "required": False,
                                        "schema": {"type": "integer", "minimum": 1, "maximum": 100000}}],
                        "responses": {"200": _json(models.LeaseList, "Leases"), **_errors(400)}},
            },
            "/v1/mac-leases/{namespace}/{vm}": {
                "delete": {"summary": "Release all of a VM's MAC leases", "operationId": "releaseVm",
                           "parameters": [_param("namespace", "path", "Namespace"), _param("vm", "path", "VM name"), idem],
                           "responses": release}},
            "/v1/mac-leases/{namespace}/{vm}/{interface}": {
                "delete": {"summary": "Release one interface's MAC lease", "operationId": "releaseInterface",
                           "parameters": [_param("namespace", "path", "Namespace"), _param("vm", "path", "VM name"),
                                          _param("interface", "path", "Interface name"), idem],
                           "responses": release}},
            "/v1/macs/{mac}": {
                "delete": {"summary": "Release the lease holding a MAC", "operationId": "releaseMac",
                           "parameters": [_param("mac", "path", "MAC address"), idem], "responses": release}},
            "/v1/networks": {
                "post": {"summary": "Create an IP network (subnets, exclusions, gateway, DNS, attachments)",
                         "operationId": "createNetwork", "parameters": [idem],
                         "requestBody": {"required": True, "content": {"application/json": {"schema": _ref(models.NetworkRequest)}}},
                         "responses": {"201": _json(models.Network, "Created"),
                                       "200": _json(models.Network, "It existed with the same definition"),
                                       **_errors(400, 409, 413, 504)}},
                "get": {"summary": "List networks with usage per subnet", "operationId": "listNetworks",
                        "responses": {"200": _json(models.NetworkList, "Networks")}},
            },
            "/v1/networks/{name}": {
                "get": {"summary": "One network with usage per subnet", "operationId": "getNetwork",
                        "parameters": [_param("name", "path", "Network name")],
                        "responses": {"200": _json(models.Network, "The network"), **_errors(404)}},
                "put": {"summary": "Replace a network's definition (refused while a live lease would fall outside it)",
                        "operationId": "updateNetwork", "parameters": [_param("name", "path", "Network name"), idem],
                        "requestBody": {"required": True, "content": {"application/json": {"schema": _ref(models.NetworkUpdate)}}},
                        "responses": {"200": _json(models.Network, "Updated"), **_errors(400, 404, 409, 413, 504)}},
                "delete": {"summary": "Delete a network (refused while it holds leases)", "operationId": "deleteNetwork",
                           "parameters": [_param("name", "path", "Network name"), idem],
                           "responses": {"200": _json(models.NetworkDeleted, "Deleted"), **_errors(404, 409, 504)}},
            },
            "/v1/ip-leases": {
                "post": {"summary": "Lease a VM interface its addresses in a network (one per family; sticky)",
                         "operationId": "leaseIp", "parameters": [idem],
                         "requestBody": {"required": True, "content": {"application/json": {"schema": _ref(models.IpLeaseRequest)}}},
                         "responses": {"201": _json(models.IpLeaseAnswer, "Leased"),
                                       "200": _json(models.IpLeaseAnswer, "The interface already held these addresses"),
                                       **_errors(400, 404, 409, 413, 422, 504)}},
                "get": {"summary": "List live IP leases", "operationId": "listIpLeases",
                        "parameters": [_param("network", "query", "Only this network"),
                                       _param("namespace", "query", "Only this namespace"),
                                       _param("vm", "query", "Only this VM"), _param("address", "query", "Only this address"),
                                       {"name": "limit", "in": "query", "required": False,
                                        "schema": {"type": "integer", "minimum": 1, "maximum": 100000}}],
                        "responses": {"200": _json(models.IpLeaseList, "Leases"), **_errors(400)}},
            },
            "/v1/ip-leases/{network}/{namespace}/{vm}": {
                "delete": {"summary": "Release a VM's addresses in a network", "operationId": "releaseVmIps",
                           "parameters": [_param("network", "path", "Network"), _param("namespace", "path", "Namespace"),
                                          _param("vm", "path", "VM name"), idem],
                           "responses": ip_release}},
            "/v1/ip-leases/{network}/{namespace}/{vm}/{interface}": {
                "delete": {"summary": "Release one interface's addresses in a network", "operationId": "releaseInterfaceIps",
                           "parameters": [_param("network", "path", "Network"), _param("namespace", "path", "Namespace"),
                                          _param("vm", "path", "VM name"), _param("interface", "path", "Interface name"), idem],
                           "responses": ip_release}},
            "/v1/ips/{network}/{address}": {
                "delete": {"summary": "Release the lease holding an address", "operationId": "releaseIp",
                           "parameters": [_param("network", "path", "Network"), _param("address", "path", "IP address"), idem],
                           "responses": ip_release}},
            "/v1/status": {"get": {"summary": "Partitions (owner, epoch, what waits), pools and networks with usage, pending leases",
                                   "operationId": "status", "responses": {"200": _json(models.Status, "Status")}}},
            "/healthz": {"get": {"summary": "Process is up", "operationId": "healthz",
                                 "responses": {"200": {"description": "Up"}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics (text exposition format)", "operationId": "metrics",
                                 "responses": {"200": {"description": "Metrics", "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
            "/openapi.json": {"get": {"summary": "This document", "operationId": "openapi",
                                      "responses": {"200": {"description": "OpenAPI 3.1 document"}}}},
            "/readyz": {"get": {"summary": "Partitions loaded, broker and database reachable", "operationId": "readyz",
                                "responses": {"200": {"description": "Ready"}, "503": {"description": "Not ready"}}}},
        },
        "components": {"schemas": components, "securitySchemes": {"bearer": {
            "type": "http", "scheme": "bearer",
            "description": "A token from IPAM_TOKEN_FILE, or a Kubernetes token checked by TokenReview. Reading needs the "
                           "reader role, changing anything the admin role."}}},
        "security": [{"bearer": []}],
    }
    _secure(document)
    return document


def _secure(document: dict) -> None:
    """Open paths need no token; every other operation may answer 401 and 403."""
    denied = {"401": _json(models.Error, "No token, or a token that is not valid"),
              "403": _json(models.Error, "The token's role may not do this (reading needs reader, changing needs admin)")}
    for path, operations in document["paths"].items():
        for operation in operations.values():
            if path in OPEN_PATHS:
                operation["security"] = []
            else:
                operation["responses"].update(denied)
                operation["responses"].setdefault("400", _json(models.Error, "Invalid input; `error.field` names the field"))
                if "Idempotency-Key" in [p.get("name") for p in operation.get("parameters", [])]:
                    operation["responses"].setdefault("422", _json(models.Error, "The Idempotency-Key was used for another kind of request"))
