#!/usr/bin/env python3
"""Where the time of one `serve --parallel N` step goes: llama_decode against the Python around it.

Figures: docs/serving.md ("What it shows": the Python time per step).

    .venv/bin/python tools/slot_step_cost.py --model smollm2-135m --slots 4 --max-tokens 128

N prompts (MT-Bench first turns and HumanEval, alternating, as tools/serve_concurrency.py sends
them) are admitted into the N slots of a ParallelDecoder at once, then stepped until all end,
twice (the first round warms llama.cpp's graphs up; the second is reported). Each step's wall
time is split into the time inside LlamaBackend.decode_seqs and the rest: the Python work of a
step (lookup drafts, their pricing, verdicts, detokenizing, stop strings), which llama-server
does in C++. Greedy, mode as given, no stored costs. `--slots 1 --context-seqs 4` is one client
on `serve --parallel 4`.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from sdfp_edge.api import Model
from sdfp_edge.bench.data import interleave, load_humaneval, load_mtbench
from sdfp_edge.runtime.parallel import ParallelDecoder, Request
from sdfp_edge.runtime.sampling import SamplingParams


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--slots", type=int, default=4, help="prompts decoded together")
    ap.add_argument("--context-seqs", type=int, default=None,
                    help="sequences the context holds (default: --slots; serve --parallel N has N)")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--mode", default="auto", choices=("auto", "lookup", "off"))
    args = ap.parse_args()
    seqs = args.context_seqs or args.slots
    if seqs < args.slots:
        raise SystemExit("--context-seqs must be at least --slots")
    with Model(args.model, n_ctx=1024 * seqs, n_threads=args.threads, n_seq_max=seqs, cost_cache=False) as m:
        b = m.backend
        chat, code = interleave(load_mtbench()), load_humaneval()
        prompts = [m.tokenize_chat(p.messages) for pair in zip(chat, code) for p in pair][: args.slots]
        inside = [0.0]
        decode = b.decode_seqs

        def timed(*a: Any, **k: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return decode(*a, **k)
            finally:
                inside[0] += time.perf_counter() - t0

        b.decode_seqs = timed  # type: ignore[method-assign]
        for rnd in ("warm-up", "measured"):
            dec = ParallelDecoder(b, seq_ctx=1024, mode=args.mode)  # empty slots: every prompt prefilled
            for i, p in enumerate(prompts):
                dec.admit(Request(i, p, args.max_tokens, SamplingParams(temperature=0.0)))
            inside[0], steps, tokens = 0.0, 0, 0
            t0 = time.perf_counter()
            while dec.active:
                tokens += sum(len(u.tokens) for u in dec.step())
                steps += 1
            wall = time.perf_counter() - t0
            print(f"{rnd}: {args.slots} of {seqs} slots, prompts of {[len(p) for p in prompts]} tokens, {steps} steps, "
                  f"{tokens} tokens: {1e3 * wall / steps:.1f} ms per step, of which llama_decode "
                  f"{1e3 * inside[0] / steps:.1f} ms and Python {1e3 * (wall - inside[0]) / steps:.2f} ms "
                  f"({100 * (wall - inside[0]) / wall:.1f}%)", flush=True)


if __name__ == "__main__":
    main()
