"""The ``ipam`` command: run the service, migrate, and drive the REST API.

Human tables by default, ``--json`` for scripts.  Bad input exits 2 with a one-line
reason naming the field; an unreachable or failing service exits 1.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import ssl
import sys
import urllib.error
import urllib.parse
import urllib.request

import click
from rich.console import Console
from rich.table import Table

from .config import Config, ConfigError
from .domain.ip import AddressError, NetworkError, build_network, format_address, parse_address
from .domain.kubevirt import SpecError
from .domain.mac import MacFormatError, format_mac, parse_unicast
from .domain.nad import subnet_specs
from .domain.pools import RangeError, parse_range

DEFAULT_URL = "http://127.0.0.1:8080"


class Client:
    def __init__(self, url: str, as_json: bool, token: str | None = None, cacert: str | None = None) -> None:
        self.url = url.rstrip("/")
        self.as_json = as_json
        self.token = token
        self.context = ssl.create_default_context(cafile=cacert) if cacert else None

    def call(self, method: str, path: str, body: dict | None = None, query: dict | None = None) -> dict:
        q = {k: v for k, v in (query or {}).items() if v is not None}
        full = self.url + path + (("?" + urllib.parse.urlencode(q)) if q else "")
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(full, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=60, context=self.context) as resp:
                return json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as e:
            try:
                err = json.loads(e.read())["error"]
            except (ValueError, KeyError, TypeError):
                err = {"code": "http", "message": e.reason, "field": None}
            field = f"{err['field']}: " if err.get("field") else ""
            click.echo(f"error: {field}{err['message']}", err=True)
            sys.exit(2 if 400 <= e.code < 500 else 1)
        except urllib.error.URLError as e:
            click.echo(f"error: cannot reach ipam at {self.url}: {e.reason}", err=True)
            sys.exit(1)

    def show(self, rows: list[dict], columns: list[str], raw: dict) -> None:
        if self.as_json:
            click.echo(json.dumps(raw, indent=2))
            return
        table = Table(*columns, box=None, pad_edge=False)
        console = Console(width=None if sys.stdout.isatty() else 250)
        for r in rows:
            table.add_row(*["" if r.get(c) is None else str(r.get(c)) for c in columns])
        console.print(table)


def _fail(field: str, reason: str) -> None:
    raise click.UsageError(f"{field}: {reason}")


def _neither(option: str, namespace: str | None) -> None:
    """A release names one address (``option``) or an owner, not both."""
    if namespace:
        _fail(option, f"give either {option} or NAMESPACE VM, not both")


def _owner_path(namespace: str | None, vm: str | None, interface: str | None, option: str) -> str:
    """NAMESPACE/VM[/INTERFACE] of a release, quoted for a URL path."""
    if not namespace or not vm:
        _fail("NAMESPACE VM", f"both are required (or {option})")
    return "/".join(urllib.parse.quote(p, safe="") for p in (namespace, vm, interface) if p)


def _check_mac(value: str | None, field: str = "--mac") -> str | None:
    if value is None:
        return None
    try:
        return format_mac(parse_unicast(value))
    except MacFormatError as e:
        _fail(field, str(e))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--url", envvar="IPAM_URL", default=DEFAULT_URL, show_default=True, help="REST API of a running ipam.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@click.option("--token", envvar="IPAM_TOKEN", default=None, help="Bearer token for the REST API (reader or admin).")
@click.option("--cacert", envvar="IPAM_CA_FILE", default=None, type=click.Path(exists=True, dir_okay=False),
              help="PEM CA bundle that signed the API's certificate (https URLs).")
@click.pass_context
def main(ctx: click.Context, url: str, as_json: bool, token: str | None, cacert: str | None) -> None:
    """ipam: MAC and IP address management for KubeVirt VMs."""
    ctx.obj = Client(url, as_json, token, cacert)


@main.command()
@click.option("--role", "roles", multiple=True, type=click.Choice(["all", "api", "allocator", "projector", "watcher"]), default=["all"],
              show_default=True, help="Roles to run in this process (repeat to combine).")
@click.option("--listen", default=None, help="host:port for HTTP (default IPAM_HTTP_ADDR, 127.0.0.1:8080).")
def serve(roles: tuple[str, ...], listen: str | None) -> None:
    """Run the service.  Without IPAM_KAFKA_BOOTSTRAP a local memory-only broker is started."""
    from . import logs
    from .service import serve_forever

    try:
        cfg = Config.from_env(http_addr=listen)
        cfg.check_listener()
    except ConfigError as e:
        raise click.UsageError(str(e)) from None
    logs.configure(cfg.log_level, cfg.log_format)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(serve_forever(cfg, set(roles)))


@main.command()
def migrate() -> None:
    """Create the database if needed and apply the SQL migrations."""
    from .adapters.postgres.migrations import migrate as run

    cfg = Config.from_env()
    applied = asyncio.run(run(cfg.database_url))
    click.echo(f"applied: {', '.join(applied)}" if applied else "schema is up to date")


@main.command()
@click.pass_obj
def rebuild(client: Client) -> None:
    """Replay the ledger into fresh tables (schema ipam_rebuild) and compare them with the live tables.

    Exits 0 when they are equal, 1 when they differ.
    """
    from rich.progress import Progress

    from .adapters.postgres.codecs import connect
    from .adapters.postgres.rebuild import rebuild as run

    cfg = Config.from_env()

    async def go():
        conn = await connect(cfg.database_url)
        try:
            with Progress(transient=True, disable=client.as_json) as bar:
                task = bar.add_task("replaying the ledger", total=None)
                return await run(conn, lambda done, total: bar.update(task, completed=done, total=total))
        finally:
            await conn.close()

    report = asyncio.run(go())
    result = {"equal": report.equal, "events": report.events, "leases": report.leases,
              "quarantined": report.quarantined, "differences": report.differences, "seconds": round(report.seconds, 2)}
    if client.as_json:
        click.echo(json.dumps(result))
    else:
        verdict = "equal to the live tables" if report.equal else f"DIFFERENT from the live tables: {report.differences}"
        click.echo(f"replayed {report.events} events in {report.seconds:.1f}s: {report.leases} leases, "
                   f"{report.quarantined} quarantined; {verdict}")
    sys.exit(0 if report.equal else 1)


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
def pool_create(client: Client, name: str, range_: str | None, namespaces: tuple[str, ...], default: bool, external: bool) -> None:
    """Create pool NAME."""
    if range_ is None and not external:
        _fail("--range", "a range is required (or --external)")
    if range_ is not None:
        try:
            parse_range(range_)
        except RangeError as e:
            _fail("--range", str(e))
    r = client.call("POST", "/v1/pools", {"name": name, "range": range_, "namespaces": list(namespaces),
                                          "default": default, "external": external})
    client.show([r], ["name", "range", "size", "namespaces", "default"], r)


@pool.command("list")
@click.pass_obj
def pool_list(client: Client) -> None:
    """Pools with size, used, quarantined and free."""
    r = client.call("GET", "/v1/pools")
    client.show(r["pools"], ["name", "range", "size", "used", "quarantined", "free", "percent", "namespaces", "default"], r)


@main.command()
@click.option("--namespace", required=True)
@click.option("--vm", required=True)
@click.option("--vm-uid", required=True)
@click.option("--interface", required=True)
@click.option("--pool", default=None, help="Pool (default: the namespace's pool, else the default pool).")
@click.option("--mac", default=None, help="Ask for this MAC.")
@click.option("--command-id", default=None, help="Retry key: the same id gets the same outcome.")
@click.pass_obj
def lease(client: Client, namespace: str, vm: str, vm_uid: str, interface: str, pool: str | None, mac: str | None,
          command_id: str | None) -> None:
    """Lease a MAC for one VM interface."""
    body = {"namespace": namespace, "vm": vm, "vm_uid": vm_uid, "interface": interface, "pool": pool,
            "mac": _check_mac(mac), "command_id": command_id}
    r = client.call("POST", "/v1/mac-leases", {k: v for k, v in body.items() if v is not None})
    client.show([{**r["lease"], "existing": r["existing"]}], ["mac", "pool", "namespace", "vm", "interface", "existing"], r)


@main.command()
@click.argument("namespace", required=False)
@click.argument("vm", required=False)
@click.argument("interface", required=False)
@click.option("--mac", default=None, help="Release the lease holding this MAC instead.")
@click.pass_obj
def release(client: Client, namespace: str | None, vm: str | None, interface: str | None, mac: str | None) -> None:
    """Release NAMESPACE VM [INTERFACE], or --mac MAC."""
    if mac is not None:
        _neither("--mac", namespace)
        r = client.call("DELETE", f"/v1/macs/{urllib.parse.quote(_check_mac(mac))}")
    else:
        r = client.call("DELETE", f"/v1/mac-leases/{_owner_path(namespace, vm, interface, '--mac')}")
    client.show(r["released"], ["mac", "pool", "namespace", "vm", "interface"], r)


@main.command()
@click.option("--namespace", default=None)
@click.option("--vm", default=None)
@click.option("--pool", default=None)
@click.option("--mac", default=None)
@click.option("--limit", default=1000, type=click.IntRange(1, 100000), show_default=True)
@click.pass_obj
def leases(client: Client, namespace: str | None, vm: str | None, pool: str | None, mac: str | None, limit: int) -> None:
    """List live MAC leases."""
    r = client.call("GET", "/v1/mac-leases", query={"namespace": namespace, "vm": vm, "pool": pool, "mac": _check_mac(mac),
                                                   "limit": limit})
    client.show(r["leases"], ["mac", "pool", "namespace", "vm", "vm_uid", "interface", "state", "since"], r)


@main.group()
def network() -> None:
    """IP networks (secondary networks whose VM interfaces get addresses)."""


def _check_network(name: str, subnets, gateways, excludes, dns, attachments) -> dict:
    """The request body, checked here with the service's own rules (exit 2 naming the option)."""
    try:
        specs = subnet_specs(list(subnets), list(gateways), list(excludes), ("--subnet", "--gateway", "--exclude"))
    except SpecError as e:
        _fail(e.field, e.reason)
    try:
        build_network(name, specs, dns, attachments)
    except NetworkError as e:
        option = {"name": "NAME", "dns": "--dns", "attachments": "--attachment"}.get(e.field.split("[")[0].split(".")[0])
        _fail(option or "--subnet", e.reason)
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


