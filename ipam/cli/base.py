"""The ``ipam`` command group and its REST client.

Human tables by default, ``--json`` for scripts.  Bad input exits 2 with a one-line reason
naming the field; an unreachable or failing service exits 1.
"""

from __future__ import annotations

import json
import ssl
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import NoReturn

import click
from rich.console import Console
from rich.table import Table

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


def fail(field: str, reason: str) -> NoReturn:
    raise click.UsageError(f"{field}: {reason}")


def quoted(*parts: str | None) -> str:
    """Path segments, each quoted for a URL path."""
    return "/".join(urllib.parse.quote(p, safe="") for p in parts if p)


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
