#!/usr/bin/env python3
"""Where `auto`'s greedy text parts from plain decoding, and whether the target was near a tie there.

Figures: docs/bench-method.md, 'Qwen2.5-Coder-1.5B on a Xeon VM's flat curve' (same output).

    .venv/bin/python tools/divergence_gap.py --model qwen2.5-coder-1.5b --data humaneval,humaneval-edit,multiturn \\
        --limit 5 --prompt HumanEval/97 --prompt chat/HumanEval/137

Why: llama.cpp's batched and single-token kernels are not bitwise identical, so a verify
batch can flip a near-tie and a greedy text part from plain decoding without any fault in
the speculation. A bench reports only where texts part (runs[].divergence); this decodes
the prompt's first turn with `off` and with `auto` in one process, finds the first differing
token, and prints plain decoding's two leading logits there (the prefix decoded as one
batch), with the ranks of the two tokens the texts part on and how far apart their logits
are: a gap of a few hundredths is a near-tie, a large one would be a bug.
"""

from __future__ import annotations

import argparse

import numpy as np

from sdfp_edge.api import Model
from sdfp_edge.bench import data
from sdfp_edge.bench.stats import first_divergence
from sdfp_edge.models import resolve_model
from sdfp_edge.runtime.sampling import SamplingParams


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--data", default="humaneval,humaneval-edit,multiturn", help="the bench's --data")
    ap.add_argument("--limit", type=int, default=5, help="the bench's --limit")
    ap.add_argument("--seed", type=int, default=0, help="the bench's --seed")
    ap.add_argument("--prompt", action="append", required=True, help="a prompt id (repeatable)")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    prompts = {p.id: p for p in data.load(args.data.split(","), limit=args.limit, seed=args.seed)}
    missing = [p for p in args.prompt if p not in prompts]
    if missing:
        raise SystemExit(f"not in that selection: {', '.join(missing)}")
    path = str(resolve_model(args.model))
    models = {mode: Model(path, n_ctx=4096, n_threads=args.threads, mode=mode, cost_cache=False)
              for mode in ("off", "auto")}
    for pid in args.prompt:
        ids = models["off"].tokenize_chat(prompts[pid].messages)
        texts = {}
        for mode, m in models.items():
            m.decoder.backend.reset()
            texts[mode] = list(m.decoder.generate(ids, max_tokens=args.max_tokens,
                                                  sampling=SamplingParams(temperature=0.0, seed=0)))
        a, b = texts["off"], texts["auto"]
        i = first_divergence(a, b)
        if i is None:
            print(f"{pid}: the same {len(a)} tokens")
            continue
        if i == min(len(a), len(b)):
            print(f"{pid}: the same first {i} tokens, then one text ends ({len(a)} off, {len(b)} auto)")
            continue
        backend = models["off"].decoder.backend
        backend.reset()
        row = np.asarray(backend.decode([*ids, *a[:i]], logits="last")[-1], dtype=np.float64)
        first, second = np.argsort(row)[::-1][:2]
        rank = {t: int((row > row[t]).sum()) + 1 for t in (a[i], b[i])}
        print(f"{pid}: first difference at token {i} (off {a[i]}, auto {b[i]}); leading logits "
              f"{int(first)} {row[first]:.4f}, {int(second)} {row[second]:.4f}: gap {row[first] - row[second]:.4f}; "
              f"off's token ranks {rank[a[i]]}, auto's {rank[b[i]]}, {abs(row[a[i]] - row[b[i]]):.4f} apart")


if __name__ == "__main__":
    main()