@main.group()
def ip() -> None:
    """IP leases."""


def _check_address(value: str, field: str) -> str:
    try:
        return format_address(parse_address(value))
    except AddressError as e:
        _fail(field, str(e))


@ip.command("lease")
@click.option("--network", required=True)
@click.option("--namespace", required=True)
@click.option("--vm", required=True)
@click.option("--vm-uid", required=True)
@click.option("--interface", required=True)
@click.option("--address", "addresses", multiple=True, help="Ask for this address (one per family).")
@click.option("--command-id", default=None, help="Retry key: the same id gets the same outcome.")
@click.pass_obj
def ip_lease(client: Client, network: str, namespace: str, vm: str, vm_uid: str, interface: str, addresses, command_id) -> None:
    """Lease an interface its addresses in a network (one per family)."""
    body = {"network": network, "namespace": namespace, "vm": vm, "vm_uid": vm_uid, "interface": interface,
            "addresses": [_check_address(a, "--address") for a in addresses], "command_id": command_id}
    r = client.call("POST", "/v1/ip-leases", {k: v for k, v in body.items() if v is not None})
    client.show([{**x, "existing": r["existing"]} for x in r["leases"]],
                ["address", "prefix_length", "network", "namespace", "vm", "interface", "existing"], r)


@ip.command("list")
@click.option("--network", default=None)
@click.option("--namespace", default=None)
@click.option("--vm", default=None)
@click.option("--address", default=None)
@click.option("--limit", default=1000, type=click.IntRange(1, 100000), show_default=True)
@click.pass_obj
def ip_list(client: Client, network, namespace, vm, address, limit) -> None:
    """List live IP leases."""
    r = client.call("GET", "/v1/ip-leases", query={
        "network": network, "namespace": namespace, "vm": vm,
        "address": None if address is None else _check_address(address, "--address"), "limit": limit})
    client.show(r["leases"], ["address", "prefix_length", "network", "namespace", "vm", "interface", "state", "since"], r)


