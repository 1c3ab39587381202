"""Who may call REST: bearer tokens from a token file, or checked by a Kubernetes TokenReview.

Three roles: ``reader`` (GET: leases, pools, networks, metrics, status), ``node`` (what the CNI
plugin on every node needs besides: lease and release IP addresses, create a network from a
Whereabouts range; never change or delete one) and ``admin`` (everything).  Health and the OpenAPI document are
open (probes and clients need them before they hold a token).  The webhook has its own
listener and never accepts these tokens.  Every refusal is counted by reason.

Serving certificates for the HTTPS listeners (REST and webhook) are reloaded when their files
change: cert-manager rotates the Secret's files in place, and new connections get the new
certificate without a restart.  The webhook listener can also require a client certificate (the
API server's), so that nothing but the API server can reach it."""

from __future__ import annotations

import asyncio
import hashlib
import os
import ssl
import time
from dataclasses import dataclass

import structlog
from aiohttp import web

from .. import telemetry
from ..adapters.kubernetes import ApiClient, ReviewedToken, api_client, review_token
from ..config import Config, subjects
from .http import ApiError

log = structlog.get_logger("ipam.auth")

READER, NODE, ADMIN = "reader", "node", "admin"
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/openapi.json"})
_RANK = {READER: 1, NODE: 2, ADMIN: 3}
REVIEW_TTL, REFUSAL_TTL = 60.0, 10.0


@dataclass(frozen=True)
class Caller:
    name: str
    role: str


