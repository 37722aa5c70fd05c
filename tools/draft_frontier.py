#!/usr/bin/env python3
"""The layer-skip draft's frontier: acceptance against measured cost, for every way of cutting.

Figures: docs/layer-skip.md: what each cut buys (acceptance at measured c, SmolLM2 and the Qwen
table; records in models/bench/frontier/).

Why this exists: a layer-skip draft pays only if it is cheap (c, its step's cost relative
to one target token) AND accepted. Issue 13 asks which cut gives the most acceptance at a
given c. For each skip count n this measures, through llama.cpp on the quantized GGUF:

    fit / gate_fisher / block_influence   whole layers, the n least sensitive by each score
    fit-blocks / gate_fisher-blocks       attention and MLP blocks chosen by score per unit of
                                          cost (block_choice.py), saving what fit's n layers save
    random (seed s)                       n random layers (the bench's baseline lists)

each with the full output head and with the small draft head (draft_vocab.py). Every cut
drafts as a forced layer-skip draft (greedy, k_max tokens per cycle, no confidence stop, so
acceptance is per drafted token) on held-out prompts (skip_count.HELD_OUT_PROMPTS), on one
model load. c is the draft's measured step time over the measured single-token verify time,
both from the same run. Compare cuts at matched c, not at matched counts: the plot does.

    .venv/bin/python tools/draft_frontier.py --model smollm2-135m --hf-dir /tmp/hf/smollm2 \\
        --scores /tmp/smollm2-scores.json --counts 3,6,9 --out models/bench/frontier/smollm2-135m

Scoring needs PyTorch and the full-precision HF folder of the same model (--hf-dir; see
--dequantize to make one from the GGUF with transformers); `--scores` caches the scores.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from sdfp_edge.runtime import draft_vocab
from sdfp_edge import models
from sdfp_edge.convert import skip_count
from sdfp_edge.bench.runner import machine_info
from sdfp_edge.bench.systems import random_layers
from sdfp_edge.runtime.layer_skip import DraftMask
from sdfp_edge.metadata import read_model_info


def parse_ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def dequantize(gguf_path: Path, out: Path) -> None:
    """A float32 HF folder from the GGUF, by transformers' own GGUF loading."""
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name,
                                                              dtype=torch.float32)
    tok = transformers.AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    # the weights are plain float32 tensors by now; transformers only refuses to save a
    # model it loaded "quantized with gguf"
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tok.save_pretrained(out)


def get_scores(args: argparse.Namespace, gguf_path: Path) -> dict[str, Any]:
    """Layer and block scores, block costs and the calibration vocabulary (cached in --scores)."""
    cache = Path(args.scores) if args.scores else None
    if cache is not None and cache.exists():
        print(f"scores read from {cache}", file=sys.stderr)
        return json.loads(cache.read_text())
    if args.committed:  # the pinned list's whole-layer scores only (no torch, no HF folder)
        pinned = json.loads((models.MODELS_DIR / f"{args.model}.skip.json").read_text())
        return {"calibration": pinned.get("calibration", ""), "layer": {pinned["score_method"]: pinned["layer_scores"]},
                "attn": {}, "ffn": {}, "attn_cost": [], "ffn_cost": [], "draft_vocab": []}
    from sdfp_edge.convert.pipeline import METHODS, analyze_model, check_gguf_matches, hf_config

    if args.hf_dir is None:
        sys.exit("error: --hf-dir is needed to score the model (or an existing --scores file)")
    hf = Path(args.hf_dir)
    if args.dequantize and not (hf / "config.json").exists():
        dequantize(gguf_path, hf)
    check_gguf_matches(gguf_path, hf_config(hf), hf_dir=hf)
    t0 = time.perf_counter()
    s = analyze_model(hf, methods=METHODS, n_samples=args.n_samples, seq_len=args.seq_len, calibration_file=None,
                      device="cpu", seed=args.seed, progress=True)
    print(f"scored in {time.perf_counter() - t0:.0f} s", file=sys.stderr)

    def lists(d: dict[str, Any]) -> dict[str, list[float]]:
        return {m: [float(x) for x in v] for m, v in d.items()}

    data = {"calibration": s.calibration, "layer": lists(s.layer), "attn": lists(s.attn), "ffn": lists(s.ffn),
            "attn_cost": [float(x) for x in s.attn_cost], "ffn_cost": [float(x) for x in s.ffn_cost],
            "draft_vocab": list(s.draft_vocab)}
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(data) + "\n")
    return data