@ip.command("release")
@click.argument("network")
@click.argument("namespace", required=False)
@click.argument("vm", required=False)
@click.argument("interface", required=False)
@click.option("--address", default=None, help="Release the lease holding this address instead.")
@click.pass_obj
def ip_release(client: Client, network: str, namespace, vm, interface, address) -> None:
    """Release NETWORK NAMESPACE VM [INTERFACE], or NETWORK --address ADDRESS."""
    quoted = urllib.parse.quote(network, safe="")
    if address is not None:
        _neither("--address", namespace)
        r = client.call("DELETE", f"/v1/ips/{quoted}/{urllib.parse.quote(_check_address(address, '--address'))}")
    else:
        r = client.call("DELETE", f"/v1/ip-leases/{quoted}/{_owner_path(namespace, vm, interface, '--address')}")
    client.show(r["released"], ["address", "network", "namespace", "vm", "interface"], r)


@main.command()
@click.pass_obj
def status(client: Client) -> None:
    """Partitions (owner, epoch, what waits), pools and networks with usage, pending leases."""
    raw = client.call("GET", "/v1/status")
    if client.as_json:
        click.echo(json.dumps(raw, indent=2))
        return
    if not raw["broker"]:
        click.echo("broker: NOT reachable (waiting counts unknown)")
    click.echo("partitions")
    client.show([{**p, "owner": p["owner"] or "-", "caught up": "yes" if p["caught_up"] else "no",
                  "commands waiting": p["commands_waiting"], "events waiting": p["events_waiting"]}
                 for p in raw["partitions"]],
                ["partition", "epoch", "owner", "caught up", "commands waiting", "events waiting", "generation"], raw)
    click.echo("\nMAC pools")
    client.show([{**p, "percent": f"{p['percent']:.1f}%" if p["percent"] is not None else "-"} for p in raw["pools"]],
                ["name", "range", "used", "quarantined", "free", "percent"], raw)
    click.echo("\nnetworks")
    client.show([{"name": n["name"], "cidr": s["cidr"], "used": s["used"], "free": s["free"], "percent": f"{s['percent']:.1f}%"}
                 for n in raw["networks"] for s in n["subnets"]], ["name", "cidr", "used", "free", "percent"], raw)
    click.echo(f"\npending leases (admitted, VM not seen yet): {raw['pending']['mac']} MAC, {raw['pending']['ip']} IP")


