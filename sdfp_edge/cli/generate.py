"""`sdfp-edge generate`: offline generation from a prompt (or stdin)."""

from __future__ import annotations

import functools
import json
import re
import sys
from pathlib import Path
from typing import Any

import click

from sdfp_edge.cli import batch
from sdfp_edge.cli.options import model_options, not_utf8_note, user_errors
from sdfp_edge.api import Model, check_max_tokens, sampling_params
from sdfp_edge.runtime.dry import Dry
from sdfp_edge.runtime.engine import MODES
from sdfp_edge.errors import SkipListError
from sdfp_edge.runtime.logits_processors import Penalties
from sdfp_edge.runtime.sampler_chain import FROM_GGUF, GIVEN, LLAMA_DEFAULTS, parse_samplers


def parse_layer_list(value: str | None) -> list[int] | None:
    """'3,5,7' -> [3, 5, 7]; duplicates and range are checked against the model later."""
    if value is None:
        return None
    try:
        return [int(x) for x in value.split(",") if x.strip()]
    except ValueError:
        raise SkipListError(f"--skip-layers must be comma-separated layer indices, got {value!r}") from None


SAMPLER_OPTIONS = {  # option -> (Model.stream_tokens name, type, help); llama.cpp's option names
    ("--temperature", "--temp"): ("temperature", float, "0 = greedy (exactly the model's own greedy output). "
                                  "Every sampling option not given takes the GGUF's general.sampling.* value, "
                                  "else llama.cpp's default (here 0.8; see docs/sampling.md)."),
    ("--top-k",): ("top_k", int, "0 = off (llama.cpp's default: 40)."),
    ("--top-p",): ("top_p", float, "1 = off (llama.cpp's default: 0.95)."),
    ("--min-p",): ("min_p", float, "0 = off (llama.cpp's default: 0.05)."),
    ("--typical", "--typical-p"): ("typical_p", float, "Locally typical sampling; 1 = off."),
    ("--top-nsigma", "--top-n-sigma"): ("top_n_sigma", float, "Keep logits within n sigma of the best; <= 0 = off."),
    ("--xtc-probability",): ("xtc_probability", float, "XTC: chance to remove the likeliest tokens; 0 = off."),
    ("--xtc-threshold",): ("xtc_threshold", float, "XTC: tokens at least this likely are removed (> 0.5 = off)."),
    ("--mirostat",): ("mirostat", click.IntRange(0, 2), "Mirostat 1 or 2 (then only temperature applies); 0 = off."),
    ("--mirostat-lr",): ("mirostat_eta", float, "Mirostat learning rate, eta."),
    ("--mirostat-ent",): ("mirostat_tau", float, "Mirostat target entropy, tau."),
    ("--samplers",): ("samplers", str, "Sampler order, ';'-separated (llama.cpp's names), e.g. "
                                       "'penalties;dry;top_k;top_p;min_p;temperature'."),
    ("--sampling-seq", "--sampler-seq"): ("samplers", str, "Sampler order as letters (llama.cpp's: e d s k y p m x t)."),
    ("--repeat-penalty",): ("repeat_penalty", float, "Penalize repeated tokens; 1 = off."),
    ("--repeat-last-n",): ("repeat_last_n", int, "Tokens the penalties look back on; 0 = off, -1 = all."),
    ("--presence-penalty",): ("presence_penalty", float, "0 = off."),
    ("--frequency-penalty",): ("frequency_penalty", float, "0 = off."),
    ("--dry-multiplier",): ("dry_multiplier", float, "DRY repetition penalty; 0 = off."),
    ("--dry-base",): ("dry_base", float, "DRY base."),
    ("--dry-allowed-length",): ("dry_allowed_length", int, "DRY: repetitions longer than this are penalized."),
    ("--dry-penalty-last-n",): ("dry_penalty_last_n", int, "DRY lookback; 0 = off, -1 = all."),
}


