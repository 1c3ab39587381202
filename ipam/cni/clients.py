"""The two services the plugin calls, over the standard library's HTTP client: ipam's REST API and
(when the node has a kubeconfig) the Kubernetes API, to read the pod, its VMI and its IPAMClaim.

ipam that cannot be reached, times out or answers 429 (overload), 503 or 504 is CNI code 11, "try again later": the
runtime retries the sandbox, and nothing was half-done (a lease that was made is returned to the
same pod on the retry).
"""

from __future__ import annotations

import base64
import http.client
import json
import random
import ssl
import time
import urllib.parse
from dataclasses import dataclass

from .config import Settings
from .protocol import INVALID_CONFIG, IO_FAILURE, TRY_AGAIN_LATER, CniError

CONNECT_TIMEOUT = 3.0


@dataclass(frozen=True)
class Answer:
    status: int
    body: dict

    @property
    def error(self) -> dict:
        return self.body.get("error") or {}


def _request(url: str, method: str, path: str, headers: dict, body: object, context: ssl.SSLContext | None,
             timeout: float, what: str, server_name: str = "") -> Answer:
    """One request on a fresh connection.  ``server_name``: the name the server's certificate carries when
    ``url`` names it by address (a node cannot resolve cluster DNS names; the installer wrote the IP)."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80),
                                      timeout=CONNECT_TIMEOUT)
    data = None if body is None else json.dumps(body).encode()
    try:
        conn.connect()
        if parts.scheme == "https":
            trusted = context or ssl.create_default_context()  # the node's CAs when no CA file was installed
            conn.sock = trusted.wrap_socket(conn.sock, server_hostname=server_name or parts.hostname)
        conn.sock.settimeout(timeout)
        conn.request(method, parts.path.rstrip("/") + path, body=data,
                     headers=headers | ({"Content-Type": "application/json"} if data else {}))
        response = conn.getresponse()
        raw = response.read()
    except (TimeoutError, OSError, http.client.HTTPException) as e:
        raise CniError(TRY_AGAIN_LATER, f"{what} at {url} is unreachable: {e}") from None
    finally:
        conn.close()
    try:
        decoded = json.loads(raw) if raw else {}
    except ValueError:
        decoded = {"error": {"message": raw[:200].decode(errors="replace")}}
    return Answer(response.status, decoded if isinstance(decoded, dict) else {})


RETRIED = frozenset({429, 502, 503, 504})  # nothing done, or not known to be done: the same call may be sent again


class Ipam:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.context = ssl.create_default_context(cafile=settings.ca_file or None) if settings.url.startswith("https") \
            else None

    def call(self, method: str, path: str, body: object = None, *, again: frozenset[int] = RETRIED) -> Answer:
        """One call, sent again after a short pause while the plugin's timeout allows when ipam did nothing
        (429: shedding load) or could not answer in time (502/503/504: a hand-over, a broker election).  Every
        call the plugin makes may be repeated: a lease is sticky (the repeat gets what the first one got, or
        made), a release of what is gone is a no-op.  Out of time, it becomes CNI code 11 (the runtime retries
        the sandbox later).  ``again``: the statuses sent again (fewer for a probe or a DEL, which must not wait)."""
        headers = {"Authorization": f"Bearer {self.settings.token}"} if self.settings.token else {}
        give_up = time.monotonic() + self.settings.timeout
        while True:
            left = give_up - time.monotonic()
            answer = _request(self.settings.url, method, path, headers, body, self.context, max(1.0, left),
                              "ipam", self.settings.server_name)
            pause = random.uniform(0.25, 0.75)  # spread so that refused nodes do not come back together
            if answer.status not in again or time.monotonic() + pause >= give_up:
                break
            time.sleep(pause)
        if answer.status == 429:
            raise CniError(TRY_AGAIN_LATER, f"ipam is busy: {answer.error.get('message') or 429}")
        if answer.status in (502, 503, 504):
            raise CniError(TRY_AGAIN_LATER, f"ipam is not ready: {answer.error.get('message') or answer.status}")
        if answer.status in (401, 403):
            raise CniError(INVALID_CONFIG, f"ipam refused the plugin's token: {answer.error.get('message')}")
        return answer


def _kubeconfig(path: str) -> tuple[str, dict, ssl.SSLContext | None]:
    """(server, headers, TLS context) of the current context of a kubeconfig written as JSON."""
    try:
        with open(path) as f:
            conf = json.load(f)
        ctx = next(c["context"] for c in conf["contexts"] if c["name"] == conf["current-context"])
        cluster = next(c["cluster"] for c in conf["clusters"] if c["name"] == ctx["cluster"])
        user = next(u["user"] for u in conf["users"] if u["name"] == ctx["user"])
    except (OSError, ValueError, KeyError, StopIteration, TypeError) as e:
        raise CniError(INVALID_CONFIG, f"kubeconfig {path} cannot be read (JSON, as `kubectl config view --flatten "
                                       f"-o json` writes it): {e!r}") from None
    server = cluster["server"]
    context = None
    if server.startswith("https"):
        context = ssl.create_default_context(cafile=cluster.get("certificate-authority"))
        if cluster.get("certificate-authority-data"):
            context.load_verify_locations(cadata=base64.b64decode(cluster["certificate-authority-data"]).decode())
    token = user.get("token")
    if user.get("tokenFile"):
        with open(user["tokenFile"]) as f:
            token = f.read().strip()
    return server, {"Authorization": f"Bearer {token}"} if token else {}, context


class Kube:
    """GETs of single objects, which is all the plugin needs from the API server."""

    def __init__(self, kubeconfig: str, timeout: float) -> None:
        self.server, self.headers, self.context = _kubeconfig(kubeconfig)
        self.timeout = timeout

    def get(self, path: str) -> dict | None:
        answer = _request(self.server, "GET", path, self.headers, None, self.context, self.timeout, "the Kubernetes API")
        if answer.status == 404:
            return None
        if answer.status != 200:
            raise CniError(IO_FAILURE, f"the Kubernetes API answered {answer.status} for {path}: "
                                       f"{answer.body.get('message', '')}")
        return answer.body

    def pod(self, namespace: str, name: str) -> dict | None:
        return self.get(f"/api/v1/namespaces/{namespace}/pods/{name}")

    def vmi(self, namespace: str, name: str) -> dict | None:
        return self.get(f"/apis/kubevirt.io/v1/namespaces/{namespace}/virtualmachineinstances/{name}")

    def claim(self, namespace: str, name: str) -> dict | None:
        return self.get(f"/apis/k8s.cni.cncf.io/v1alpha1/namespaces/{namespace}/ipamclaims/{name}")
