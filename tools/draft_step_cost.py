#!/usr/bin/env python3
"""What a layer-skip draft step costs: c for each cut, with and without the small head.

Figures: docs/layer-skip.md: the table of c per cut and the switching-masks table (records in
models/bench/draft-cost/).

Why this exists: a layer-skip draft pays only when its step is cheap against a target token
(c) -- issue 13. Timing-only (no acceptance; see tools/draft_frontier.py for that): single-
token decodes at one position with 200 tokens in the KV cache, the median of --repeats
after two warm-ups, each mask timed between two full-model timings so drift cancels.
Cuts: the small head alone, then n evenly spread layers for each fraction, as whole layers,
whole layers + small head, their FFN blocks only and their attention blocks only.

It also times the switch: alternating masked and full single-token decodes (the draft and
verify pattern; the patch keeps one graph per mask so that neither rebuilds the other's)
against the mean of the two alone, in interleaved blocks (--switch-only: nothing else); and
the same for single-token decodes alternating with 3-token verify batches of the full model
(prompt lookup's rhythm: the patch keeps one graph per kind of batch too).

    .venv/bin/python tools/draft_step_cost.py --model qwen2.5-coder-1.5b --out models/bench/draft-cost/qwen.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import time
from pathlib import Path

import numpy as np

from sdfp_edge.runtime import draft_vocab
from sdfp_edge import models
from sdfp_edge.runtime.backend import LlamaBackend
from sdfp_edge.bench.runner import machine_info
from sdfp_edge.runtime.layer_skip import DraftMask

TEXT = "Write a Python function that checks whether a number is prime, with a docstring and tests. " * 20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--fractions", default="0.1,0.2,0.3,0.4", help="shares of the layers skipped")
    ap.add_argument("--vocab-sizes", default=str(draft_vocab.DEFAULT_SIZE))
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--switch-only", action="store_true", help="time only the switch between masks")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    path = models.resolve_model(args.model)
    started = dt.datetime.now(dt.timezone.utc)
    b = LlamaBackend(path, n_ctx=1024, n_threads=args.threads)
    tokens = b.tokenize(TEXT)[:201]
    b.decode(tokens[:200], logits="last")
    start = b.n_past

    def step(mask: DraftMask | None, n: int = 1) -> float:
        b.set_mask(mask)
        t0 = time.perf_counter()
        b.decode(tokens[201 - n:201], logits="all" if n > 1 else "last")
        t = time.perf_counter() - t0
        b.truncate(start)
        return t

    def median(mask: DraftMask | None) -> float:
        ts = [step(mask) for _ in range(args.repeats + 2)][2:]
        b.set_mask(None)
        return float(np.median(ts))

    def c_of(mask: DraftMask) -> float:
        before, masked, after = median(None), median(mask), median(None)
        return masked / ((before + after) / 2)

    rows = []
    full_ms = median(None) * 1000
    n_layer = b.n_layer
    if not args.switch_only:
        for size in (int(x) for x in args.vocab_sizes.split(",")):
            b.load_draft_vocab(draft_vocab.choose(b.n_vocab, size=size, is_eog=b.is_eog))
            rows.append({"cut": f"small head ({len(b.draft_vocab)} of {b.n_vocab} tokens)",
                         "c": c_of(DraftMask(small_head=True))})
        for frac in (float(x) for x in args.fractions.split(",")):
            n = max(1, round(frac * n_layer))
            layers = tuple(sorted({int(x) for x in np.linspace(1, n_layer - 2, n).round()}))
            for name, mask in ((f"{len(layers)} layers", DraftMask.layers(layers)),
                               (f"{len(layers)} layers + small head", DraftMask.layers(layers, small_head=True)),
                               (f"FFN of {len(layers)} layers", DraftMask(ffn=layers)),
                               (f"attention of {len(layers)} layers", DraftMask(attn=layers))):
                rows.append({"cut": name, "layers": list(layers), "c": c_of(mask)})

    probe = DraftMask.layers(tuple(range(1, n_layer - 1, 3)))  # a third of the layers
    full, masked, pairs = [], [], []
    reused = b.graphs_reused
    for _ in range(6):  # blocks in turn, so the VM's drift moves all three alike
        full += [step(None) for _ in range(args.repeats + 2)][2:]
        masked += [step(probe) for _ in range(args.repeats + 2)][2:]
        # per pair (masked + full) / 2: a median of the single decodes would fall anywhere
        # in the gap between the two kinds
        pairs += [(step(probe) + step(None)) / 2 for _ in range(args.repeats + 2)][2:]
    b.set_mask(None)
    alone = (float(np.median(full)) + float(np.median(masked))) / 2
    switch = float(np.median(pairs))
    reused = b.graphs_reused - reused
    decodes = 6 * 4 * (args.repeats + 2)

    # the full model: one token, then a verify of 3 (decode() truncates back to `start`, so the
    # verify's tokens re-decode the cache's last two positions: the same work as a real verify)
    b.truncate(start - 2)
    start -= 2
    ones, threes, mixed = [], [], []
    batch_reused = b.graphs_reused
    for _ in range(6):
        ones += [step(None) for _ in range(args.repeats + 2)][2:]
        threes += [step(None, 3) for _ in range(args.repeats + 2)][2:]
        mixed += [step(None) + step(None, 3) for _ in range(args.repeats + 2)][2:]
    batch_reused = b.graphs_reused - batch_reused
    one, three = float(np.median(ones)), float(np.median(threes))
    batch_alone, batch_pair = one + three, float(np.median(mixed))
    b.close()

    result = {"date": started.strftime("%Y-%m-%d %H:%M UTC"), "machine": machine_info(args.threads),
              "model": str(path), "full_ms": full_ms, "rows": rows,
              "switch": {"mask": probe.describe(), "alone_ms": alone * 1000, "alternating_ms": switch * 1000,
                         "graphs_reused": reused, "decodes": decodes},
              "batch_switch": {"one_ms": one * 1000, "verify3_ms": three * 1000, "pair_ms": batch_pair * 1000,
                               "extra_per_switch_ms": (batch_pair - batch_alone) / 2 * 1000,
                               "graphs_reused": batch_reused, "decodes": decodes}}
    print(f"{path.name}: one token {full_ms:.1f} ms ({result['machine']['cpu']})")
    for r in rows:
        print(f"  {r['cut']:36s} c = {r['c']:.3f}")
    print(f"  alternating masked/full: {switch * 1000:.2f} ms per decode, alone {alone * 1000:.2f} ms "
          f"(+{(switch - alone) * 1000:.2f} ms per switch; {reused} of {decodes} decodes reused a graph)")
    print(f"  alternating 1-token/3-token: {batch_pair * 1000:.2f} ms per pair, alone {batch_alone * 1000:.2f} ms "
          f"(+{(batch_pair - batch_alone) / 2 * 1000:.2f} ms per switch; "
          f"{batch_reused} of {decodes} decodes reused a graph)")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=1) + "\n")
        os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
