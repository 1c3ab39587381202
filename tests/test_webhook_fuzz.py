"""The webhooks never answer an HTTP error: AdmissionReviews built from real manifests (a VM on the pod network and
two Multus networks, a pod with a network-selection annotation) with one to three values anywhere in the review
replaced by a value of the wrong type (lists, objects, numbers, booleans, null, huge or odd strings, NUL) or
removed, sent over HTTPS to /mutate-virtualmachines and /mutate-pods.  Every one must get an AdmissionReview
answer (allowed, or denied with a message).  Seeded: ``IPAM_FUZZ_REVIEWS`` reviews (default 300 per webhook,
``make fuzz`` runs 1,500)."""

from __future__ import annotations

import copy
import json
import os
import random

import pytest

from .kubevirt import review, vm_manifest
from .test_webhook import admit, https, kube, kv, tls  # noqa: F401 (fixtures)

REVIEWS = int(os.environ.get("IPAM_FUZZ_REVIEWS", "300"))
WRONG = [[], {}, 0, -1, 1.5, True, None, "", "x" * 70_000, "\x00", "\u202e", ["a"], [{"a": 1}], {"a": [1]},
         "02:00:00:00:00:01", "10.0.0.1/24", 2**70]


def paths(obj, prefix=()):
    """Every path (keys and indexes) into a JSON value."""
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from paths(v, (*prefix, i))


def mutated(body: dict, rng: random.Random) -> dict:
    body = copy.deepcopy(body)
    for _ in range(rng.randint(1, 3)):
        candidates = [p for p in paths(body) if p]
        path = rng.choice(candidates)
        parent = body
        for step in path[:-1]:
            parent = parent[step]
        if isinstance(parent, dict) and rng.random() < 0.25:
            del parent[path[-1]]
        else:
            parent[path[-1]] = copy.deepcopy(rng.choice(WRONG))
    return body


def pod_review() -> dict:
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "web-0", "namespace": "prod", "annotations": {
               "k8s.v1.cni.cncf.io/networks": json.dumps([{"name": "blue-net", "interface": "net1"}, {"name": "green-net"}])}},
           "spec": {"containers": [{"name": "c", "image": "nginx"}]}}
    return review(pod, gvr=("", "v1", "Pod", "pods"))


@pytest.mark.parametrize("path, base", [
    ("/mutate-virtualmachines", lambda: review(vm_manifest("fuzz", multus=("blue", "green"),
                                                           macs={"blue": "02:00:00:00:00:09"}))),
    ("/mutate-pods", pod_review),
])
async def test_every_malformed_review_gets_an_admission_review_answer(kv, https, path, base):  # noqa: F811
    rng = random.Random(f"fuzz:{path}")
    counts = {"allowed": 0, "denied": 0}
    for _ in range(REVIEWS):
        body = mutated(base(), rng)
        response = await admit(https, kv, json.dumps(body).encode(), path)  # asserts HTTP 200 and an AdmissionReview
        counts["allowed" if response["allowed"] else "denied"] += 1
        if not response["allowed"]:
            assert response["status"]["message"], body
    assert counts["allowed"] and counts["denied"], counts