def sampling_options(f: Any) -> Any:
    """The sampling options; the command receives them as one dict `sampling` of those given
    (the rest take the GGUF's recommended values, else llama.cpp's defaults)."""
    names = {v[0] for v in SAMPLER_OPTIONS.values()} | {"dry_sequence_breakers", "logit_bias", "samplers_seq"}

    @functools.wraps(f)
    def collect(*args: Any, **kwargs: Any) -> Any:
        given = {k: kwargs.pop(k) for k in list(kwargs) if k in names}
        seq = given.pop("samplers_seq")
        if seq is not None:
            given["samplers"] = seq
        breakers = given.pop("dry_sequence_breakers")
        if breakers:
            given["dry_sequence_breakers"] = () if breakers == ("none",) else breakers
        given["logit_bias"] = parse_logit_bias(given.pop("logit_bias"))
        return f(*args, sampling={k: v for k, v in given.items() if v not in (None, {})}, **kwargs)

    options = [
        click.option("-n", "--max-tokens", type=int, default=256, show_default=True, help="Tokens to generate."),
        *(click.option(*flags, name if flags[0] != "--sampling-seq" else "samplers_seq", type=typ, default=None,
                       help=text) for flags, (name, typ, text) in SAMPLER_OPTIONS.items()),
        click.option("--dry-sequence-breaker", "dry_sequence_breakers", multiple=True,
                     help="DRY sequence breaker (repeatable; 'none': no breakers)."),
        click.option("-l", "--logit-bias", "logit_bias", multiple=True, metavar="TOKEN_ID(+/-)BIAS",
                     help="e.g. 15043+1 or 15043-inf (repeatable)."),
        click.option("--stop", multiple=True, help="Stop string (repeatable)."),
    ]
    for opt in reversed(options):
        collect = opt(collect)
    return collect


def parse_logit_bias(values: tuple[str, ...]) -> dict[int, float]:
    """llama.cpp's -l TOKEN_ID(+/-)BIAS."""
    out: dict[int, float] = {}
    for v in values:
        m = re.fullmatch(r"\s*(\d+)\s*([+-])\s*(inf|\d+(?:\.\d*)?(?:[eE][+-]?\d+)?)\s*", v)
        if not m:
            raise click.BadParameter(f"{v!r}: expected TOKEN_ID(+/-)BIAS, e.g. 15043+1", param_hint="--logit-bias")
        out[int(m[1])] = float(m[2] + m[3])
    return out


def check_sampling(max_tokens: int, sampling: dict[str, Any], seed: int) -> None:
    """Fail fast, before the model loads: the options given, with llama.cpp's defaults for the rest."""
    check_max_tokens(max_tokens)
    values = {**LLAMA_DEFAULTS, **{k: v for k, v in sampling.items() if k != "logit_bias"}}
    if "samplers" in sampling:
        values["samplers"] = parse_samplers(sampling["samplers"])
    sampling_params(values, seed)
    Penalties(values["presence_penalty"], values["frequency_penalty"], values["repeat_penalty"], values["repeat_last_n"])
    Dry(values["dry_multiplier"], values["dry_base"], values["dry_allowed_length"], values["dry_penalty_last_n"])


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
@click.option("--compare-plain", is_flag=True,
              help="Decode the prompt twice, plainly (--mode off) and then in --mode, and print both speeds, "
                   "how much of the answer came from accepted drafts and whether the two texts are the same.")
@click.option("--input", "input_path", type=click.Path(path_type=Path), default=None,
              help="Batch mode: a JSONL file of prompts (see README, 'Many prompts from a file').")
@click.option("--output", "output_path", type=click.Path(path_type=Path), default=None,
              help="Batch mode: the JSONL file of answers (appended to; a rerun resumes).")
@click.option("--parallel", type=click.IntRange(1, 64), default=batch.DEFAULT_PARALLEL, show_default=True,
              help="Batch mode: sequences decoded together in one context (per Ray actor with --ray).")
@click.option("--ray", "ray_address", is_flag=False, flag_value="", default=None, metavar="[ADDRESS]",
              help="Batch mode on a Ray cluster (pip install 'sdfp-edge[ray]'): ADDRESS as ray.init takes it "
                   "(auto, ray://host:10001); alone: this machine's cluster, else a local one. -t, -ngl and "
                   "--parallel are per actor.")
