#!/usr/bin/env python3
"""Prefill time of one prompt cut into batches of different sizes (runtime/prefill_splits.py), and
of several prompts prefilled one after another or in one batch (serve --parallel).

Figures: docs/serving.md ("One batch per step": --together; "on a Zen 4 VM":
--reused, what exact prefix reuse's cuts cost a lone request).

    .venv/bin/python tools/prefill_batches.py --model qwen2.5-coder-1.5b --tokens 396 --sizes 64,128,256,512
    .venv/bin/python tools/prefill_batches.py --model smollm2-135m --together 4 --tokens 120
    .venv/bin/python tools/prefill_batches.py --model qwen2.5-coder-1.5b --tokens 136 --reused 24 --sizes 64,512

--together N: N prompts of --tokens tokens each in N sequences of one context (each with its own
KV stream, as serve --parallel N), prefilled one after another, then all in one llama_batch
(llama.cpp splits it into equal per-sequence slices); --runs times each, alternating. Both
ask for every row's logits (one llama_batch with only each prompt's last row would need the
batch built by hand), so both pay the output layer for the same rows.

Each batch reads every weight once, so on a CPU small batches cost prefill time; every
prefill is in llama.cpp's own n_batch batches (cut at a chat's messages for exact reuse: since
2026-12-08; before, serve --parallel and batch mode cut every 64 positions).
"""

from __future__ import annotations

import argparse
import time

from sdfp_edge.runtime.backend import LlamaBackend
from sdfp_edge.runtime.prefill_splits import batches
from sdfp_edge.models import resolve_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--tokens", type=int, default=396)
    ap.add_argument("--sizes", default="64,128,256,512")
    ap.add_argument("--runs", type=int, default=4)
    ap.add_argument("--together", type=int, default=0, help="N prompts: one after another, then in one batch")
    ap.add_argument("--reused", type=int, default=0,
                    help="the first N tokens are in the cache already (a prefix reused from another slot, as "
                         "serve --parallel copies a system prompt): only the rest is timed, its batches still "
                         "cut at multiples of each size")
    args = ap.parse_args()
    if args.together:
        together(args)
        return
    with LlamaBackend(resolve_model(args.model), n_ctx=4096, n_threads=args.threads) as b:
        prompt = [(i * 7919) % 30000 + 100 for i in range(args.tokens)]  # any ids: the cost is the shape
        rest = range(args.reused, args.tokens)
        for size in (int(s) for s in args.sizes.split(",")):
            parts = [(args.reused + i, args.reused + j) for i, j in batches(rest, frozenset(), size)]
            times = []
            for _ in range(args.runs):
                b.reset()
                if args.reused:
                    b.decode(prompt[:args.reused], logits="last")
                t0 = time.perf_counter()
                for i, j in parts:
                    b.decode_seqs(prompt[i:j], range(i, j), [0] * (j - i), logits="last")
                times.append(time.perf_counter() - t0)
            cut = [j - i for i, j in parts]
            print(f"batches of {size}: {len(rest)} tokens {cut} in " + " / ".join(f"{t:.2f}" for t in times) + " s",
                  flush=True)


def together(args: argparse.Namespace) -> None:
    n = args.together
    with LlamaBackend(resolve_model(args.model), n_ctx=n * (args.tokens + 64), n_threads=args.threads,
                      n_seq_max=n) as b:
        prompts = [[(i * 7919 + 104729 * s) % 30000 + 100 for i in range(args.tokens)] for s in range(n)]
        if n * args.tokens > b.n_batch:
            raise SystemExit(f"{n} x {args.tokens} tokens exceed one batch of {b.n_batch}")
        tokens = [t for p in prompts for t in p]
        positions = [i for p in prompts for i in range(len(p))]
        seqs = [s for s, p in enumerate(prompts) for _ in p]
        serial, batch = [], []
        for _ in range(args.runs):
            b.reset()
            t0 = time.perf_counter()
            for s, p in enumerate(prompts):
                b.decode_seqs(p, range(len(p)), [s] * len(p), logits="all")
            serial.append(time.perf_counter() - t0)
            b.reset()
            t0 = time.perf_counter()
            b.decode_seqs(tokens, positions, seqs, logits="all")
            batch.append(time.perf_counter() - t0)
        print(f"{n} prompts of {args.tokens} tokens: one after another " + " / ".join(f"{t:.2f}" for t in serial)
              + " s; in one batch " + " / ".join(f"{t:.2f}" for t in batch) + " s", flush=True)


if __name__ == "__main__":
    main()
