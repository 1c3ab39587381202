"""Reservations from the command line, for every kind: ``ipam reserve`` / ``ipam reservations`` /
``ipam unreserve`` for MACs, ``ipam ip reserve`` / ``reservations`` / ``unreserve`` for IP addresses,
made from the same ``LeaseCli`` descriptions as the lease verbs."""

from __future__ import annotations

import click

from .base import Client, main, quoted
from .resources import CLUSTER, IP_CLI, MAC_CLI, WORKLOAD, LeaseCli, _with, ip


def reservation_commands(group: click.Group, cli: LeaseCli) -> None:
    path = cli.path.replace("-leases", "-reservations")
    columns = [*cli.head, "namespace", "vm", "interface", "state", "pending_until"]

    @group.command("reserve", help=f"Set {cli.kind.word} addresses aside for a VM that does not exist yet.")
    @click.option("--namespace", required=True)
    @click.option("--vm", required=True)
    @click.option("--interface", default=None, help="The interface it is for (default: whichever of the VM's asks first).")
    @_with(cli.lease_options)
    @click.option("--expires-in", "expires_in_seconds", type=click.IntRange(1, 10 * 365 * 86400), default=None,
                  help="Seconds until the reservation lapses (default: never).")
    @WORKLOAD
    @CLUSTER
    @click.pass_obj
    def reserve(client: Client, **o) -> None:
        body = {k: o[k] for k in ("namespace", "vm", "interface", "expires_in_seconds", "workload", "cluster")} | cli.body(o)
        r = client.call("POST", path, {k: v for k, v in body.items() if v is not None})
        client.show([r["lease"]] if "lease" in r else r["leases"], columns, r)

    @group.command("reservations", help=f"List {cli.kind.word} reservations.")
    @click.option("--namespace", default=None)
    @click.option("--vm", default=None)
    @click.pass_obj
    def reservations(client: Client, namespace, vm) -> None:
        r = client.call("GET", path, query={"namespace": namespace, "vm": vm})
        client.show(r["leases"], columns, r)

    @group.command("unreserve", help=f"Release the {cli.kind.word} reservations of VM in NAMESPACE.")
    @click.argument("namespace")
    @click.argument("vm")
    @click.option("--interface", default=None, help="Only this interface's (* for those of any interface).")
    @click.pass_obj
    def unreserve(client: Client, namespace, vm, interface) -> None:
        r = client.call("DELETE", f"{path}/{quoted(namespace, vm)}", query={"interface": interface})
        client.show(r["released"], columns[:-2], r)


reservation_commands(main, MAC_CLI)
reservation_commands(ip, IP_CLI)
