"""`sdfp-edge costs`: what auto learned on this machine (runtime/cost_store.py), shown and cleared."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import click

from sdfp_edge import models as catalogue
from sdfp_edge.cli.options import user_errors
from sdfp_edge.errors import SdfpError
from sdfp_edge.paths import cost_dir
from sdfp_edge.runtime.cost_store import SCHEMA, file_model, stored_files, summary


@click.group()
def costs() -> None:
    """Show or delete what `auto` measured and keeps across runs (verify costs V(n), draft costs,
    acceptance per draft source), one file per model and machine settings, in
    $SDFP_EDGE_COST_DIR or <cache>/costs. To run once without them: SDFP_EDGE_NO_STORED_COSTS=1
    or `sdfp-edge --no-stored-costs ...`."""


def _when(t: Any) -> str:
    if not isinstance(t, (int, float)):
        return "?"
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _ratio(x: Any) -> str:
    return f"{x:.2f}" if isinstance(x, (int, float)) else "-"


@costs.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@user_errors
def list_(as_json: bool) -> None:
    """List the stored cost files: model, machine, when, V(2), V(8), acceptance per source."""
    rows = []
    for path, doc in stored_files():
        current = doc is not None and doc.get("schema") == SCHEMA
        rows.append({"file": str(path), "readable": current, **(summary(doc) if current else {}),
                     **({"model": Path(file_model(doc) or "?").name} if doc is not None and not current else {})})
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo(f"no stored costs in {cost_dir()}")
        return
    for r in rows:
        if not r["readable"]:
            what = f"of an older version, for {r['model']}" if r.get("model") else "unreadable"
            click.echo(f"{Path(r['file']).name}: {what} (ignored; `costs clear` deletes it)")
            continue
        ms = f"{r['t_token_ms']:.1f} ms/token" if r["t_token_ms"] is not None else "?"
        click.echo(f"{r['model']}  [{r['machine']}]  saved {_when(r['saved_at'])}")
        click.echo(f"  {ms}, V(2) {_ratio(r['V2'])}, V(8) {_ratio(r['V8'])}  ({Path(r['file']).name})")
        top = sorted(r["acceptance"].items(), key=lambda kv: -kv[1]["trials"])
        if top:
            click.echo("  first-draft acceptance: " + ", ".join(
                f"{s} {a['rate']:.0%} of {a['trials']:.0f}" for s, a in top[:8])
                + (f" (+{len(top) - 8} more)" if len(top) > 8 else ""))


def _matches(stored: str | None, model: str) -> bool:
    if stored is None:
        return False
    wanted = {model, str(Path(model).resolve())}
    try:
        wanted.add(str(catalogue.model_path(model).resolve()))
    except (SdfpError, OSError, ValueError):
        pass  # not a catalogue name: a path or a file name
    return stored in wanted or Path(stored).name == model


@costs.command()
@click.option("-m", "--model", default=None, metavar="PATH|NAME",
              help="Only this model's files (a path, a file name or a catalogue name).")
@user_errors
def clear(model: str | None) -> None:
    """Delete the stored cost files (all, or one model's): the next run learns afresh."""
    removed = 0
    for path, doc in stored_files():
        if model is not None and not _matches(file_model(doc), model):
            continue
        try:
            path.unlink()
            removed += 1
        except FileNotFoundError:
            pass
        except OSError as e:
            raise click.ClickException(f"cannot delete {path}: {e.strerror}") from e
    what = f" for {model}" if model else ""
    click.echo(f"removed {removed} cost file{'s' if removed != 1 else ''}{what} from {cost_dir()}")
