#!/usr/bin/env python3
"""Which layers should the draft skip? Each way of choosing them, measured through the runtime.

Figures: docs/layer-skip.md, 'Known limits': acceptance of FIT against block influence, gate
Fisher and random lists (tables in models/bench/layer-choices/).

Why this exists: `sdfp-edge convert` ranks layers by their Fisher Information Trace (FIT),
and the project's claim (issue 4, "Evidence") is that this choice beats the obvious ones.
This tool checks it on a given model, at the same skip counts, for:

    fit, gate_fisher, block_influence   the three scores of sdfp_edge.convert.fit (one scoring pass,
                                        calibration as `convert` does it by default)
    random (seeds), uniform, last-k     the bench's baseline lists (sdfp_edge.bench.systems;
                                        last-k never includes the final layer)

Every list drafts through llama.cpp on the quantized GGUF as a forced layer-skip draft
(sdfp_edge.convert.skip_count.measure_counts: greedy, k_max drafted tokens per cycle, no
confidence stop, so acceptance is per drafted token) on held-out prompts that are not
among the calibration prompts (skip_count.HELD_OUT_PROMPTS). All lists share one model
load and one cost model. Acceptance and tokens per verify are deterministic under greedy
decoding, so a busy machine does not change them; the draft cost c and the predicted
speedups are timings and do.

    .venv/bin/python tools/compare_layer_choices.py --model qwen2.5-coder-1.5b \\
        --hf-dir /tmp/fit/qwen15-hf --counts 4,8 --json /tmp/qwen15-choices.json

Scoring needs PyTorch (the convert extra) and the full-precision HF folder of the same
model; `--scores FILE` caches the scores (read if it exists, written otherwise), so a rerun
with other counts or prompts skips the scoring.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path
from typing import Any

from sdfp_edge import models
from sdfp_edge.convert import skip_count
from sdfp_edge.bench.runner import machine_info
from sdfp_edge.bench.systems import last_k_layers, random_layers, uniform_layers
from sdfp_edge.convert.pipeline import (
    METHODS,
    check_gguf_matches,
    hf_config,
    score_model,
)
from sdfp_edge.metadata import read_model_info


def parse_ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def get_scores(args: argparse.Namespace, gguf_path: Path) -> tuple[dict[str, list[float]], str]:
    """{method: per-layer scores} and the calibration description, from --scores or scored now."""
    cache = Path(args.scores) if args.scores else None
    if cache is not None and cache.exists():
        data = json.loads(cache.read_text())
        print(f"scores read from {cache}", file=sys.stderr)
        return data["scores"], data["calibration"]
    if args.hf_dir is None:
        sys.exit("error: --hf-dir is needed to score the layers (or an existing --scores file)")
    hf = Path(args.hf_dir)
    check_gguf_matches(gguf_path, hf_config(hf), hf_dir=hf)
    t0 = time.perf_counter()
    scores, calibration = score_model(
        hf, methods=METHODS, n_samples=args.n_samples, seq_len=args.seq_len,
        calibration_file=None, device=args.device, seed=args.seed, progress=True,
    )
    print(f"scored {len(METHODS)} methods in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    out = {m: [float(x) for x in s] for m, s in scores.items()}
    if cache is not None:
        cache.write_text(json.dumps({"calibration": calibration, "scores": out}, indent=1) + "\n")
    return out, calibration


def layer_lists(scores: dict[str, list[float]], n_layer: int, counts: list[int],
                seeds: list[int]) -> list[tuple[str, int, list[int]]]:
    """(choice, count, layers) for every choice at every count."""
    from sdfp_edge.metadata import choose_skip_layers

    jobs = []
    for n in counts:
        for m in METHODS:
            jobs.append((m, n, choose_skip_layers(scores[m], n)))
        for s in seeds:
            jobs.append((f"random (seed {s})", n, random_layers(n_layer, n, s)))
        jobs.append(("uniform", n, uniform_layers(n_layer, n)))
        jobs.append(("last-k", n, last_k_layers(n_layer, n)))
    return jobs


def markdown(result: dict[str, Any]) -> str:
    mi = result["machine"]
    lines = [
        f"### {result['model']} ({result['n_layer']} layers): layer choices for the layer-skip draft",
        "",
        (
            f"{result['date']}, {mi['cpu']}, {mi['usable_cpus']} CPUs, {mi['threads'] or 'default'} threads, "
            f"{mi['memory_gib']} GiB, load average at start {mi['load_average_start'][0]:.2f}. "
            f"Greedy, {len(result['prompts'])} held-out prompts (chat template if the model has one) x {result['max_tokens']} tokens, "
            f"{result['k_max']} drafted tokens per cycle (no confidence stop). "
            f"Scores: calibration {result['calibration']}."
        ),
        "",
        "| skipped | choice | layers | acceptance | tokens/verify | c | best k | predicted here | memory-bound |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for t in result["trials"]:
        lines.append(
            f"| {t['n_skip']} of {result['n_layer']} | {t['choice']} | {','.join(map(str, t['layers']))} "
            f"| {t['acceptance']:.2f} | {t['tokens_per_verify']:.2f} | {t['c']:.2f} | {t['best_k']} "
            f"| x{t['predicted_speedup']:.2f} | x{t['projected_speedup']:.2f} |"
        )
    lines += ["", "Rankings (least sensitive first, the last layer excluded):", ""]
    for m, s in result["scores"].items():
        order = sorted(range(result["n_layer"] - 1), key=lambda i: (s[i], i))
        lines.append(f"- {m}: {' '.join(map(str, order))}")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="catalogue name or GGUF path (the quantized model drafted on)")
    ap.add_argument("--hf-dir", help="full-precision HF folder of the same model (for scoring)")
    ap.add_argument("--scores", help="JSON cache of the scores: read if it exists, else written")
    ap.add_argument("--counts", type=parse_ints, required=True, help="skip counts, e.g. 4,8")
    ap.add_argument("--seeds", type=parse_ints, default=[0, 1, 2], help="random-list seeds (default 0,1,2)")
    ap.add_argument("--max-tokens", type=int, default=64, help="tokens generated per prompt (default 64)")
    ap.add_argument("--k-max", type=int, default=4, help="drafted tokens per cycle (default 4)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--n-samples", type=int, default=8, help="calibration sequences (convert's default 8)")
    ap.add_argument("--seq-len", type=int, default=128, help="calibration tokens each (convert's default 128)")
    ap.add_argument("--seed", type=int, default=0, help="calibration seed (convert's default 0)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", help="write the full result here")
    args = ap.parse_args()

    gguf_path = models.resolve_model(args.model)
    arch, n_layer = read_model_info(gguf_path)
    for n in args.counts:
        if not 1 <= n <= n_layer - 2:
            sys.exit(f"error: cannot skip {n} of {n_layer} layers (1..{n_layer - 2})")
    started = dt.datetime.now(dt.timezone.utc)
    machine = machine_info(args.threads)
    scores, calibration = get_scores(args, gguf_path)
    jobs = layer_lists(scores, n_layer, args.counts, args.seeds)

    def rank(i: int) -> list[int]:
        # measure_counts keys each run by what it passes to rank; here the key indexes jobs,
        # so every list is measured on one model load and one cost model
        name, n, layers = jobs[i]
        print(f"[{i + 1}/{len(jobs)}] {name}, {n} layers: {layers}", file=sys.stderr, flush=True)
        return layers

    t0 = time.perf_counter()
    trials = skip_count.measure_counts(
        gguf_path, rank, range(len(jobs)), prompts=skip_count.HELD_OUT_PROMPTS,
        max_tokens=args.max_tokens, k_max=args.k_max, n_threads=args.threads,
    )
    result = {
        "date": started.strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine,
        "model": args.model,
        "gguf": str(gguf_path),
        "architecture": arch,
        "n_layer": n_layer,
        "calibration": calibration,
        "prompts": list(skip_count.HELD_OUT_PROMPTS),
        "max_tokens": args.max_tokens,
        "k_max": args.k_max,
        "measure_seconds": round(time.perf_counter() - t0, 1),
        "scores": scores,
        "trials": [
            {"choice": name, "n_skip": n, "layers": list(t.skip_layers), "acceptance": t.acceptance,
             "tokens_per_verify": t.tokens_per_verify, "c": t.c, "best_k": t.best_k,
             "predicted_speedup": t.predicted_speedup, "projected_speedup": t.projected_speedup}
            for (name, n, _), t in zip(jobs, trials)
        ],
    }
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    print(markdown(result))


if __name__ == "__main__":
    main()