@main.group()
def events() -> None:
    """Read the events topic."""


@events.command("tail")
@click.option("-n", "--last", default=10, show_default=True, type=click.IntRange(0, 1_000_000),
              help="Start this many events before the end of each partition.")
@click.option("-f", "--follow", is_flag=True, help="Keep going: print new events as they are decided (Ctrl-C stops).")
@click.option("--partition", "partitions", multiple=True, type=click.IntRange(0), help="Only this partition (repeat).")
@click.pass_obj
def events_tail(client: Client, last: int, follow: bool, partitions: tuple[int, ...]) -> None:
    """Print events from the topic (IPAM_KAFKA_BOOTSTRAP, or the local broker's address), one per line or --json."""
    from .tail import run

    try:
        cfg = Config.from_env()
    except ConfigError as e:
        raise click.UsageError(str(e)) from None
    if cfg.kafka_bootstrap is None:
        cfg = dataclasses.replace(cfg, kafka_bootstrap=cfg.local_broker_addr)
    wrong = [p for p in partitions if p >= cfg.partitions]
    if wrong:
        _fail("--partition", f"{wrong[0]} is not a partition (IPAM_PARTITIONS={cfg.partitions})")
    from aiokafka.errors import KafkaError

    try:
        run(cfg, last, follow, client.as_json, list(partitions) or None, click.echo)
    except KafkaError as e:
        click.echo(f"error: cannot read {cfg.events_topic} from {cfg.kafka_bootstrap}: {e}", err=True)
        sys.exit(1)


@main.group()
def schemas() -> None:
    """JSON Schemas of commands and events (the event catalogue)."""


@schemas.command("export")
@click.option("--dir", "target", default=None, type=click.Path(file_okay=False), help="Where to write (default: schemas/).")
def schemas_export(target: str | None) -> None:
    """Write schemas/ (and docs/asyncapi.yaml, in a source checkout) from the msgspec types."""
    from pathlib import Path

    from .schemas import ASYNCAPI_PATH, export, export_asyncapi

    written = export(Path(target) if target else None)
    if target is None and ASYNCAPI_PATH.parent.is_dir() and export_asyncapi():
        written.append("docs/asyncapi.yaml")
    click.echo(f"wrote {len(written)} schema(s)" + (": " + ", ".join(written) if written else ""))


if __name__ == "__main__":
    main()