def cuts(scores: dict[str, Any], n_layer: int, counts: list[int], seeds: list[int]) -> list[tuple[str, int, DraftMask]]:
    """(choice, count, mask without head) for every choice at every count."""
    from sdfp_edge.convert.block_choice import choose_skip_blocks, whole_layer_cost
    from sdfp_edge.metadata import choose_skip_layers

    attn_cost, ffn_cost = np.asarray(scores["attn_cost"]), np.asarray(scores["ffn_cost"])
    jobs = []
    for n in counts:
        fit_layers = choose_skip_layers(scores["layer"][next(iter(scores["layer"]))], n)
        for m, s in scores["layer"].items():
            jobs.append((m, n, DraftMask.layers(choose_skip_layers(s, n))))
        budget = whole_layer_cost(fit_layers, attn_cost, ffn_cost) if scores["attn"] else 0.0
        for m in scores["attn"]:
            attn, ffn = choose_skip_blocks(scores["attn"][m], scores["ffn"][m], attn_cost, ffn_cost, budget)
            jobs.append((f"{m}-blocks", n, DraftMask(tuple(attn), tuple(ffn))))
        for seed in seeds:
            jobs.append((f"random (seed {seed})", n, DraftMask.layers(random_layers(n_layer, n, seed))))
    return jobs


def measure(gguf_path: Path, jobs: list[tuple[str, int, DraftMask]], heads: list[bool], vocab: list[int], *,
            max_tokens: int, k_max: int, threads: int | None) -> list[dict[str, Any]]:
    from sdfp_edge.api import Model
    from sdfp_edge.runtime.drafters import SkipLayersDrafter

    trials = []
    with Model(gguf_path, n_ctx=1024, n_threads=threads, skip_layers=(), k_max=k_max, cost_cache=False) as m:
        b = m.backend
        b.load_draft_vocab(vocab)
        if b.metadata().get("tokenizer.chat_template"):
            prompts = [m.tokenize_chat([{"role": "user", "content": p}]) for p in skip_count.HELD_OUT_PROMPTS]
        else:
            prompts = [m.tokenize_prompt(f"{p}\n\n") for p in skip_count.HELD_OUT_PROMPTS]
        for p in prompts:  # plain decoding first: t_verify(1) from many samples
            for _ in m.stream_tokens(p, max_tokens=max_tokens, mode="off", temperature=0):
                pass
        m.decoder.calibrate()
        cost = m.decoder.controller.cost
        for i, (name, n, cut) in enumerate(jobs):
            for head in heads:
                mask = DraftMask(cut.attn, cut.ffn, head)
                print(f"[{i + 1}/{len(jobs)}] {name}, {n}: {mask.describe()}", file=sys.stderr, flush=True)
                m.decoder.drafters["layerskip"] = SkipLayersDrafter(b, mask, threshold=0.0)
                cost.t_step.pop("layerskip", None)
                drafted = accepted = tokens = verifies = 0
                for p in prompts:
                    for _ in m.stream_tokens(p, max_tokens=max_tokens, mode="layerskip", temperature=0):
                        pass
                    s = m.last_stats
                    drafted, accepted = drafted + s["drafted"], accepted + s["accepted"]
                    tokens, verifies = tokens + s["tokens"], verifies + s["verifies"]
                one = cost.verify(1)
                alpha = accepted / drafted if drafted else 0.0
                c = cost.t_step.get("layerskip", one) / one
                here = {k: cost.verify(k) / one for k in range(1, k_max + 2)}
                # the best k >= 1, even where it loses to plain decoding: how close it comes
                k_here, predicted = skip_count.predict(alpha, c, here.__getitem__, k_max, floor=0.0)
                _, projected = skip_count.predict(alpha, c, lambda _k: 1.0, k_max, floor=0.0)
                trials.append({"choice": name, "n_skip": n, "attn": list(mask.attn), "ffn": list(mask.ffn),
                               "small_head": head, "acceptance": alpha, "tokens_per_verify": tokens / max(verifies, 1),
                               "c": c, "best_k": k_here, "predicted_speedup": predicted,
                               "projected_speedup": projected, "verify_rel": [here[k] for k in sorted(here)]})
    return trials