def needed_role(request: web.Request) -> str | None:
    if request.path in OPEN_PATHS:
        return None
    if request.method in ("GET", "HEAD", "OPTIONS"):
        return READER
    if (request.method, request.path) in (("POST", "/v1/ip-leases"), ("POST", "/v1/networks")) or (
            request.method == "DELETE" and request.path.startswith("/v1/ip-leases/")):
        return NODE
    return ADMIN


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TokenFile:
    """``<token> <reader|node|admin> <name>`` per line; ``#`` comments.  Re-read when the file changes
    (checked at most once a second), so tokens rotate without a restart."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._stamp: tuple | None = None
        self._checked = 0.0
        self.tokens: dict[str, Caller] = {}
        self.refresh()

    def refresh(self) -> None:
        st = os.stat(self.path)
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return
        tokens = {}
        with open(self.path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                words = line.split("#", 1)[0].split()
                if not words:
                    continue
                if len(words) != 3 or words[1] not in _RANK:
                    raise ValueError(f"{self.path} line {n}: expected `<token> <reader|node|admin> <name>`")
                tokens[_digest(words[0])] = Caller(words[2], words[1])
        self.tokens, self._stamp = tokens, stamp

    def lookup(self, token: str) -> Caller | None:
        now = time.monotonic()
        if now - self._checked >= 1.0:
            self._checked = now
            try:
                self.refresh()
            except (OSError, ValueError) as e:  # keep the last good set while a rotation is half-written
                log.warning("cannot re-read the token file; keeping the previous tokens", error=str(e))
        return self.tokens.get(_digest(token))


class TokenReviewer:
    """Kubernetes TokenReview, with the answer cached for a minute (a refusal for ten seconds);
    the role comes from the user and groups the API server reports."""

    def __init__(self, cfg: Config) -> None:
        self.kube_api = cfg.kube_api
        self.admins = subjects(cfg.admin_subjects, "IPAM_ADMIN_SUBJECTS")
        self.readers = subjects(cfg.reader_subjects, "IPAM_READER_SUBJECTS")
        self.nodes = subjects(cfg.node_subjects, "IPAM_NODE_SUBJECTS")
        self._api: ApiClient | None = None
        self._cache: dict[str, tuple[float, Caller | None]] = {}

    async def lookup(self, token: str) -> Caller | None:
        key = _digest(token)
        now = time.monotonic()
        hit = self._cache.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        if self._api is None:
            self._api = await api_client(self.kube_api)
        reviewed = await review_token(self._api, token)
        caller = self.role_of(reviewed)
        if len(self._cache) > 10000:
            self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
        self._cache[key] = (now + (REVIEW_TTL if caller else REFUSAL_TTL), caller)
        return caller

    def role_of(self, reviewed: ReviewedToken) -> Caller | None:
        if not reviewed.authenticated:
            return None
        mine = {("user", reviewed.user), *(("group", g) for g in reviewed.groups)}
        if mine & self.admins:
            return Caller(reviewed.user, ADMIN)
        if mine & self.nodes:
            return Caller(reviewed.user, NODE)
        if mine & self.readers:
            return Caller(reviewed.user, READER)
        return Caller(reviewed.user, "")  # authenticated, but granted nothing: 403

    async def close(self) -> None:
        if self._api is not None:
            await self._api.close()


class Authenticator:
    """The token sources this process trusts; none (plain HTTP on loopback, development) lets everyone in."""

    def __init__(self, cfg: Config) -> None:
        self.file = TokenFile(cfg.token_file) if cfg.token_file else None
        self.review = TokenReviewer(cfg) if cfg.token_review else None

    @property
    def enabled(self) -> bool:
        return self.file is not None or self.review is not None

    async def caller(self, token: str) -> Caller | None:
        if self.file is not None:
            found = self.file.lookup(token)
            if found is not None:
                return found
        if self.review is not None:
            try:
                return await self.review.lookup(token)
            except Exception as e:  # the API server is unreachable: refuse, say why, do not guess
                log.warning("TokenReview failed", error=repr(e))
                raise ApiError(503, "unavailable", "cannot check the token: the Kubernetes API is unreachable") from None
        return None

    async def check(self, request: web.Request) -> Caller | None:
        needed = needed_role(request)
        if needed is None or not self.enabled:
            return None
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            telemetry.auth_failures.labels("missing").inc()
            raise Unauthorized("missing bearer token: send `Authorization: Bearer <token>`")
        caller = await self.caller(token.strip())
        if caller is None:
            telemetry.auth_failures.labels("invalid").inc()
            raise Unauthorized("the bearer token is not valid")
        if _RANK.get(caller.role, 0) < _RANK[needed]:
            telemetry.auth_failures.labels("forbidden").inc()
            log.info("call refused", caller=caller.name, role=caller.role or "none", needed=needed,
                     method=request.method, path=request.path)
            raise ApiError(403, "forbidden", f"{request.method} {request.path} needs the {needed} role; "
                                             f"{caller.name} has {caller.role or 'no role'}")
        return caller

    async def close(self) -> None:
        if self.review is not None:
            await self.review.close()


AUTH = web.AppKey("auth", Authenticator)


class Unauthorized(ApiError):
    def __init__(self, message: str) -> None:
        super().__init__(401, "unauthorized", message, "Authorization")

    def response(self) -> web.Response:
        resp = super().response()
        resp.headers["WWW-Authenticate"] = 'Bearer realm="ipam"'
        return resp


log = structlog.get_logger("ipam.tls")


class TlsFiles:
    """An SSL context whose certificate (and client CA, if any) is reloaded when the files change."""

    def __init__(self, cert_file: str, key_file: str, client_ca_file: str = "") -> None:
        self.cert_file, self.key_file, self.client_ca_file = cert_file, key_file, client_ca_file
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        if client_ca_file:
            self.context.verify_mode = ssl.CERT_REQUIRED
        self._stamp: tuple | None = None
        self.reloads = 0
        self.reload()

    def _files(self) -> list[str]:
        return [f for f in (self.cert_file, self.key_file, self.client_ca_file) if f]

    def _files_stamp(self) -> tuple:
        return tuple((st.st_mtime_ns, st.st_size) for st in map(os.stat, self._files()))

    def reload(self) -> bool:
        stamp = self._files_stamp()
        if stamp == self._stamp:
            return False
        self.context.load_cert_chain(self.cert_file, self.key_file)
        if self.client_ca_file:  # adds to the trusted set; a rotated CA bundle normally carries old and new
            self.context.load_verify_locations(cafile=self.client_ca_file)
        self._stamp = stamp
        self.reloads += 1
        return True

    async def watch(self, interval: float = 2.0) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                if self.reload():
                    log.info("certificate reloaded", cert=self.cert_file)
            except (OSError, ssl.SSLError) as e:  # half-written files during a rotation: try again next time
                log.warning("cannot reload the certificate yet", cert=self.cert_file, error=str(e))
