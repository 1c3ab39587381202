"""What the REST-level tests need to know of each kind of address, so one test serves both kinds."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

import pytest


@dataclass(frozen=True)
class KindCase:
    name: str
    spaces: str  # REST path of the spaces
    leases: str  # REST path of the leases
    view: str  # the admin's view of the leases
    space: Callable[[str], dict]  # name -> body creating a space of that name
    owner: Callable[[str, int], dict]  # space, i -> the body of a lease for owner i
    per_lease: int  # addresses one lease hands out (a MAC; two IP addresses on a dual-stack network)
    requested: Callable[[list[str]], dict]  # addresses -> the body fields asking for them
    tiny: dict  # a space holding exactly ``tiny_size`` addresses (of one family)
    tiny_size: int
    released: Callable[[str, str, str], str]  # space, namespace, vm -> the REST path releasing the VM's leases

    def addresses(self, answer: dict) -> list[str]:
        leases = [answer["lease"]] if "lease" in answer else answer["leases"]
        return sorted(x["mac" if "mac" in x else "address"] for x in leases)


MAC = KindCase(
    name="mac", spaces="/v1/pools", leases="/v1/mac-leases", view="ipam.mac_leases",
    space=lambda name: {"name": name, "range": "02:00:00:00:00:00-02:00:00:00:ff:ff", "default": True},
    owner=lambda space, i: {"namespace": "ns", "vm": f"vm-{i}", "vm_uid": f"uid-{i}", "interface": "eth0"},
    per_lease=1, requested=lambda addresses: {"mac": addresses[0]},
    tiny={"name": "tiny", "range": "02:00:00:00:00:01-02:00:00:00:00:02", "default": True}, tiny_size=2,
    released=lambda space, ns, vm: f"/v1/mac-leases/{ns}/{vm}")
IP = KindCase(
    name="ip", spaces="/v1/networks", leases="/v1/ip-leases", view="ipam.ip_leases",
    space=lambda name: {"name": name, "subnets": [{"cidr": "10.60.0.0/22", "gateway": "10.60.0.1", "exclude": ["10.60.1.0/24"]},
                                                  {"cidr": "fd00:60::/64"}]},
    owner=lambda space, i: {"network": space, "namespace": "ns", "vm": f"vm-{i}", "vm_uid": f"uid-{i}", "interface": "eth1"},
    per_lease=2, requested=lambda addresses: {"addresses": addresses},
    tiny={"name": "tiny", "subnets": [{"cidr": "192.168.5.0/29", "gateway": "192.168.5.1",
                                       "exclude": ["192.168.5.2-192.168.5.4"]}]},
    tiny_size=2, released=lambda space, ns, vm: f"/v1/ip-leases/{space}/{ns}/{vm}")
KINDS = pytest.mark.parametrize("kind", [MAC, IP], ids=["mac", "ip"])


async def create_space(http, base: str, kind: KindCase, name: str = "crash") -> None:
    async with http.post(base + kind.spaces, json=kind.space(name)) as r:
        assert r.status == 201, await r.text()


async def lease_until_answered(http, base: str, kind: KindCase, i: int, key: str, tries: int = 30) -> tuple[int, dict]:
    """A lease asked again while the service answers 5xx (a role recovering, a trim), under one Idempotency-Key:
    every try is the same command."""
    for _ in range(tries):
        status, body = await lease(http, base, kind, i, headers={"Idempotency-Key": f"{key}-{kind.name}-{i}"})
        if status < 500:
            return status, body
        await asyncio.sleep(0.2)
    return status, body


async def lease(http, base: str, kind: KindCase, i: int, space: str = "crash", headers=None, **extra) -> tuple[int, dict]:
    async with http.post(base + kind.leases, json={**kind.owner(space, i), **extra}, headers=headers or {}) as r:
        return r.status, await r.json()
