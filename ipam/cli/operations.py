"""Running and operating ipam: serve, migrate, rebuild, status, the events topic, the schemas."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys

import click

from ..config import Config, ConfigError
from ..devenv import BrokerAddressInUse, PostgresAddressInUse
from .base import Client, fail, main


@main.command()
@click.option("--role", "roles", multiple=True, type=click.Choice(["all", "api", "allocator", "projector", "watcher"]),
              default=["all"],
              show_default=True, help="Roles to run in this process (repeat to combine).")
@click.option("--listen", default=None, help="host:port for HTTP (default IPAM_HTTP_ADDR, 127.0.0.1:8080).")
def serve(roles: tuple[str, ...], listen: str | None) -> None:
    """Run the service.  Without IPAM_KAFKA_BOOTSTRAP a local memory-only broker is started."""
    from .. import telemetry
    from ..service import serve_forever

    try:
        cfg = Config.from_env(http_addr=listen)
        cfg.check_listener()
    except ConfigError as e:
        raise click.UsageError(str(e)) from None
    telemetry.configure_logs(cfg.log_level, cfg.log_format)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    try:
        asyncio.run(serve_forever(cfg, set(roles)))
    except (BrokerAddressInUse, PostgresAddressInUse) as e:
        raise click.UsageError(str(e)) from None


@main.command()
def migrate() -> None:
    """Create the database if needed and apply the SQL migrations."""
    from ..adapters.postgres.migrations import migrate as run

    cfg = Config.from_env()
    applied = asyncio.run(run(cfg.database_dsn))
    click.echo(f"applied: {', '.join(applied)}" if applied else "schema is up to date")


@main.command()
@click.pass_obj
def rebuild(client: Client) -> None:
    """Replay the ledger into fresh tables (schema ipam_rebuild) and compare them with the live tables.

    Exits 0 when they are equal, 1 when they differ.
    """
    from rich.progress import Progress

    from ..adapters.postgres.codecs import connect
    from ..adapters.postgres.rebuild import rebuild as run

    cfg = Config.from_env()

    async def go():
        conn = await connect(cfg.database_dsn)
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


@main.command()
@click.pass_obj
def status(client: Client) -> None:
    """Partitions (owner, epoch, what waits), pools and networks with usage, pending leases."""
    raw = client.call("GET", "/v1/status")
    if client.as_json:
        click.echo(json.dumps(raw, indent=2))
        return
    if raw.get("database"):
        click.echo(f"database: {raw['database']}")
    if raw.get("kafka_bootstrap"):
        click.echo(f"broker: {raw['kafka_bootstrap']}")
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
    declared = raw.get("config")
    if declared:
        click.echo(f"\ndeclared configuration {declared['file']}: applied {declared['applied_at'] or 'never'}")
        if declared["error"]:
            click.echo(f"  NOT applied: {declared['error']}")
        for r in declared["refusals"]:
            click.echo(f"  refused {r['entry']}: {r['reason']}")


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
    from .tail import EventsTopicError, run

    try:
        cfg = Config.from_env()
    except ConfigError as e:
        raise click.UsageError(str(e)) from None
    if cfg.kafka_bootstrap is None:
        cfg = dataclasses.replace(cfg, kafka_bootstrap=cfg.local_broker_addr)
    wrong = [p for p in partitions if p >= cfg.partitions]
    if wrong:
        fail("--partition", f"{wrong[0]} is not a partition (IPAM_PARTITIONS={cfg.partitions})")
    try:
        run(cfg, last, follow, client.as_json, list(partitions) or None, click.echo)
    except EventsTopicError as e:
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

    from ..schemas import ASYNCAPI_PATH, export, export_asyncapi

    written = export(Path(target) if target else None)
    if target is None and ASYNCAPI_PATH.parent.is_dir() and export_asyncapi():
        written.append("docs/asyncapi.yaml")
    click.echo(f"wrote {len(written)} schema(s)" + (": " + ", ".join(written) if written else ""))
