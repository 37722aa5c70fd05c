"""The systems the bench compares, each behind one `run(ids) -> Trace` call.

sdfp systems are `SpeculativeDecoder`s on the one shared backend (one GGUF, one context,
one KV cache), each with its own controller, so what one system learns (acceptance,
timings) never steers another. The peers are llama-cpp-python's own `Llama` class,
untouched: plain generation, and generation with its `LlamaPromptLookupDecoding`
draft model. Their verify cycles and drafts are counted by wrapping `Llama.eval` and the
draft model's `__call__` on the instances; the wrappers only count.

Layer lists for the draft-quality baselines have the FIT list's length and never
contain the last layer (the runtime refuses it):

    random:  a seeded sample of the layers 0..L-2
    uniform: the centres of k equal bins over 0..L-2, e.g. L=30, k=5 -> [2, 8, 14, 20, 26]
    last-k:  the k layers just before the last, e.g. L=30, k=5 -> [24, 25, 26, 27, 28]
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sdfp_edge.engine import GenerationStats, SpeculativeDecoder
from sdfp_edge.sampling import SamplingParams


@dataclass
class Trace:
    """What one generation produced, timed by the bench for every system alike."""

    tokens: list[int] = field(default_factory=list)  # [n] emitted ids (a final EOG included)
    times: list[float] = field(default_factory=list)  # [n] seconds since the call, per token
    cycles: list[int] = field(default_factory=list)  # [n] verify cycle (1-based) per token
    verifies: int = 0
    drafted: int = 0
    accepted: int = 0
    draft_steps: int = 0
    steps_by_drafter: dict[str, int] = field(default_factory=dict)
    engine_tokens_per_second: float | None = None


# --- layer lists for the draft-quality baselines ----------------------------------------------
def random_layers(n_layer: int, k: int, seed: int) -> list[int]:
    rng = np.random.default_rng(seed)
    return sorted(int(i) for i in rng.choice(n_layer - 1, size=k, replace=False))


def uniform_layers(n_layer: int, k: int) -> list[int]:
    width = (n_layer - 1) / k
    return [int((i + 0.5) * width) for i in range(k)]


def last_k_layers(n_layer: int, k: int) -> list[int]:
    return list(range(n_layer - 1 - k, n_layer - 1))


BASELINE_LISTS: dict[str, Callable[[int, int, int], list[int]]] = {
    "layerskip-random": lambda n, k, seed: random_layers(n, k, seed),
    "layerskip-uniform": lambda n, k, seed: uniform_layers(n, k),
    "layerskip-lastk": lambda n, k, seed: last_k_layers(n, k),
}


# --- sdfp systems ---------------------------------------------------------------------------------
class EngineSystem:
    """A SpeculativeDecoder in one fixed mode, on the shared backend."""

    def __init__(self, name: str, kind: str, description: str, decoder: SpeculativeDecoder) -> None:
        self.name, self.kind, self.description = name, kind, description
        self.decoder = decoder

    def run(self, ids: Sequence[int], *, max_tokens: int, sampling: SamplingParams,
            is_eog: Callable[[int], bool]) -> Trace:
        b = self.decoder.backend
        b.reset()  # every system prefills the prompt itself
        stats = GenerationStats()
        trace = Trace()
        t0 = time.perf_counter()
        for tok in self.decoder.generate(ids, max_tokens=max_tokens, sampling=sampling, stats=stats):
            trace.times.append(time.perf_counter() - t0)
            trace.tokens.append(tok)
            trace.cycles.append(stats.verifies)  # updated before the cycle's tokens are yielded
        s = stats.as_dict()
        trace.verifies, trace.drafted, trace.accepted = stats.verifies, stats.drafted, stats.accepted
        trace.draft_steps = stats.draft_steps
        trace.steps_by_drafter = self._steps_by_drafter(stats)
        trace.engine_tokens_per_second = s["tokens_per_second"]
        return trace

    def _steps_by_drafter(self, stats: GenerationStats) -> dict[str, int]:
        by = {d: v["steps"] for d, v in stats.per_drafter.items()}
        # per_drafter misses the steps of drafts that stopped before their first token (k = 0);
        # charge them to the costliest model drafter this system has (a conservative projection)
        rest = stats.draft_steps - sum(by.values())
        if rest > 0:
            costs = self.costs()
            model_drafters = [n for n, d in self.decoder.drafters.items() if d.uses_model]
            if model_drafters:
                worst = max(model_drafters, key=lambda n: costs.get(n, float("inf")))
                by[worst] = by.get(worst, 0) + rest
        return by

    def costs(self) -> dict[str, float]:
        c: dict[str, float] = self.decoder.controller.cost.relative().get("c", {})  # type: ignore[assignment]
        return dict(c)

    def cost_model(self) -> dict[str, Any]:
        return self.decoder.controller.cost.relative()

    def close(self) -> None:
        """Nothing to free: the backend belongs to the Model."""


# --- llama-cpp-python peers -----------------------------------------------------------------------
class _CountingDraft:
    """Wraps a llama-cpp-python draft model; counts the tokens it proposes, changes nothing."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.drafted = 0

    def __call__(self, input_ids: Any, /, **kwargs: Any) -> Any:
        out = self.inner(input_ids, **kwargs)
        self.drafted += len(out)
        return out


class LlamaCppSystem:
    """llama-cpp-python's `Llama.generate`, greedy or sampled, as a user would call it."""

    kind = "peer"

    def __init__(self, name: str, description: str, llm: Any) -> None:
        self.name, self.description = name, description
        self.llm = llm
        self.evals = 0
        inner_eval = llm.eval

        def counting_eval(tokens: Sequence[int]) -> None:
            self.evals += 1
            inner_eval(tokens)

        llm.eval = counting_eval  # instance attribute: Llama.generate calls self.eval(...)
        self.draft: _CountingDraft | None = None
        if llm.draft_model is not None:
            self.draft = _CountingDraft(llm.draft_model)
            llm.draft_model = self.draft

    def run(self, ids: Sequence[int], *, max_tokens: int, sampling: SamplingParams,
            is_eog: Callable[[int], bool]) -> Trace:
        llm = self.llm
        llm.reset()  # no prefix reuse from the previous prompt: prefill like every other system
        self.evals = 0
        if self.draft is not None:
            self.draft.drafted = 0
        if sampling.greedy:
            params: dict[str, Any] = {"temp": 0.0}
        else:  # the same distribution as the engine's: temperature only, no top-k/top-p/min-p
            llm.set_seed(sampling.seed)
            params = {"temp": sampling.temperature, "top_k": 0, "top_p": 1.0, "min_p": 0.0, "typical_p": 1.0}
        trace = Trace()
        t0 = time.perf_counter()
        gen = llm.generate(list(ids), repeat_penalty=1.0, **params)
        try:
            for tok in gen:
                trace.times.append(time.perf_counter() - t0)
                trace.tokens.append(int(tok))
                trace.cycles.append(self.evals)
                if is_eog(int(tok)) or len(trace.tokens) >= max_tokens:
                    break
        finally:
            gen.close()
        trace.verifies = self.evals  # the prompt's eval produces the first token, like a cycle
        if self.draft is not None:
            trace.drafted = self.draft.drafted
            # every eval emits its accepted drafts + one token; the last may be cut by the stop
            trace.accepted = max(0, len(trace.tokens) - self.evals)
        return trace

    def costs(self) -> dict[str, float]:
        return {}

    def cost_model(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        self.llm.close()