def markdown(r: dict[str, Any]) -> str:
    mi = r["machine"]
    lines = [
        f"### {r['model']} ({r['n_layer']} layers): the layer-skip draft's frontier", "",
        f"{r['date']}, {mi['cpu']}, {mi['usable_cpus']} CPUs, {mi['threads'] or 'default'} threads. Greedy, "
        f"{len(r['prompts'])} held-out prompts x {r['max_tokens']} tokens, {r['k_max']} drafted tokens per cycle "
        f"(no confidence stop). Small head: {r['draft_vocab_size']} of {r['n_vocab']} tokens. "
        f"Scores: {r['calibration']}. Command: `{r['command']}`", "",
        "Speedups are the cost model's E(k) / (k c + V(k+1)) at the best k >= 1 (plain decoding is x1.00): "
        "here with this machine's V(n), memory-bound with V(n) = 1.", "",
        "| skipped | choice | head | cut | acceptance | tokens/verify | c | here | memory-bound |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for t in r["trials"]:
        mask = DraftMask(tuple(t["attn"]), tuple(t["ffn"]))
        _, projected = skip_count.predict(t["acceptance"], t["c"], lambda _k: 1.0, r["k_max"], floor=0.0)
        here = "-"
        if "verify_rel" in t:
            v = t["verify_rel"]
            here = f"x{skip_count.predict(t['acceptance'], t['c'], lambda k: v[k - 1], r['k_max'], floor=0.0)[1]:.2f}"
        lines.append(f"| {t['n_skip']} | {t['choice']} | {'small' if t['small_head'] else 'full'} | {mask.describe()} "
                     f"| {t['acceptance']:.2f} | {t['tokens_per_verify']:.2f} | {t['c']:.2f} | {here} | x{projected:.2f} |")
    return "\n".join(lines) + "\n"


def plot(r: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    groups: dict[str, list[dict[str, Any]]] = {}
    for t in r["trials"]:
        key = "random" if t["choice"].startswith("random") else t["choice"]
        groups.setdefault(key, []).append(t)
    for i, (key, ts) in enumerate(sorted(groups.items())):
        color = f"C{i}"  # one colour per choice; the small head dashed, with triangles
        for head, marker, style in ((False, "o", "-"), (True, "^", "--")):
            pts = sorted((t["c"], t["acceptance"]) for t in ts if t["small_head"] == head)
            if pts:
                ax.plot(*zip(*pts), marker=marker, color=color, linestyle=style if key != "random" else "none",
                        label=f"{key}{' + small head' if head else ''}", alpha=0.8)
    ax.set_xlabel("c: draft step / target token (measured)")
    ax.set_ylabel("acceptance per drafted token")
    ax.set_title(f"{r['model']}: layer-skip drafts ({r['date']})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def beside(out: Path, ext: str) -> Path:
    """OUT + ext (not with_suffix: "qwen2.5-coder-1.5b" has a dot of its own)."""
    return out.parent / (out.name + ext)


def rewrite(out: Path) -> None:
    """OUT.md and OUT.png again from OUT.json (after a change to the table or the plot)."""
    r = json.loads(beside(out, ".json").read_text())
    beside(out, ".md").write_text(markdown(r))
    plot(r, beside(out, ".png"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="catalogue name or GGUF path")
    ap.add_argument("--hf-dir", help="full-precision HF folder of the same model (for scoring)")
    ap.add_argument("--dequantize", action="store_true", help="make --hf-dir from the GGUF if it is missing")
    ap.add_argument("--scores", help="JSON cache of the scores: read if it exists, else written")
    ap.add_argument("--committed", action="store_true",
                    help="use the committed models/<model>.skip.json scores (whole layers, its method only)")
    ap.add_argument("--counts", type=parse_ints, required=True, help="whole-layer skip counts, e.g. 3,6,9")
    ap.add_argument("--seeds", type=parse_ints, default=[0, 1, 2])
    ap.add_argument("--heads", default="full,small", help="full, small or both (default)")
    ap.add_argument("--choices", default="", help="keep only these, e.g. fit,fit-blocks,random (default: all)")
    ap.add_argument("--vocab-size", type=int, default=draft_vocab.DEFAULT_SIZE)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--k-max", type=int, default=4)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--n-samples", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, help="write OUT.json, OUT.md and OUT.png")
    ap.add_argument("--rewrite", action="store_true", help="only redo OUT.md and OUT.png from OUT.json")
    args = ap.parse_args()
    if args.rewrite:
        rewrite(args.out)
        return

    gguf_path = models.resolve_model(args.model)
    _, n_layer = read_model_info(gguf_path)
    started = dt.datetime.now(dt.timezone.utc)
    machine = machine_info(args.threads)
    scores = get_scores(args, gguf_path)
    jobs = cuts(scores, n_layer, args.counts, args.seeds)
    if args.choices:
        keep = tuple(args.choices.split(","))
        jobs = [j for j in jobs if j[0].split(" (")[0] in keep]
    heads = [h == "small" for h in args.heads.split(",")]
    from sdfp_edge.runtime.backend import LlamaBackend

    with LlamaBackend(gguf_path, n_ctx=64) as probe:  # the vocabulary the runtime would build
        vocab = draft_vocab.choose(probe.n_vocab, size=args.vocab_size, recorded=scores["draft_vocab"],
                                   is_eog=probe.is_eog)
        n_vocab = probe.n_vocab
    t0 = time.perf_counter()
    trials = measure(gguf_path, jobs, heads, vocab, max_tokens=args.max_tokens, k_max=args.k_max,
                     threads=args.threads)
    result = {"date": started.strftime("%Y-%m-%d %H:%M UTC"), "machine": machine, "model": args.model,
              "gguf": str(gguf_path), "n_layer": n_layer, "n_vocab": n_vocab, "draft_vocab_size": len(vocab),
              "calibration": scores["calibration"], "prompts": list(skip_count.HELD_OUT_PROMPTS),
              "max_tokens": args.max_tokens, "k_max": args.k_max,
              "command": " ".join(["tools/draft_frontier.py", *sys.argv[1:]]),
              "measure_seconds": round(time.perf_counter() - t0, 1), "trials": trials}
    text = markdown(result)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        beside(args.out, ".json").write_text(json.dumps(result, indent=1) + "\n")
        beside(args.out, ".md").write_text(text)
        plot(result, beside(args.out, ".png"))


if __name__ == "__main__":
    main()
