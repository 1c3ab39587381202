"""Driving the REST API from the command line: pools, networks, and leases of every kind.

MAC leases are top-level verbs (``ipam lease``, ``ipam leases``, ``ipam release``) as they were first;
IP leases live under ``ipam ip`` (``lease``, ``list``, ``release``) with the network named; both are
made by one implementation from a ``LeaseCli`` description.  Addresses, ranges and network
definitions are checked here with the service's own rules, so bad input exits 2 naming the option.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import click

from ..domain.cluster.kubevirt import SpecError, subnet_specs
from ..domain.commands import SubnetSpec
from ..domain.ip import AddressError, NetworkError, format_address, parse_address
from ..domain.kinds import IP, MAC, Kind
from ..domain.mac import MacFormatError, format_mac, parse_unicast
from ..domain.networks import build_network
from ..domain.pools import RangeError, parse_range
from .base import Client, fail, main, quoted


def _canonical(parse: Callable[[str], int], format_: Callable[[int], str],
               error: type[Exception]) -> Callable[[str | None, str], str | None]:
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


_canonical_mac = _canonical(parse_unicast, format_mac, MacFormatError)
_canonical_ip = _canonical(parse_address, format_address, AddressError)
MAC_CLI = LeaseCli(
    kind=MAC, path="/v1/mac-leases", by_address="/v1/macs", space_in_path=False, head=["mac", "pool"], option="--mac",
    canonical=_canonical_mac,
    lease_options=[click.option("--pool", default=None, help="Pool (default: the namespace's pool, else the default pool)."),
                   click.option("--mac", default=None, help="Ask for this MAC.")],
    body=lambda o: {"pool": o["pool"], "mac": _canonical_mac(o["mac"], "--mac")})
IP_CLI = LeaseCli(
    kind=IP, path="/v1/ip-leases", by_address="/v1/ips", space_in_path=True, head=["address", "prefix_length", "network"],
    option="--address",
    canonical=_canonical_ip,
    lease_options=[click.option("--network", required=True),
                   click.option("--address", "addresses", multiple=True, help="Ask for this address (one per family).")],
    body=lambda o: {"network": o["network"], "addresses": [_canonical_ip(a, "--address") for a in o["addresses"]]})


def _with(options: list):
    def decorate(f):
        for option in reversed(options):
            f = option(f)
        return f
    return decorate


WORKLOAD = click.option("--workload", type=click.Choice(["VirtualMachine", "Pod", "IPAMClaim"]), default=None,
                        help="What holds the lease (default VirtualMachine); --vm and --vm-uid then name that object.")
CLUSTER = click.option("--cluster", default=None, help="The holder's Kubernetes cluster (default: the replica's IPAM_CLUSTER; "
                                                       "for lists, every cluster).")


def lease_command(group: click.Group, name: str, cli: LeaseCli) -> None:
    @group.command(name, help=f"Lease a VM interface its {cli.kind.word} addresses.")
    @click.option("--namespace", required=True)
    @click.option("--vm", required=True)
    @click.option("--vm-uid", required=True)
    @click.option("--interface", required=True)
    @_with(cli.lease_options)
    @WORKLOAD
    @CLUSTER
    @click.option("--command-id", default=None, help="Retry key: the same id gets the same outcome.")
    @click.pass_obj
    def lease(client: Client, **options) -> None:
        body = {k: options[k] for k in ("namespace", "vm", "vm_uid", "interface", "workload", "cluster", "command_id")} \
            | cli.body(options)
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
    @WORKLOAD
    @CLUSTER
    @click.pass_obj
    def listing(client: Client, **o) -> None:
        query = {space: o["space"], "namespace": o["namespace"], "vm": o["vm"], "limit": o["limit"],
                 address: cli.canonical(o["address"], cli.option), "workload": o["workload"], "cluster": o["cluster"]}
        r = client.call("GET", cli.path, query=query)
        client.show(r["leases"], [*cli.head, "namespace", "vm", "vm_uid", "interface", "workload", "cluster", "state", "since"],
                    r)


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
    _checked_range(range_)
    r = client.call("POST", "/v1/pools", {"name": name, "range": range_, "namespaces": list(namespaces),
                                          "default": default, "external": external})
    client.show([r], ["name", "range", "size", "namespaces", "default"], r)


def _checked_range(range_: str | None) -> None:
    if range_ is not None:
        try:
            parse_range(range_)
        except RangeError as e:
            fail("--range", str(e))


@pool.command("change")
@click.argument("name")
@click.option("--range", "range_", help="The new first-last range (grown, shrunk, or both).")
@click.option("--namespace", "namespaces", multiple=True, help="The namespaces bound to the pool (replaces the list).")
@click.option("--no-namespaces", is_flag=True, help="Bind no namespace to the pool.")
@click.option("--default/--no-default", "default", default=None, help="Make it (or stop it being) the default pool.")
@click.pass_obj
def pool_change(client: Client, name: str, range_: str | None, namespaces: tuple[str, ...], no_namespaces: bool,
                default: bool | None) -> None:
    """Change pool NAME (refused while live leases would fall outside a shrunk range: they are named)."""
    _checked_range(range_)
    if namespaces and no_namespaces:
        fail("--no-namespaces", "cannot be given with --namespace")
    body = {"range": range_, "namespaces": [] if no_namespaces else list(namespaces) or None, "default": default}
    r = client.call("PATCH", f"/v1/pools/{quoted(name)}", {k: v for k, v in body.items() if v is not None})
    client.show([r], ["name", "range", "size", "used", "namespaces", "default"], r)


def _deleter(group: click.Group, path: str, what: str) -> None:
    @group.command("delete", help=f"Delete {what} NAME (refused while it holds leases).")
    @click.argument("name")
    @click.pass_obj
    def delete(client: Client, name: str) -> None:
        r = client.call("DELETE", f"{path}/{quoted(name)}")
        client.show([r], ["deleted"], r)


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


def _network_writer(verb: str, method: str, help_: str) -> None:
    @network.command(verb, help=help_)
    @click.argument("name")
    @_network_options
    @click.pass_obj
    def write(client: Client, name: str, subnets, gateways, excludes, dns, attachments) -> None:
        body = _check_network(name, subnets, gateways, excludes, dns, attachments)
        path = "/v1/networks" if method == "POST" else f"/v1/networks/{quoted(name)}"
        _show_network(client, client.call(method, path, {"name": name, **body} if method == "POST" else body))


_network_writer("create", "POST", "Create network NAME.")
_network_writer("update", "PUT", "Replace the definition of network NAME (refused while a lease would fall outside it).")


@network.command("change")
@click.argument("name")
@click.option("--dns", multiple=True, help="DNS servers (replace the list; --no-dns for none).")
@click.option("--no-dns", is_flag=True, help="No DNS servers.")
@click.option("--attachment", "attachments", multiple=True, help="Attachments namespace/name (replace the list).")
@click.option("--no-attachments", is_flag=True, help="No attachments.")
@click.pass_obj
def network_change(client: Client, name: str, dns, no_dns: bool, attachments, no_attachments: bool) -> None:
    """Change network NAME's DNS or attachments, keeping the rest (subnets: ipam network update)."""
    body = {"dns": [] if no_dns else list(dns) or None, "attachments": [] if no_attachments else list(attachments) or None}
    try:
        build_network(name, [SubnetSpec(cidr="192.0.2.0/24")], body["dns"] or (), body["attachments"] or ())
    except NetworkError as e:
        fail({"dns": "--dns", "attachments": "--attachment"}.get(e.field.split("[")[0], "NAME"), e.reason)
    _show_network(client, client.call("PATCH", f"/v1/networks/{quoted(name)}", {k: v for k, v in body.items() if v is not None}))


@network.command("list")
@click.pass_obj
def network_list(client: Client) -> None:
    """Networks, one row per subnet, with size, used, quarantined and free."""
    r = client.call("GET", "/v1/networks")
    rows = [{"name": n["name"], **s, "attachments": ",".join(n["attachments"]), "source": n["source"]}
            for n in r["networks"] for s in n["subnets"]]
    client.show(rows, ["name", "cidr", "gateway", "size", "used", "free", "percent", "attachments", "source"], r)


_deleter(pool, "/v1/pools", "pool")
_deleter(network, "/v1/networks", "network")
