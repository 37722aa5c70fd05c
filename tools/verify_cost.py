#!/usr/bin/env python3
"""V(n): what verifying n tokens in one batch costs, relative to decoding one token.

Figures: docs/how-it-works.md (the controller's V(n) on the EPYC VM) and docs/prompt-lookup.md (the
third VM's curve); records in models/bench/verify-cost/, read by tools/lookup_replay.py.

Why this exists: the controller prices a draft of k tokens by V(k + 1) (controller.py), and
on a CPU the curve is neither flat nor smooth (llama.cpp switches matrix kernels with the
batch size), so a size it never measured can be priced far off. This times the curve the
way a verify runs: n tokens appended after --context tokens already in the KV cache, logits
for every row, then truncated back. Sizes are interleaved across --repeats and the minimum
is kept (CostModel.calibrate, as the engine's own warm-up), so a burst of noise spoils one
sample of several sizes, not every sample of one.

    .venv/bin/python tools/verify_cost.py --model qwen2.5-coder-1.5b \\
        --out models/bench/verify-cost/qwen2.5-coder-1.5b.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
import time
from pathlib import Path

from sdfp_edge import models
from sdfp_edge.runtime.backend import LlamaBackend, cpu_name, default_threads
from sdfp_edge.runtime.controller import CostModel

SIZES = [*range(1, 21), 24, 28, 31, 32, 33, 40, 48, 64]
TEXT = "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n\n"


def measure(backend: LlamaBackend, sizes: list[int], context: int, repeats: int) -> dict[int, float]:
    tokens = (backend.tokenize(TEXT * (1 + (context + max(sizes)) // 10)))[: context + max(sizes)]
    backend.decode(tokens[:context], logits="last")
    base = backend.n_past
    backend.decode(tokens[base:base + 4], logits="all")  # warm-up, untimed
    backend.truncate(base)

    def verify(n: int) -> float:
        t0 = time.perf_counter()
        backend.decode(tokens[base:base + n], logits="all")
        seconds = time.perf_counter() - t0
        backend.truncate(base)
        return seconds

    cost = CostModel()
    cost.calibrate(verify, sizes, repeats=repeats)
    return cost.t_verify


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", "-m", required=True)
    ap.add_argument("--threads", "-t", type=int, default=None)
    ap.add_argument("--context", type=int, default=200, help="tokens already in the KV cache")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], default=SIZES)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    sizes = sorted(set(a.sizes) | {1})
    path = models.resolve_model(a.model)
    threads = a.threads or default_threads()
    with LlamaBackend(path, n_ctx=a.context + max(sizes) + 64, n_threads=threads) as b:
        best = measure(b, sizes, a.context, a.repeats)
    one = best[1]
    rows = [{"n": n, "ms": round(best[n] * 1e3, 2), "V": round(best[n] / one, 3),
             "tokens_per_token_time": round(n / (best[n] / one), 3)} for n in sizes]
    for r in rows:
        print(f"n={r['n']:3d}  {r['ms']:8.1f} ms  V={r['V']:6.2f}  n/V={r['tokens_per_token_time']:.2f}")
    if a.out:
        record = {"created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                  "command": "tools/verify_cost.py " + " ".join(sys.argv[1:]),
                  "model": path.name, "cpu": cpu_name(), "machine": platform.machine(),
                  "threads": threads, "context": a.context, "repeats": a.repeats, "rows": rows}
        a.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = a.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=1) + "\n")
        tmp.replace(a.out)


if __name__ == "__main__":
    main()
