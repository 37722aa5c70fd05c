"""How many of the ranked layers the draft should skip: measured through the runtime.

Skipping more layers makes each draft step cheaper but lowers acceptance; on small models
acceptance collapses past 30-40% (measurements.md). For each candidate count this runs the
quantized GGUF in llama.cpp with the FIT-ranked list as a forced layer-skip draft on
held-out prompts (greedy), and predicts the speedup under the cost model with the figures
it measured: acceptance alpha, draft step cost c and verify costs V(n), at the best k.
It also reports the memory-bound projection (V(n) = 1), the regime of GPUs and Apple
silicon. The count with the best predicted speedup on the machine that runs it is chosen.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sdfp_edge.runtime.controller import expected_tokens

# held out: none of these is among the calibration prompts
HELD_OUT_PROMPTS = (
    "Summarise the plot of a detective story in three sentences.",
    "Write a Python function that returns the second largest number in a list.",
    "What are three good habits for writing maintainable code? Answer briefly.",
    "Explain to a child why the moon changes shape during the month.",
)


@dataclass(frozen=True)
class CountTrial:
    n_skip: int
    skip_layers: tuple[int, ...]
    acceptance: float  # accepted / drafted
    tokens_per_verify: float
    c: float  # draft step cost relative to one target token
    best_k: int
    predicted_speedup: float  # this machine's measured V(n)
    projected_speedup: float  # memory-bound projection, V(n) = 1
    draft_speedup: float = 0.0  # the best k >= 1 here, even below 1: how close drafting comes to paying


def predict(
    alpha: float, c: float, verify_rel: Callable[[int], float], k_max: int, *, floor: float = 1.0
) -> tuple[int, float]:
    """Best k and its speedup over plain decoding: E(alpha, k) / (k c + V(k+1)).

    k = 0 (plain decoding, speedup 1) competes unless `floor` is lowered below any ratio.
    """
    best_k, best = 0, floor
    for k in range(1, k_max + 1):
        s = expected_tokens(alpha, k) / (k * c + verify_rel(k + 1))
        if s > best:
            best_k, best = k, s
    return best_k, best


def measure_counts(
    gguf_path: str | os.PathLike[str],
    rank: Callable[[int], Sequence[int]],
    counts: Sequence[int],
    *,
    prompts: Sequence[str] = HELD_OUT_PROMPTS,
    max_tokens: int = 48,
    k_max: int = 4,
    n_threads: int | None = None,
    log: Callable[[str], Any] = lambda m: None,
) -> list[CountTrial]:
    """Run each count's skip list (rank(n) gives it) as a forced layer-skip draft.

    One model and one cost model serve every count: plain decoding of the prompts first
    gives t_verify(1) from many samples, then each count drafts k_max tokens per cycle with
    no confidence stop, so its acceptance is per drafted token.
    """
    from sdfp_edge.api import Model
    from sdfp_edge.runtime.drafters import SkipLayersDrafter

    trials = []
    with Model(gguf_path, n_ctx=1024, n_threads=n_threads, skip_layers=(), k_max=k_max, cost_cache=False) as m:
        if m.backend.metadata().get("tokenizer.chat_template"):
            msgs = [m.tokenize_chat([{"role": "user", "content": p}]) for p in prompts]
        else:  # a base model (e.g. gemma-3-270m): the prompts as plain text, as calibration does
            msgs = [m.tokenize_prompt(f"{p}\n\n") for p in prompts]
        for mm in msgs:
            for _ in m.stream_tokens(mm, max_tokens=max_tokens, mode="off"):
                pass
        m.decoder.calibrate()  # V(n) for every n the counts' drafts can use, not only k_max + 1
        cost = m.decoder.controller.cost
        for n in counts:
            layers = tuple(sorted(rank(n)))
            m.decoder.drafters["layerskip"] = SkipLayersDrafter(m.backend, layers, threshold=0.0)
            cost.t_step.pop("layerskip", None)
            drafted = accepted = tokens = verifies = 0
            for mm in msgs:
                for _ in m.stream_tokens(mm, max_tokens=max_tokens, mode="layerskip"):
                    pass
                s = m.last_stats
                drafted += s["drafted"]
                accepted += s["accepted"]
                tokens += s["tokens"]
                verifies += s["verifies"]
            one = cost.verify(1)
            alpha = accepted / drafted if drafted else 0.0
            c = cost.t_step.get("layerskip", one) / one
            here = {n_: cost.verify(n_) / one for n_ in range(1, k_max + 2)}
            k_any, drafting = predict(alpha, c, here.__getitem__, k_max, floor=0.0)
            k, predicted = (k_any, drafting) if drafting > 1.0 else (0, 1.0)  # plain decoding competes
            _, projected = predict(alpha, c, lambda n_: 1.0, k_max)
            t = CountTrial(n, layers, alpha, tokens / max(verifies, 1), c, k, predicted, projected, drafting)
            log(f"  skip {n:>2} layers {list(layers)}: acceptance {alpha:.2f}, "
                f"{t.tokens_per_verify:.2f} tokens/verify, c {c:.2f}, best k {k}, "
                f"predicted x{predicted:.2f} here, x{projected:.2f} memory-bound")
            trials.append(t)
    return trials


def choose_count(trials: Sequence[CountTrial]) -> CountTrial:
    """The best predicted speedup here; ties (e.g. all lose on a compute-bound CPU and
    predict 1.0) go to the best memory-bound projection, then to the count whose drafts
    come closest to paying here (without this, a tie went to the first count listed)."""
    return max(trials, key=lambda t: (round(t.predicted_speedup, 3), round(t.projected_speedup, 3),
                                      t.draft_speedup))
