"""A small Kubernetes API server for the tests: list and watch of VirtualMachines, their instances,
NetworkAttachmentDefinitions, Namespaces, Pods, IPAMClaims and Whereabouts IPPools; GET of one
namespaced object (what the CNI plugin reads); merge-patch of an IPAMClaim's status.

It speaks the protocol the real one does, as far as a controller sees it: lists carry
``metadata.resourceVersion``; ``?watch=true&resourceVersion=N`` streams newline-delimited
events after N (ADDED, MODIFIED, DELETED), BOOKMARK events when asked for, ends the stream
after ``timeoutSeconds``; a version older than the compaction point gets an ERROR event
with a 410 Status, as etcd compaction makes the real server do.  Tests can compact, and drop
every open watch connection, to exercise the client's relist and resume paths.
"""

from __future__ import annotations

import asyncio
import copy
import json
import uuid

from aiohttp import web

PATHS = {"/apis/kubevirt.io/v1/virtualmachines": "virtualmachines",
         "/apis/kubevirt.io/v1/virtualmachineinstances": "virtualmachineinstances", "/api/v1/namespaces": "namespaces",
         "/apis/k8s.cni.cncf.io/v1/network-attachment-definitions": "network-attachment-definitions",
         "/api/v1/pods": "pods", "/apis/k8s.cni.cncf.io/v1alpha1/ipamclaims": "ipamclaims",
         "/apis/whereabouts.cni.cncf.io/v1alpha1/ippools": "ippools"}
KINDS = {"virtualmachines": ("kubevirt.io/v1", "VirtualMachine"),
         "virtualmachineinstances": ("kubevirt.io/v1", "VirtualMachineInstance"), "namespaces": ("v1", "Namespace"),
         "network-attachment-definitions": ("k8s.cni.cncf.io/v1", "NetworkAttachmentDefinition"),
         "pods": ("v1", "Pod"), "ipamclaims": ("k8s.cni.cncf.io/v1alpha1", "IPAMClaim"),
         "ippools": ("whereabouts.cni.cncf.io/v1alpha1", "IPPool")}
OBJECT_PATHS = ["/api/{version}/namespaces/{namespace}/{resource}/{name}",
                "/apis/{group}/{version}/namespaces/{namespace}/{resource}/{name}"]


