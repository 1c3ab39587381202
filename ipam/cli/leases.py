"""Lease, list and release from the command line, for every kind of address: written once.

MAC leases are top-level verbs (``ipam lease``, ``ipam leases``, ``ipam release``) as they were
first; IP leases live under ``ipam ip`` (``lease``, ``list``, ``release``) with the network named.
Addresses are checked here with the service's own rules, so bad input exits 2 naming the option.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import click

from ..domain.ip import AddressError, format_address, parse_address
from ..domain.kinds import IP, MAC, Kind
from ..domain.mac import MacFormatError, format_mac, parse_unicast
from .base import Client, fail, main, quoted


def _canonical(parse: Callable[[str], int], format_: Callable[[int], str], error: type) -> Callable[[str | None, str], str]:
    def check(value: str | None, option: str) -> str | None:
        if value is None:
            return None
        try:
            return format_(parse(value))
        except error as e:
            fail(option, str(e))
    return check


@dataclass(frozen=True)
class LeaseCli:
    kind: Kind
    path: str  # REST path of leases
    by_address: str  # REST path of the lease holding an address
    space_in_path: bool  # an IP address is unique in its network only: releases name the network
    head: list[str]  # columns before the owner
    option: str  # the option naming one address
    canonical: Callable[[str | None, str], str | None]
    lease_options: list  # click options of a lease besides the owner's
    body: Callable[[dict], dict]  # those options -> the request body's fields


MAC_CLI = LeaseCli(
    kind=MAC, path="/v1/mac-leases", by_address="/v1/macs", space_in_path=False, head=["mac", "pool"], option="--mac",
    canonical=_canonical(parse_unicast, format_mac, MacFormatError),
    lease_options=[click.option("--pool", default=None, help="Pool (default: the namespace's pool, else the default pool)."),
                   click.option("--mac", default=None, help="Ask for this MAC.")],
    body=lambda o: {"pool": o["pool"], "mac": MAC_CLI.canonical(o["mac"], "--mac")})
IP_CLI = LeaseCli(
    kind=IP, path="/v1/ip-leases", by_address="/v1/ips", space_in_path=True, head=["address", "prefix_length", "network"],
    option="--address",
    canonical=_canonical(parse_address, format_address, AddressError),
    lease_options=[click.option("--network", required=True),
                   click.option("--address", "addresses", multiple=True, help="Ask for this address (one per family).")],
    body=lambda o: {"network": o["network"], "addresses": [IP_CLI.canonical(a, "--address") for a in o["addresses"]]})


def _with(options: list):
    def decorate(f):
        for option in reversed(options):
            f = option(f)
        return f
    return decorate


def lease_command(group: click.Group, name: str, cli: LeaseCli) -> None:
    @group.command(name, help=f"Lease a VM interface its {cli.kind.word} addresses.")
    @click.option("--namespace", required=True)
    @click.option("--vm", required=True)
    @click.option("--vm-uid", required=True)
    @click.option("--interface", required=True)
    @_with(cli.lease_options)
    @click.option("--command-id", default=None, help="Retry key: the same id gets the same outcome.")
    @click.pass_obj
    def lease(client: Client, **options) -> None:
        body = {k: options[k] for k in ("namespace", "vm", "vm_uid", "interface", "command_id")} | cli.body(options)
        r = client.call("POST", cli.path, {k: v for k, v in body.items() if v is not None})
        leases = [r["lease"]] if "lease" in r else r["leases"]
        client.show([{**x, "existing": r["existing"]} for x in leases], [*cli.head, "namespace", "vm", "interface", "existing"],
                    r)


def list_command(group: click.Group, name: str, cli: LeaseCli) -> None:
    space, address = cli.kind.space, cli.kind.address

    @group.command(name, help=f"List live {cli.kind.word} leases.")
    @click.option(f"--{space}", "space", default=None)
    @click.option("--namespace", default=None)
    @click.option("--vm", default=None)
    @click.option(cli.option, "address", default=None)
    @click.option("--limit", default=1000, type=click.IntRange(1, 100000), show_default=True)
    @click.pass_obj
    def listing(client: Client, **o) -> None:
        query = {space: o["space"], "namespace": o["namespace"], "vm": o["vm"], "limit": o["limit"],
                 address: cli.canonical(o["address"], cli.option)}
        r = client.call("GET", cli.path, query=query)
        client.show(r["leases"], [*cli.head, "namespace", "vm", "vm_uid", "interface", "state", "since"], r)


def release_command(group: click.Group, name: str, cli: LeaseCli) -> None:
    space = f"{cli.kind.space.upper()} " if cli.space_in_path else ""
    usage = f"{space}NAMESPACE VM [INTERFACE], or {space}{cli.option} ADDRESS"

    @group.command(name, help=f"Release {usage}.")
    @_with([click.argument("space")] if cli.space_in_path else [])
    @click.argument("namespace", required=False)
    @click.argument("vm", required=False)
    @click.argument("interface", required=False)
    @click.option(cli.option, "address", default=None, help="Release the lease holding this address instead.")
    @click.pass_obj
    def release(client: Client, namespace, vm, interface, address, space=None) -> None:
        if address is not None:
            if namespace:
                fail(cli.option, f"give either {cli.option} or NAMESPACE VM, not both")
            r = client.call("DELETE", f"{cli.by_address}/{quoted(space, cli.canonical(address, cli.option))}")
        else:
            if not namespace or not vm:
                fail("NAMESPACE VM", f"both are required (or {cli.option})")
            r = client.call("DELETE", f"{cli.path}/{quoted(space, namespace, vm, interface)}")
        client.show(r["released"], [*cli.head, "namespace", "vm", "interface"], r)


@main.group()
def ip() -> None:
    """IP leases."""


for _group, _cli, (_lease, _list, _release) in ((main, MAC_CLI, ("lease", "leases", "release")),
                                                (ip, IP_CLI, ("lease", "list", "release"))):
    lease_command(_group, _lease, _cli)
    list_command(_group, _list, _cli)
    release_command(_group, _release, _cli)
