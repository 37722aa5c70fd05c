"""`sdfp-edge bench`: every system on MT-Bench and HumanEval, each in its own process, paired ratios."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

import click

from sdfp_edge.bench.data import DEFAULT_DATA
from sdfp_edge.bench.systems import KNOWN
from sdfp_edge.cli.options import model_options, user_errors
from sdfp_edge.cli.generate import parse_layer_list, speculation_options

# --quick: every system, one prompt per category, short answers; meant to finish in under
# 10 minutes on the default model on the project's 2-core machine when it is quiet
QUICK = {"limit": 1, "max_tokens": 64}
DEFAULT_MAX_TOKENS = 128


def bench_speculation_options(f: Any) -> Any:
    """generate's speculation options without --mode (the bench runs every mode)."""
    f = speculation_options(f)
    f.__click_params__ = [p for p in f.__click_params__ if p.name != "mode"]
    return f


def _csv(value: str | None) -> list[str] | None:
    return None if value is None else [x.strip() for x in value.split(",") if x.strip()]


def _command_line(ctx: click.Context) -> str:
    """The command as typed, rebuilt from the parsed options that differ from their defaults."""
    parts = ["sdfp-edge", ctx.info_name or "bench"]
    for p in ctx.command.params:
        value = ctx.params.get(p.name or "")
        if not isinstance(p, click.Option) or value is None or value == p.default or value == ():
            continue
        if p.multiple:
            parts += [x for v in value for x in (max(p.opts, key=len), str(v))]
        elif not p.is_flag:
            parts += [max(p.opts, key=len), str(value)]
        elif value or p.secondary_opts:  # --flag, or the --no-flag of an on/off pair
            parts.append(max(p.opts if value else p.secondary_opts, key=len))
    return shlex.join(parts)


@click.command()
@model_options
@bench_speculation_options
@click.option("--data", default=",".join(DEFAULT_DATA), show_default=True, metavar="LIST",
              help="Data sets: mtbench (80 questions, first turns), humaneval (164 problems), humaneval-edit "
                   "(the 164 solved problems, each to be shown back with its function renamed: an answer that "
                   "copies its input), multiturn (category multi-turn: chats asking for successive edits of the "
                   "assistant's last answer, from HumanEval's solutions and MT-Bench's second turns).")
@click.option("--categories", default=None, metavar="LIST",
              help="Only these categories (MT-Bench categories, humaneval, edit, multi-turn).")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Prompts per category, chosen with --seed (default: all; 1 with --quick).")
@click.option("-n", "--max-tokens", type=click.IntRange(min=2), default=None,
              help=f"New tokens per prompt (default {DEFAULT_MAX_TOKENS}; {QUICK['max_tokens']} with --quick).")
@click.option("--temperature", "--temp", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="0 = greedy; > 0 samples (every system with the same temperature and seed).")
@click.option("--systems", default=None, metavar="LIST",
              help="Systems to compare (default: every available one): " + ", ".join(KNOWN)
                   + ". llama-cpp (the headline reference) and off are always run.")
@click.option("--repeats", type=click.IntRange(min=1), default=1, show_default=True,
              help="Rounds over the prompts, the systems in an order drawn per round with --seed (ratios are "
                   "paired per prompt and round; medians get a bootstrap 95% interval over prompts and rounds).")
@click.option("--compare", "compare", multiple=True, metavar="A:B",
              help="Also report system A against system B with its interval (repeatable; default: auto against "
                   "the fastest llama-server n-gram type that ran). With --from-json: recomputed from the record's "
                   "runs, bench.json written beside.")
@click.option("--build-peers", is_flag=True,
              help="Build llama.cpp's llama-server first if it is not cached (tools/build_llama_server.py, "
                   "4-5 minutes on 2 cores, once).")
@click.option("--cost-cache/--no-cost-cache", default=None,
              help="sdfp systems: use (and update) the cost measurements your earlier runs stored, or keep "
                   "none at all (default: a store of the bench's own, empty at the start; yours is untouched).")
@click.option("--quick", is_flag=True,
              help=f"Preset: {QUICK['limit']} prompt per category, {QUICK['max_tokens']} new tokens.")