@click.option("--ray-actors", type=click.IntRange(min=1), default=None,
              help="With --ray: model replicas, one Ray actor each (default: one per node).")
@click.option("--ray-gpus", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="With --ray: GPUs each actor reserves.")
@user_errors
def generate(model: str | None, threads: int | None, ctx_size: int, n_gpu_layers: int | None, seed: int,
             verbose: bool, prompt: str | None, chat: bool, system: str | None, max_tokens: int,
             sampling: dict[str, Any], stop: tuple[str, ...], mode: str,
             draft_model: str | None, skip_layers: str | None, draft_max: int, draft_p_min: float,
             as_json: bool, compare_plain: bool, input_path: Path | None, output_path: Path | None,
             parallel: int, ray_address: str | None, ray_actors: int | None, ray_gpus: float) -> None:
    """Generate text from a prompt, speculatively, with exactly the model's own output."""
    if input_path is not None or output_path is not None:
        if input_path is None or output_path is None or prompt is not None:
            raise click.UsageError("batch mode takes --input and --output together, without --prompt")
        check_sampling(max_tokens, sampling, seed)
        if compare_plain:
            raise click.UsageError("--compare-plain decodes one prompt; batch mode (--input/--output) takes none")
        defaults = batch.Defaults(max_tokens, sampling, seed, stop)
        if ray_address is not None:
            from sdfp_edge.cli import ray_batch  # Ray itself is imported only there, only now

            ray_batch.run(model, threads, ctx_size, n_gpu_layers, verbose, input_path, output_path, parallel,
                          mode, defaults, address=ray_address, actors=ray_actors, gpus=ray_gpus)
            return
        batch.run(model, threads, ctx_size, n_gpu_layers, verbose, input_path, output_path, parallel, mode,
                  defaults)
        return
    if ray_address is not None or ray_actors is not None:
        raise click.UsageError("--ray runs batch mode: give --input and --output")
    if prompt is None:
        if sys.stdin.isatty():
            raise click.UsageError("give --prompt TEXT or pipe the prompt on stdin")
        prompt = sys.stdin.read()
    check_sampling(max_tokens, sampling, seed)
    for what, text in (("the prompt", prompt), ("--system", system)):
        if note := not_utf8_note(what, text):
            click.echo(note, err=True)
    with open_model(model, threads, ctx_size, n_gpu_layers, verbose, mode, draft_model, skip_layers,
                    draft_max, draft_p_min) as m:
        kwargs = dict(max_tokens=max_tokens, seed=seed, stop=list(stop), **sampling)
        if chat:
            messages = ([{"role": "system", "content": system}] if system else []) + [
                {"role": "user", "content": prompt}]
            prompt_tokens = m.tokenize_chat(messages)
        else:
            prompt_tokens = m.tokenize_prompt(prompt)
        if compare_plain:
            compare_with_plain(m, prompt_tokens, mode, as_json, kwargs)
            return
        chunks = m.stream_tokens(prompt_tokens, **kwargs)
        if as_json:
            text, tokens = [], []
            for c in chunks:
                text.append(c.text)
                tokens.extend(c.tokens)
            click.echo(json.dumps({"text": "".join(text), "tokens": tokens, "stats": m.last_stats}))
            return
        if verbose:
            click.echo(sampling_line(m.sampling_used), err=True)
        for c in chunks:
            click.echo(c.text, nl=False)
        click.echo()
        click.echo(summary_line(m.last_stats), err=True)


def summary_line(s: dict[str, Any]) -> str:
    return (f"[{s['tokens']} tokens, {s['tokens_per_second']:.1f} tok/s, mode {s['mode']}, "
            f"acceptance {s['acceptance_rate']:.0%} of {s['drafted']} drafted, "
            f"{s['tokens_per_verify']:.2f} tokens/verify]")


