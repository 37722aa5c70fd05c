"""`sdfp-edge generate`: offline generation from a prompt (or stdin)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from sdfp_edge.cli import batch
from sdfp_edge.cli.options import model_options, not_utf8_note, user_errors
from sdfp_edge.api import Model, check_max_tokens
from sdfp_edge.runtime.engine import MODES
from sdfp_edge.errors import SkipListError
from sdfp_edge.runtime.sampling import SamplingParams


def parse_layer_list(value: str | None) -> list[int] | None:
    """'3,5,7' -> [3, 5, 7]; duplicates and range are checked against the model later."""
    if value is None:
        return None
    try:
        return [int(x) for x in value.split(",") if x.strip()]
    except ValueError:
        raise SkipListError(f"--skip-layers must be comma-separated layer indices, got {value!r}") from None


def sampling_options(f: Any) -> Any:
    options = [
        click.option("-n", "--max-tokens", type=int, default=256, show_default=True, help="Tokens to generate."),
        click.option("--temperature", "--temp", type=float, default=0.0, show_default=True,
                     help="0 = greedy (exactly the model's own greedy output)."),
        click.option("--top-k", type=int, default=0, show_default=True, help="0 = off."),
        click.option("--top-p", type=float, default=1.0, show_default=True, help="1 = off."),
        click.option("--min-p", type=float, default=0.0, show_default=True, help="0 = off."),
        click.option("--stop", multiple=True, help="Stop string (repeatable)."),
    ]
    for opt in reversed(options):
        f = opt(f)
    return f


def check_sampling(max_tokens: int, temperature: float, top_k: int, top_p: float, min_p: float, seed: int) -> None:
    """Fail fast, before the model loads."""
    check_max_tokens(max_tokens)
    SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, seed=seed)


def speculation_options(f: Any) -> Any:
    options = [
        click.option("--mode", type=click.Choice(MODES), default="auto", show_default=True,
                     help="auto: the controller picks per cycle; others force one behaviour."),
        click.option("--draft-model", default=None, metavar="PATH|NAME",
                     help="A smaller GGUF with the same vocabulary, as a separate draft model."),
        click.option("--skip-layers", default=None, metavar="LIST",
                     help="Comma-separated layers for the layer-skip draft (overrides the GGUF's sdfp metadata)."),
        click.option("--draft-max", type=click.IntRange(1, 16), default=4, show_default=True,
                     help="Most tokens drafted per cycle."),
        click.option("--draft-p-min", type=click.FloatRange(0, 1), default=0.8, show_default=True,
                     help="Stop drafting when the draft's top-1 probability falls below this."),
    ]
    for opt in reversed(options):
        f = opt(f)
    return f


def open_model(model: str | None, threads: int | None, ctx_size: int, n_gpu_layers: int | None,
               verbose: bool, mode: str, draft_model: str | None, skip_layers: str | None,
               draft_max: int, draft_p_min: float, n_seq_max: int = 1) -> Any:
    return Model(model, n_ctx=ctx_size, n_threads=threads, n_gpu_layers=n_gpu_layers, mode=mode,
                 skip_layers=parse_layer_list(skip_layers), draft_model=draft_model, k_max=draft_max,
                 threshold=draft_p_min, verbose=verbose, log=lambda m: click.echo(m, err=True),
                 n_seq_max=n_seq_max)


@click.command()
@model_options
@click.option("-p", "--prompt", default=None, help="The prompt (default: read stdin).")
@click.option("--chat", is_flag=True, help="Wrap the prompt as a user message in the model's chat template.")
@click.option("--system", default=None, help="System prompt (with --chat).")
@sampling_options
@speculation_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object: text, tokens, stats.")
@click.option("--input", "input_path", type=click.Path(path_type=Path), default=None,
              help="Batch mode: a JSONL file of prompts (see README, 'Many prompts from a file').")
@click.option("--output", "output_path", type=click.Path(path_type=Path), default=None,
              help="Batch mode: the JSONL file of answers (appended to; a rerun resumes).")
@click.option("--parallel", type=click.IntRange(1, 64), default=batch.DEFAULT_PARALLEL, show_default=True,
              help="Batch mode: sequences decoded together in one context.")
@user_errors
def generate(model: str | None, threads: int | None, ctx_size: int, n_gpu_layers: int | None, seed: int,
             verbose: bool, prompt: str | None, chat: bool, system: str | None, max_tokens: int,
             temperature: float, top_k: int, top_p: float, min_p: float, stop: tuple[str, ...], mode: str,
             draft_model: str | None, skip_layers: str | None, draft_max: int, draft_p_min: float,
             as_json: bool, input_path: Path | None, output_path: Path | None, parallel: int) -> None:
    """Generate text from a prompt, speculatively, with exactly the model's own output."""
    if input_path is not None or output_path is not None:
        if input_path is None or output_path is None or prompt is not None:
            raise click.UsageError("batch mode takes --input and --output together, without --prompt")
        check_max_tokens(max_tokens)
        batch.run(model, threads, ctx_size, n_gpu_layers, verbose, input_path, output_path, parallel, mode,
                  batch.Defaults(max_tokens, temperature, top_k, top_p, min_p, seed, stop))
        return
    if prompt is None:
        if sys.stdin.isatty():
            raise click.UsageError("give --prompt TEXT or pipe the prompt on stdin")
        prompt = sys.stdin.read()
    check_sampling(max_tokens, temperature, top_k, top_p, min_p, seed)
    for what, text in (("the prompt", prompt), ("--system", system)):
        if note := not_utf8_note(what, text):
            click.echo(note, err=True)
    with open_model(model, threads, ctx_size, n_gpu_layers, verbose, mode, draft_model, skip_layers,
                    draft_max, draft_p_min) as m:
        kwargs = dict(max_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                      min_p=min_p, seed=seed, stop=list(stop))
        if chat:
            messages = ([{"role": "system", "content": system}] if system else []) + [
                {"role": "user", "content": prompt}]
            prompt_tokens = m.tokenize_chat(messages)
        else:
            prompt_tokens = m.tokenize_prompt(prompt)
        chunks = m.stream_tokens(prompt_tokens, **kwargs)
        if as_json:
            text, tokens = [], []
            for c in chunks:
                text.append(c.text)
                tokens.extend(c.tokens)
            click.echo(json.dumps({"text": "".join(text), "tokens": tokens, "stats": m.last_stats}))
            return
        for c in chunks:
            click.echo(c.text, nl=False)
        click.echo()
        click.echo(summary_line(m.last_stats), err=True)


def summary_line(s: dict[str, Any]) -> str:
    return (f"[{s['tokens']} tokens, {s['tokens_per_second']:.1f} tok/s, mode {s['mode']}, "
            f"acceptance {s['acceptance_rate']:.0%} of {s['drafted']} drafted, "
            f"{s['tokens_per_verify']:.2f} tokens/verify]")