class FakeKubeApi:
    def __init__(self, absent: tuple[str, ...] = ()) -> None:
        self.absent = set(absent)  # resources whose CRD is not installed: 404
        self.rv = 1000
        self.objects: dict[str, dict[tuple[str, str], dict]] = {r: {} for r in KINDS}
        self.log: list[tuple[int, str, str, dict]] = []  # (rv, resource, type, object)
        self.compacted = 0
        self.changed = asyncio.Condition()
        self.open_watches: dict[int, web.Request] = {}
        self.requests: list[str] = []
        self.gone_sent = 0
        self._runner: web.AppRunner | None = None
        self.url = ""
        self.tokens: dict[str, tuple[str, list[str]]] = {}  # bearer token -> (user name, groups), for TokenReview
        self.token_reviews = 0

    async def start(self) -> FakeKubeApi:
        app = web.Application()
        for path in PATHS:
            app.router.add_get(path, self.handle)
        for path in OBJECT_PATHS:
            app.router.add_get(path, self.get_one)
            app.router.add_patch(path + "/status", self.patch_status)
        app.router.add_post("/apis/authentication.k8s.io/v1/tokenreviews", self.token_review)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
        return self

    async def stop(self) -> None:
        self.drop_watches()
        await self._runner.cleanup()

    # --- what tests do to the cluster -------------------------------------------------

    async def put(self, resource: str, obj: dict) -> dict:
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        key = (meta.get("namespace", ""), meta["name"])
        existing = self.objects[resource].get(key)
        meta.setdefault("uid", existing["metadata"]["uid"] if existing else str(uuid.uuid4()))
        meta["generation"] = (existing["metadata"].get("generation", 1) + 1) if existing else 1
        api_version, kind = KINDS[resource]
        obj.setdefault("apiVersion", api_version)
        obj.setdefault("kind", kind)
        await self._record(resource, "MODIFIED" if existing else "ADDED", obj)
        self.objects[resource][key] = obj
        return obj

    async def delete(self, resource: str, namespace: str, name: str) -> None:
        obj = self.objects[resource].pop((namespace, name))
        await self._record(resource, "DELETED", obj)

    def compact(self) -> None:
        """Forget history: any watch from an older version now gets 410 Gone."""
        self.compacted = self.rv + 1

    def drop_watches(self) -> None:
        for request in list(self.open_watches.values()):
            if request.transport is not None:
                request.transport.close()
        self.open_watches.clear()

    async def _record(self, resource: str, kind: str, obj: dict) -> None:
        async with self.changed:
            self.rv += 1
            obj["metadata"]["resourceVersion"] = str(self.rv)
            self.log.append((self.rv, resource, kind, copy.deepcopy(obj)))
            self.changed.notify_all()

    # --- the protocol -------------------------------------------------------------------

    async def token_review(self, request: web.Request) -> web.Response:
        """authentication.k8s.io/v1 TokenReview: the spec's token is known (user, groups) or not."""
        review = await request.json()
        self.token_reviews += 1
        known = self.tokens.get(review["spec"]["token"])
        if known is None:
            review["status"] = {"authenticated": False, "error": "invalid bearer token"}
        else:
            review["status"] = {"authenticated": True, "user": {"username": known[0], "uid": known[0], "groups": known[1]}}
        return web.json_response(review, status=201)

    def _not_found(self, what: str) -> web.Response:
        return web.json_response({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound",
                                  "code": 404, "message": f"{what} not found"}, status=404)

    async def get_one(self, request: web.Request) -> web.Response:
        m = request.match_info
        self.requests.append(request.path_qs)
        found = self.objects.get(m["resource"], {}).get((m["namespace"], m["name"]))
        if found is None or m["resource"] in self.absent:
            return self._not_found(f'{m["resource"]} "{m["name"]}"')
        return web.json_response(copy.deepcopy(found))

    async def patch_status(self, request: web.Request) -> web.Response:
        """A merge patch of the status subresource (what a controller writes)."""
        m = request.match_info
        self.requests.append(f"PATCH {request.path_qs}")
        if request.content_type != "application/merge-patch+json":
            return web.json_response({"kind": "Status", "code": 415, "message": request.content_type}, status=415)
        found = self.objects.get(m["resource"], {}).get((m["namespace"], m["name"]))
        if found is None:
            return self._not_found(f'{m["resource"]} "{m["name"]}"')
        found = copy.deepcopy(found)
        found["status"] = {**(found.get("status") or {}), **((await request.json()).get("status") or {})}
        await self._record(m["resource"], "MODIFIED", found)
        self.objects[m["resource"]][(m["namespace"], m["name"])] = found
        return web.json_response(copy.deepcopy(found))

    async def handle(self, request: web.Request) -> web.StreamResponse:
        resource = PATHS[request.path]
        self.requests.append(request.path_qs)
        if resource in self.absent:
            return self._not_found(f"the server could not find the requested resource ({resource})")
        if request.query.get("watch") in ("true", "1", "True"):
            return await self._watch(request, resource)
        api_version, kind = KINDS[resource]
        items = [copy.deepcopy(o) for _, o in sorted(self.objects[resource].items())]
        return web.json_response({"apiVersion": api_version, "kind": f"{kind}List",
                                  "metadata": {"resourceVersion": str(self.rv)}, "items": items})

    async def _watch(self, request: web.Request, resource: str) -> web.StreamResponse:
        since = int(request.query.get("resourceVersion") or self.rv)
        bookmarks = request.query.get("allowWatchBookmarks") in ("true", "True", "1")
        timeout = float(request.query.get("timeoutSeconds") or 1800)
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        self.open_watches[id(request)] = request
        loop = asyncio.get_running_loop()
        ends = loop.time() + timeout
        try:
            if since < self.compacted:
                self.gone_sent += 1
                status = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                          "message": f"too old resource version: {since} ({self.compacted})", "reason": "Expired", "code": 410}
                await response.write(json.dumps({"type": "ERROR", "object": status}).encode() + b"\n")
                return response
            sent = since
            while loop.time() < ends:
                upto = self.rv
                for rv, res, kind, obj in [e for e in self.log if e[0] <= upto]:
                    if res == resource and rv > sent:
                        await response.write(json.dumps({"type": kind, "object": obj}).encode() + b"\n")
                        sent = rv
                if bookmarks:
                    api_version, kind = KINDS[resource]
                    mark = {"kind": kind, "apiVersion": api_version, "metadata": {"resourceVersion": str(max(sent, upto))}}
                    await response.write(json.dumps({"type": "BOOKMARK", "object": mark}).encode() + b"\n")
                    sent = max(sent, upto)
                async with self.changed:
                    if self.rv > upto:
                        continue
                    try:
                        await asyncio.wait_for(self.changed.wait(), timeout=min(0.5, max(0.01, ends - loop.time())))
                    except TimeoutError:
                        pass
            return response
        except (ConnectionResetError, asyncio.CancelledError):
            return response
        finally:
            self.open_watches.pop(id(request), None)