def sampling_line(used: dict[str, Any]) -> str:
    """What samples the text and where the settings came from (--verbose, chat's /stats);
    `used`: Model.sampling_used or last_stats["sampling"]."""
    if not used:
        return "sampling: (no reply yet)"
    src = used["source"]
    parts = [f"{what}: {', '.join(sorted(n for n, v in src.items() if v == where))}"
             for where, what in ((GIVEN, "given"), (FROM_GGUF, "from the GGUF"))
             if where in src.values()]
    return f"sampling: {used['summary']} ({'; '.join(parts + ['the rest: llama.cpp defaults'])})"


WARM_UP_TOKENS = 4
COMPARE_ROUNDS = 3  # plain and speculative alternate; the median of each is printed


def compare_with_plain(m: Model, prompt_tokens: list[int], mode: str, as_json: bool, kwargs: dict[str, Any]) -> None:
    """Decode the same prompt plainly and in `mode`, alternating, COMPARE_ROUNDS times each, in this process.

    An untimed warm-up of a few plain tokens comes first, so that every timed run finds the
    prompt's KV cached and llama.cpp's threads and graphs ready. The runs alternate and the
    median of each side is printed, because one run of each on a shared VM can differ by 10-20%
    for reasons that have nothing to do with drafts (which run went first, a neighbour's load).
    Speeds are decode rates (the prompt's prefill left out), as `generate` prints. The text of
    each side's first run is shown; "same text" compares every run's text.
    """
    for _ in m.stream_tokens(prompt_tokens, **{**kwargs, "max_tokens": WARM_UP_TOKENS}, mode="off"):
        pass
    texts: dict[str, list[str]] = {"plain": [], mode: []}
    stats: dict[str, list[dict[str, Any]]] = {"plain": [], mode: []}
    for r in range(COMPARE_ROUNDS):
        for label, run_mode in (("plain", "off"), (mode, mode)):
            show = r == 0 and not as_json
            if show:
                click.echo(f"--- {label} (--mode {run_mode}) ---", err=True)
            parts = []
            for c in m.stream_tokens(prompt_tokens, **kwargs, mode=run_mode):
                parts.append(c.text)
                if show:
                    click.echo(c.text, nl=False)
            if show:
                click.echo()
            texts[label].append("".join(parts))
            stats[label].append(m.last_stats)
    same = len(set(texts["plain"] + texts[mode])) == 1
    if as_json:
        click.echo(json.dumps({label: {"text": texts[label][0], "runs": stats[label]} for label in texts}
                              | {"same_text": same}))
        return
    for line in comparison_lines(median_run(stats["plain"]), median_run(stats[mode]), mode, same=same):
        click.echo(line, err=True)


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run of median decode speed (its own counts go with it), and how many runs there were."""
    ordered = sorted(runs, key=lambda s: s["tokens_per_second"])
    return {**ordered[len(ordered) // 2], "runs": len(runs)}


def comparison_lines(plain: dict[str, Any], spec: dict[str, Any], mode: str, *, same: bool) -> list[str]:
    """`plain: 31.2 tok/s` / `auto:  52.0 tok/s (1.67x plain), 51% of the answer from accepted drafts (...)`.

    `plain`, `spec`: the median run of each side (median_run); `same`: every run gave one text.
    """
    p, s = plain, spec
    width = max(len("plain"), len(mode)) + 1
    ratio = f" ({s['tokens_per_second'] / p['tokens_per_second']:.2f}x plain)" if p["tokens_per_second"] else ""
    from_drafts = s["accepted"] / s["tokens"] if s["tokens"] else 0.0
    same_note = ("same text as plain" if same else
                 "NOT the same text as plain: see 'Exactness' in docs/how-it-works.md")
    runs = f"median of {p['runs']} alternating runs each" if p.get("runs", 1) > 1 else "one run each"
    return [f"{'plain:':<{width}} {p['tokens_per_second']:.1f} tok/s, {p['tokens']} tokens ({runs})",
            f"{mode + ':':<{width}} {s['tokens_per_second']:.1f} tok/s{ratio}, {s['tokens']} tokens, "
            f"{from_drafts:.0%} of the answer from accepted drafts "
            f"({s['accepted']} of {s['drafted']} drafted tokens accepted; {same_note})"]
