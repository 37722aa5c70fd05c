#!/usr/bin/env python3
"""Prefill time of one prompt cut into batches of different sizes (backend.REUSE_GRID_CPU).

Figures: The figures in the REUSE_GRID_CPU comment of sdfp_edge/runtime/backend.py (the cost of
64-token prefill batches); no README or docs figure.

    .venv/bin/python tools/prefill_batches.py --model qwen2.5-coder-1.5b --tokens 396 --sizes 64,128,256,512

Each batch reads every weight once, so on a CPU small batches cost prefill time; the
engine prefills in llama.cpp's own n_batch batches, batch mode on the 64-position grid.
"""

from __future__ import annotations

import argparse
import time

from sdfp_edge.runtime.backend import LlamaBackend
from sdfp_edge.models import resolve_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--tokens", type=int, default=396)
    ap.add_argument("--sizes", default="64,128,256,512")
    ap.add_argument("--runs", type=int, default=4)
    args = ap.parse_args()
    with LlamaBackend(resolve_model(args.model), n_ctx=4096, n_threads=args.threads) as b:
        prompt = [(i * 7919) % 30000 + 100 for i in range(args.tokens)]  # any ids: the cost is the shape
        for size in (int(s) for s in args.sizes.split(",")):
            b.prefill_chunk = size
            times = []
            for _ in range(args.runs):
                b.reset()
                t0 = time.perf_counter()
                b.decode(prompt, logits="last")
                times.append(time.perf_counter() - t0)
            print(f"batches of {size}: {args.tokens} tokens in " + " / ".join(f"{t:.2f}" for t in times) + " s",
                  flush=True)


if __name__ == "__main__":
    main()
