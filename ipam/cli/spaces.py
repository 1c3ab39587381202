"""Pools and networks from the command line: create, list, change, delete."""

from __future__ import annotations

import urllib.parse

import click

from ..domain.ip import NetworkError
from ..domain.kubevirt import SpecError
from ..domain.nad import subnet_specs
from ..domain.networks import build_network
from ..domain.pools import RangeError, parse_range
from .base import Client, fail, main


@main.group()
def pool() -> None:
    """MAC pools."""


@pool.command("create")
@click.argument("name")
@click.option("--range", "range_", help="first-last MAC, e.g. 02:00:00:00:00:00-02:ff:ff:ff:ff:ff")
@click.option("--namespace", "namespaces", multiple=True, help="Bind a namespace to this pool (repeatable).")
@click.option("--default", "default", is_flag=True, help="Use for namespaces bound to no pool.")
@click.option("--external", is_flag=True, help="The pool of static MACs outside every range (no --range).")
@click.pass_obj
def pool_create(client: Client, name: str, range_: str | None, namespaces: tuple[str, ...], default: bool,
                external: bool) -> None:
    """Create pool NAME."""
    if range_ is None and not external:
        fail("--range", "a range is required (or --external)")
    if range_ is not None:
        try:
            parse_range(range_)
        except RangeError as e:
            fail("--range", str(e))
    r = client.call("POST", "/v1/pools", {"name": name, "range": range_, "namespaces": list(namespaces),
                                          "default": default, "external": external})
    client.show([r], ["name", "range", "size", "namespaces", "default"], r)


@pool.command("list")
@click.pass_obj
def pool_list(client: Client) -> None:
    """Pools with size, used, quarantined and free."""
    r = client.call("GET", "/v1/pools")
    client.show(r["pools"], ["name", "range", "size", "used", "quarantined", "free", "percent", "namespaces", "default"], r)


@main.group()
def network() -> None:
    """IP networks (secondary networks whose VM interfaces get addresses)."""


def _check_network(name: str, subnets, gateways, excludes, dns, attachments) -> dict:
    """The request body, checked here with the service's own rules (exit 2 naming the option)."""
    try:
        specs = subnet_specs(list(subnets), list(gateways), list(excludes), ("--subnet", "--gateway", "--exclude"))
    except SpecError as e:
        fail(e.field, e.reason)
    try:
        build_network(name, specs, dns, attachments)
    except NetworkError as e:
        option = {"name": "NAME", "dns": "--dns", "attachments": "--attachment"}.get(e.field.split("[")[0].split(".")[0])
        fail(option or "--subnet", e.reason)
    return {"subnets": [{"cidr": x.cidr, "gateway": x.gateway, "exclude": list(x.exclude)} for x in specs],
            "dns": list(dns), "attachments": list(attachments)}


_NETWORK_OPTIONS = [
    click.option("--subnet", "subnets", multiple=True, required=True, help="CIDR (repeatable; IPv4 and IPv6 for dual-stack)."),
    click.option("--gateway", "gateways", multiple=True, help="Gateway of the subnet containing it (reserved; default route)."),
    click.option("--exclude", "excludes", multiple=True, help="Address, first-last range or CIDR never handed out (repeatable)."),
    click.option("--dns", multiple=True, help="DNS server written to cloud-init (repeatable)."),
    click.option("--attachment", "attachments", multiple=True,
                 help="NetworkAttachmentDefinition namespace/name whose VM interfaces get addresses here (repeatable)."),
]


def _network_options(f):
    for option in reversed(_NETWORK_OPTIONS):
        f = option(f)
    return f


def _show_network(client: Client, r: dict) -> None:
    rows = [{"name": r["name"], **s, "dns": ",".join(r["dns"]), "attachments": ",".join(r["attachments"])} for s in r["subnets"]]
    client.show(rows, ["name", "cidr", "gateway", "size", "used", "quarantined", "free", "percent", "dns", "attachments"], r)


@network.command("create")
@click.argument("name")
@_network_options
@click.pass_obj
def network_create(client: Client, name: str, subnets, gateways, excludes, dns, attachments) -> None:
    """Create network NAME."""
    body = _check_network(name, subnets, gateways, excludes, dns, attachments)
    _show_network(client, client.call("POST", "/v1/networks", {"name": name, **body}))


@network.command("update")
@click.argument("name")
@_network_options
@click.pass_obj
def network_update(client: Client, name: str, subnets, gateways, excludes, dns, attachments) -> None:
    """Replace the definition of network NAME (refused while a lease would fall outside it)."""
    body = _check_network(name, subnets, gateways, excludes, dns, attachments)
    _show_network(client, client.call("PUT", f"/v1/networks/{urllib.parse.quote(name, safe='')}", body))


@network.command("list")
@click.pass_obj
def network_list(client: Client) -> None:
    """Networks, one row per subnet, with size, used, quarantined and free."""
    r = client.call("GET", "/v1/networks")
    rows = [{"name": n["name"], **s, "attachments": ",".join(n["attachments"]), "source": n["source"]}
            for n in r["networks"] for s in n["subnets"]]
    client.show(rows, ["name", "cidr", "gateway", "size", "used", "free", "percent", "attachments", "source"], r)


@network.command("delete")
@click.argument("name")
@click.pass_obj
def network_delete(client: Client, name: str) -> None:
    """Delete network NAME (refused while it holds leases)."""
    r = client.call("DELETE", f"/v1/networks/{urllib.parse.quote(name, safe='')}")
    client.show([r], ["deleted"], r)
