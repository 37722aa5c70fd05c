#!/usr/bin/env python3
"""Are sdfp-edge's llama.cpp context settings as fast as `Llama`'s? One process, both contexts.

Figures: docs/bench-method.md ("`off`'s gap to plain llama.cpp is the thread spin").

    .venv/bin/python tools/context_speed.py --model smollm2-135m --rounds 12

Opens the model twice in one process: llama-cpp-python's `Llama` as the bench's plain llama.cpp
system opens it (sdfp_edge/bench/worker.py) and sdfp-edge's backend (its own context parameters),
then drives both with the same raw `llama_decode` calls: the prompt in one batch, then --tokens
single tokens with their logits, the cache cleared before each round, the two contexts taking
turns (which goes first alternates). Both share the process, its threads' wait setting and its memory, so what is
left to differ is the contexts themselves. Prints each context's mean time per decode per round
and the median of the paired ratios (rounds after the first). Run it with nothing else computing.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

PROMPT = b"Write a long story about a dragon who learns to paint."


def decode_round(llama_cpp: Any, ctx: Any, batch: Any, prompt: list[int], follow: list[int]) -> float:
    """Mean seconds per single-token decode after a fresh prefill of `prompt`."""
    llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
    batch.n_tokens = len(prompt)
    for i, t in enumerate(prompt):
        batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = t, i, 1, i == len(prompt) - 1
        batch.seq_id[i][0] = 0
    if llama_cpp.llama_decode(ctx, batch) != 0:
        raise SystemExit("the prompt's decode failed")
    total = 0.0
    for k, t in enumerate(follow):
        batch.n_tokens = 1
        batch.token[0], batch.pos[0], batch.n_seq_id[0], batch.logits[0] = t, len(prompt) + k, 1, True
        batch.seq_id[0][0] = 0
        t0 = time.perf_counter()
        if llama_cpp.llama_decode(ctx, batch) != 0:
            raise SystemExit("a decode failed")
        llama_cpp.llama_get_logits(ctx)
        total += time.perf_counter() - t0
    return total / len(follow)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m", help="a GGUF path or a catalog name (sdfp-edge models)")
    ap.add_argument("--rounds", type=int, default=12, help="rounds of both contexts (the first left out)")
    ap.add_argument("--tokens", type=int, default=128, help="single-token decodes per round")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-ctx", type=int, default=4096)
    args = ap.parse_args()
    if args.rounds < 2:
        ap.error("--rounds must be at least 2 (the first is a warm-up)")

    import llama_cpp

    from sdfp_edge.bench.protocol import LoadConfig
    from sdfp_edge.bench.systems import Setup, spec_for
    from sdfp_edge.bench.worker import LlamaCppSystem
    from sdfp_edge.models import resolve_model
    from sdfp_edge.runtime.backend import LlamaBackend

    model = str(resolve_model(args.model))
    # the Llama the bench's plain llama.cpp system opens (its kernels and settings)
    load = LoadConfig(model=model, n_ctx=args.n_ctx, threads=args.threads, n_gpu_layers=None, k_max=4,
                      threshold=0.8, cost_cache=False)
    peer = LlamaCppSystem(spec_for("llama-cpp", Setup((), "", False, 0, None, None, "", 0)), load)
    llm = peer.llm
    backend = LlamaBackend(model, n_ctx=args.n_ctx, n_threads=args.threads)
    prompt = llm.tokenize(PROMPT)
    n_vocab = llm.n_vocab()
    follow = [(prompt[i % len(prompt)] * 7 + i) % (n_vocab - 200) + 100 for i in range(args.tokens)]
    contexts = {"Llama": (llm._ctx.ctx, llm._batch.batch), "sdfp-edge": (backend._ctx.ctx, backend._batch.batch)}
    times: dict[str, list[float]] = {name: [] for name in contexts}
    for r in range(args.rounds):
        for name in list(contexts)[:: 1 if r % 2 == 0 else -1]:
            times[name].append(decode_round(llama_cpp, *contexts[name], prompt, follow))
    print(f"{model}, {args.tokens} decodes per round, {args.threads} threads")
    for name, ts in times.items():
        print(f"{name}: ms per decode by round {[round(t * 1e3, 3) for t in ts]}")
    ratios = [b / a for a, b in zip(times["Llama"][1:], times["sdfp-edge"][1:])]
    print(f"sdfp-edge / Llama, time per decode, median of {len(ratios)} paired rounds: "
          f"{statistics.median(ratios):.3f} (min {min(ratios):.3f}, max {max(ratios):.3f})")
    backend.close()
    peer.close()


if __name__ == "__main__":
    main()