@click.option("--out", "out_dir", default="bench-out", show_default=True, metavar="DIR",
              help="Writes bench.json, bench.md and bench.png here.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option("--from-json", "from_json", default=None, metavar="FILE", type=click.Path(exists=True, dir_okay=False),
              help="Run nothing: rewrite bench.md and bench.png in --out from an earlier bench.json.")
@click.option("--rounds", default=None, metavar="LIST",
              help="With --from-json: only these rounds (0-based, comma-separated); summary recomputed, "
                   "bench.json written beside.")
@user_errors
def bench(model: str | None, threads: int | None, ctx_size: int, n_gpu_layers: int | None, seed: int,
          verbose: bool, draft_model: str | None, skip_layers: str | None, draft_max: int, draft_p_min: float,
          data: str, categories: str | None, limit: int | None, max_tokens: int | None, temperature: float,
          systems: str | None, repeats: int, compare: tuple[str, ...], build_peers: bool, cost_cache: bool | None, quick: bool, out_dir: str,
          no_progress: bool, from_json: str | None, rounds: str | None) -> None:
    """End-to-end tokens/s of every system against plain llama.cpp, on MT-Bench and HumanEval prompts.

    Each system runs in its own process with your environment as it is. llama.cpp's own
    llama-server peers need `python tools/build_llama_server.py` once (or --build-peers).
    """
    from sdfp_edge.bench import data as bench_data
    from sdfp_edge.bench import report, runner

    if rounds is not None and from_json is None:
        raise click.BadParameter("only with --from-json", param_hint="--rounds")
    pairs = []
    for c in compare:
        a, sep, b = c.partition(":")
        if not sep or not a or not b or a not in KNOWN or b not in KNOWN:
            raise click.BadParameter(f"{c!r}: give two systems as A:B, from {', '.join(KNOWN)}",
                                     param_hint="--compare")
        pairs.append((a, b))
    if from_json is not None:
        result = json.loads(Path(from_json).read_text())
        formats: tuple[str, ...] = ("md", "png")
        if rounds is not None or pairs:
            try:
                picked = None if rounds is None else [int(x) for x in rounds.split(",") if x.strip()]
            except ValueError:
                raise click.BadParameter(f"{rounds!r}: give round numbers such as 0 or 0,1", param_hint="--rounds")
            if (Path(out_dir) / "bench.json").resolve() == Path(from_json).resolve():
                raise click.BadParameter("--out would overwrite the --from-json record: give another folder",
                                         param_hint="--out")
            result = runner.select_rounds(result, picked, pairs)
            formats = ("json", "md", "png")
        paths = report.write(result, out_dir, formats=formats)
        click.echo(report.markdown(result))
        click.echo("wrote " + ", ".join(str(p) for p in paths.values()), err=True)
        return
    wanted = _csv(systems)
    unknown = [s for s in wanted or [] if s not in KNOWN]
    if unknown:
        raise click.BadParameter(f"unknown system(s) {', '.join(unknown)}; choose from {', '.join(KNOWN)}",
                                 param_hint="--systems")
    if quick:
        limit = limit if limit is not None else QUICK["limit"]
        max_tokens = max_tokens if max_tokens is not None else QUICK["max_tokens"]
    cfg = runner.BenchConfig(
        model=model, n_ctx=ctx_size, threads=threads, n_gpu_layers=n_gpu_layers, seed=seed, verbose=verbose,
        max_tokens=max_tokens or DEFAULT_MAX_TOKENS, temperature=temperature, repeats=repeats, systems=wanted,
        compare=pairs or None,
        skip_layers=parse_layer_list(skip_layers), draft_model=draft_model, k_max=draft_max,
        threshold=draft_p_min, cost_cache=cost_cache, build_peers=build_peers, data=_csv(data) or [],
        categories=_csv(categories), limit=limit,
        command=_command_line(click.get_current_context()), extra={"quick": quick},
    )
    prompts = bench_data.load(cfg.data, categories=cfg.categories, limit=cfg.limit, seed=seed)
    click.echo(f"{len(prompts)} prompts, up to {cfg.max_tokens} new tokens each", err=True)
    result = runner.run(prompts, cfg, progress=not no_progress, log=lambda m: click.echo(m, err=True))
    paths = report.write(result, out_dir)
    click.echo(report.markdown(result))
    click.echo("wrote " + ", ".join(str(p) for p in paths.values()), err=True)
