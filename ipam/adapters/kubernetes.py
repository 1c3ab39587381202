"""Kubernetes: building an API client, and following a resource with list + watch.

``Informer`` is the list/watch loop every controller needs: list (a full picture and a
resourceVersion), then watch from that version with bookmarks; a dropped or timed-out
watch resumes from the last version seen; 410 Gone (the version was compacted away)
lists again.  It hands objects to callbacks as plain dicts (what the API server sent).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp
import structlog
from kubernetes_asyncio import client, config, watch
from kubernetes_asyncio.client.exceptions import ApiException

ApiClient = client.ApiClient  # for the layers above, which name the type but never import the library

log = structlog.get_logger("ipam.kubernetes")

VM = ("kubevirt.io", "v1", "virtualmachines")
VMI = ("kubevirt.io", "v1", "virtualmachineinstances")
NAD = ("k8s.cni.cncf.io", "v1", "network-attachment-definitions")
CLAIMS = ("k8s.cni.cncf.io", "v1alpha1", "ipamclaims")
WHEREABOUTS_POOLS = ("whereabouts.cni.cncf.io", "v1alpha1", "ippools")


async def api_client(where: str) -> client.ApiClient:
    """'in-cluster' (service account), an http(s) URL (tests, kubectl proxy), or a kubeconfig path."""
    conf = client.Configuration()
    if where == "in-cluster":
        config.load_incluster_config(client_configuration=conf)
    elif where.startswith(("http://", "https://")):
        conf.host = where
    else:
        await config.load_kube_config(config_file=os.path.expanduser(where), client_configuration=conf)
    return client.ApiClient(configuration=conf)


@dataclass
class Resource:
    """How to list one kind cluster-wide."""

    name: str
    list_call: Callable[..., Awaitable]  # an API method taking watch/resource_version/... keywords

    @classmethod
    def custom(cls, api: client.ApiClient, gvr: tuple[str, str, str]) -> Resource:
        custom = client.CustomObjectsApi(api)

        def call(**kw):
            return custom.list_cluster_custom_object(*gvr, **kw)

        call.__doc__ = custom.list_cluster_custom_object.__doc__  # lets Watch find the "watch" argument
        return cls(gvr[2], call)

    @classmethod
    def virtual_machines(cls, api: client.ApiClient) -> Resource:
        return cls.custom(api, VM)

    @classmethod
    def virtual_machine_instances(cls, api: client.ApiClient) -> Resource:
        return cls.custom(api, VMI)

    @classmethod
    def network_attachment_definitions(cls, api: client.ApiClient) -> Resource:
        return cls.custom(api, NAD)

    @classmethod
    def namespaces(cls, api: client.ApiClient) -> Resource:
        return cls("namespaces", client.CoreV1Api(api).list_namespace)

    @classmethod
    def pods(cls, api: client.ApiClient) -> Resource:
        return cls("pods", client.CoreV1Api(api).list_pod_for_all_namespaces)


async def patch_claim_status(api: client.ApiClient, namespace: str, name: str, status: dict) -> None:
    """Merge-patch an IPAMClaim's status subresource (a claim deleted meanwhile is no error)."""
    try:
        await client.CustomObjectsApi(api).patch_namespaced_custom_object_status(
            *CLAIMS[:2], namespace, CLAIMS[2], name, {"status": status},
            _content_type="application/merge-patch+json")  # type: ignore[call-arg]  # a keyword its **kwargs take
    except ApiException as e:
        if e.status != 404:
            raise


async def list_body(resource: Resource, **options) -> dict:
    """One list call, as the API server sent it (items and the list's resourceVersion)."""
    raw = await resource.list_call(_preload_content=False, **options)
    return await raw.json()


async def list_objects(resource: Resource) -> list[dict]:
    return (await list_body(resource)).get("items") or []


async def list_all(api: client.ApiClient, gvr: tuple[str, str, str], **options) -> list[dict] | None:
    """Every object of a custom resource once (``limit=1``: whether there is such a resource at all),
    or None when the cluster has no such resource (its CRD is not installed)."""
    try:
        return (await list_body(Resource.custom(api, gvr), **options)).get("items") or []
    except ApiException as e:
        if e.status == 404:
            return None
        raise


