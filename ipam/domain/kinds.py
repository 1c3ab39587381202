"""The two kinds of address ipam hands out, described as data.

Leasing, releasing, reconciling what the cluster shows, expiry, quarantine, the projection,
REST, the CLI and the watcher are written once; what a MAC and an IP address differ in for
those is read from a ``Kind``: what their spaces and addresses are called in messages, the
tags of their commands and events, the extra fields their events carry.  Arithmetic (MAC
ranges, subnets) lives in ``pools`` and ``networks``.
"""

from __future__ import annotations

from dataclasses import dataclass

from msgspec import Struct

from .owners import CanonicalMac, Name


class ObservedInterface(Struct, frozen=True):
    """One interface of a VM as the watcher saw it: the MAC in its spec."""

    name: Name
    mac: CanonicalMac

    @property
    def addresses(self) -> tuple[str, ...]:
        return (self.mac,)


class ObservedAddresses(Struct, frozen=True):
    """One interface of a VM as the watcher saw it: the addresses its annotation gives it."""

    name: Name
    addresses: tuple[str, ...] = ()


@dataclass(frozen=True, eq=False)  # kinds are singletons: compared and hashed by identity
class Kind:
    name: str  # "mac" or "ip": metric labels, REST paths, CLI words, Postgres tables
    word: str  # what people call it: "MAC", "IP"
    space: str  # the field naming the address space: "pool" or "network"
    address: str  # the field naming one address: "mac" or "address"
    address_type: object
    prefix: str  # of event tags: MacLeased, IpLeased
    detail: tuple[tuple[str, type], ...]  # fields of the events that hand out an address, after the address
    requested: tuple[str, object, object]  # the lease command's field asking for addresses: name, type, default
    observed: type  # one observed interface
    holds: str  # what one interface holds in one space, for people
    tags: dict  # command role -> tag (the tags are public and predate this table: they are irregular)

    def __repr__(self) -> str:
        return f"Kind({self.name})"


MAC = Kind(
    name="mac", word="MAC", space="pool", address="mac", address_type=CanonicalMac, prefix="Mac", detail=(),
    requested=("mac", str | None, None), observed=ObservedInterface, holds="one MAC per pool",
    tags={"lease": "LeaseMac", "release_owner": "ReleaseOwner", "release_address": "ReleaseMac", "observe": "ObserveVm",
          "expire": "ExpirePending"},
)
IP = Kind(
    name="ip", word="IP", space="network", address="address", address_type=str, prefix="Ip",
    detail=(("prefix_length", int),), requested=("addresses", tuple[str, ...], ()), observed=ObservedAddresses,
    holds="one address per family of the network (two for dual-stack)",
    tags={"lease": "LeaseIp", "release_owner": "ReleaseIps", "release_address": "ReleaseIp", "observe": "ObserveVmIps",
          "expire": "ExpirePendingIp"},
)
KINDS = (MAC, IP)
