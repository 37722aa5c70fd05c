#!/usr/bin/env python3
"""Which ways of cutting one prompt's prefill into batches give its KV bit for bit.

Figures: the docstring of sdfp_edge/runtime/prefill_splits.py (the two facts its rule rests on)
and docs/serving.md ("Prompt cache").

    .venv/bin/python tools/prefill_exactness.py --model smollm2-135m --model qwen2.5-coder-0.5b

For each model, a prompt of --tokens tokens is prefilled in one batch from an empty cache (the
reference), then again as another prompt's prefix: that prompt (sharing `keep` tokens) prefilled
in the batches shown under "held", its KV cut back to `keep`, and the rest of this prompt
prefilled in the batches under "rest". A row says whether every logit of the rest equals the
reference's, bit for bit, or how far the farthest is. The cases cover the two rules of
prefill_splits.SplitRule: a batch split a multiple of 4 rows from its start or not, and batches
of 64 rows or more, or fewer (flash attention's row tile).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from sdfp_edge.models import resolve_model
from sdfp_edge.runtime.backend import LlamaBackend

# (held batches, keep, rest batches) for a prompt of 300 tokens
CASES = [
    ([64], 64, [236]), ([134], 64, [236]), ([68], 68, [232]), ([136], 66, [234]), ([101], 101, [199]),
    ([100, 64], 164, [136]), ([128], 64, [64, 172]), ([128], 64, [66, 170]), ([128], 64, [100, 136]),
    ([128], 64, [166, 70]), ([45], 4, [296]), ([65], 24, [276]), ([250], 200, [100]),
    ([300], 240, [60]), ([30], 20, [10, 270]),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", required=True, help="a model name or GGUF path (repeatable)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=300)
    args = ap.parse_args()
    source = Path(__file__).read_text()
    other = (Path(__file__).parent.parent / "sdfp_edge" / "runtime" / "engine.py").read_text()
    print("| model | held | keep | rest | rest's logits |\n|---|---|---:|---|---|")
    for name in args.model:
        with LlamaBackend(resolve_model(name), n_ctx=1024, n_threads=args.threads) as b:
            prompt, filler = b.tokenize(source * 4)[:args.tokens], b.tokenize(other)
            b.seq_remove(0, 0)
            ref = b.decode_seqs(prompt, range(len(prompt)), [0] * len(prompt), logits="all")
            for held, keep, rest in CASES:
                if keep + sum(rest) != len(prompt) or sum(held) < keep:
                    continue
                first = prompt[:keep] + filler[:sum(held) - keep]
                decode_in(b, first, 0, held)
                b.seq_remove(0, keep)
                got = decode_in(b, prompt, keep, rest)
                d = float(np.abs(got - ref[keep:]).max())
                print(f"| {name} | {held} | {keep} | {rest} | {'equal' if d == 0 else f'{d:.3f} apart'} |", flush=True)


def decode_in(b: LlamaBackend, tokens: list[int], start: int, sizes: list[int]) -> np.ndarray:
    """tokens[start:] decoded in batches of these sizes, after an emptied cache when start is 0."""
    if start == 0:
        b.seq_remove(0, 0)
    rows = []
    for n in sizes:
        rows.append(b.decode_seqs(tokens[start:start + n], range(start, start + n), [0] * n, logits="all"))
        start += n
    return np.concatenate(rows)


if __name__ == "__main__":
    main()