class NamespaceLabels:
    """Labels of the cluster's namespaces, for the webhook's opt-in/out check: fed by a namespace
    informer (``follow``) in every process that serves the webhook and can reach the API."""

    def __init__(self) -> None:
        self.labels: dict[str, dict[str, str]] = {}
        self.known = False

    def get(self, namespace: str) -> dict[str, str] | None:
        return self.labels.get(namespace)

    async def _listed(self, items: list[dict]) -> None:
        self.labels = {n["metadata"]["name"]: dict(n["metadata"].get("labels") or {}) for n in items}
        self.known = True

    async def _changed(self, kind: str, ns: dict) -> None:
        name = ns["metadata"]["name"]
        if kind == "DELETED":
            self.labels.pop(name, None)
        else:
            self.labels[name] = dict(ns["metadata"].get("labels") or {})

    async def follow(self, where: str, resync_seconds: float) -> None:
        api = await api_client(where)
        async with api:
            await Informer(Resource.namespaces(api), self._changed, self._listed, resync_seconds=resync_seconds).run()


Handler = Callable[[str, dict], Awaitable[None]]  # (ADDED|MODIFIED|DELETED, object)
Synced = Callable[[list[dict]], Awaitable[None]]  # the full list after each (re)list


class Informer:
    def __init__(self, resource: Resource, on_event: Handler, on_sync: Synced, *, resync_seconds: float = 600,
                 watch_seconds: int = 300) -> None:
        self.resource = resource
        self.on_event = on_event
        self.on_sync = on_sync
        self.resync_seconds = resync_seconds
        self.watch_seconds = watch_seconds
        self.resource_version: str | None = None
        self.synced = asyncio.Event()
        self._relist = asyncio.Event()
        self.relists = 0
        self.resumes = 0

    async def _list(self) -> None:
        body = await list_body(self.resource)
        self.resource_version = body["metadata"]["resourceVersion"]
        await self.on_sync(body.get("items") or [])
        self.relists += 1
        self.synced.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                await self._list()
                listed_at = loop.time()
                while loop.time() - listed_at < self.resync_seconds and not self._relist.is_set():
                    await self._watch_until_relist()
                    self.resumes += 1
                self._relist.clear()
            except asyncio.CancelledError:
                raise
            except ApiException as e:
                if e.status == 410:
                    log.info("resource version expired; listing again", resource=self.resource.name)
                    continue
                log.warning("kubernetes API error; retrying", resource=self.resource.name, status=e.status, error=e.reason)
                await asyncio.sleep(1)
            except Exception as e:  # connection refused, reset, timeouts: the API server will come back
                log.warning("kubernetes API unreachable; retrying", resource=self.resource.name, error=repr(e))
                await asyncio.sleep(1)

    def request_relist(self) -> None:
        """List everything again soon (the caller learnt something that changes how objects are read)."""
        self._relist.set()

    async def _watch_until_relist(self) -> None:
        watching = asyncio.ensure_future(self._watch_once())
        asked = asyncio.ensure_future(self._relist.wait())
        try:
            await asyncio.wait([watching, asked], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (watching, asked):
                t.cancel()
            await asyncio.gather(watching, asked, return_exceptions=True)
        failed = watching.exception() if watching.done() and not watching.cancelled() else None
        if failed is not None:
            raise failed

    async def _watch_once(self) -> None:
        """One watch request from the last version seen; returns when the server ends it or the connection drops."""
        w = watch.Watch()
        try:
            stream = w.stream(self.resource.list_call, resource_version=self.resource_version,
                              allow_watch_bookmarks=True, timeout_seconds=self.watch_seconds)
            async for event in stream:
                kind = event["type"]
                obj = event["raw_object"]
                rv = (obj.get("metadata") or {}).get("resourceVersion")
                if kind != "BOOKMARK":
                    await self.on_event(kind, obj)
                if rv:
                    self.resource_version = rv
        except (TimeoutError, ConnectionError, aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError) as e:
            log.info("watch connection dropped; resuming", resource=self.resource.name, error=repr(e))
        finally:
            await w.close()


@dataclass(frozen=True)
class ReviewedToken:
    """What the API server said about a bearer token (TokenReview status)."""

    authenticated: bool
    user: str = ""
    groups: tuple[str, ...] = ()
    error: str = ""


async def review_token(api: client.ApiClient, token: str) -> ReviewedToken:
    """Ask the API server who a bearer token belongs to (authentication.k8s.io/v1 TokenReview)."""
    body = client.V1TokenReview(spec=client.V1TokenReviewSpec(token=token))
    review = await client.AuthenticationV1Api(api).create_token_review(body)
    status = review.status
    if status is None or not status.authenticated:
        return ReviewedToken(False, error=(status.error if status is not None else "") or "")
    user = status.user
    return ReviewedToken(True, user.username or "", tuple(user.groups or ()))
