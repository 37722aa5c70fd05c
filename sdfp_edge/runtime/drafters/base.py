"""The data contract between drafters and the speculative loop."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from sdfp_edge.runtime.logits_processors import LogitsProcessor
from sdfp_edge.runtime.sampling import SamplingParams, probs_from_logits, sample, softmax


@dataclass(frozen=True)
class Proposal:
    tokens: npt.NDArray[np.int64]  # [k] drafted token ids (k may be 0)
    probs: npt.NDArray[np.float64] | None  # [k, V] draft distributions; None: deterministic (one-hot)
    steps: int  # model evaluations spent (a confidence stop can spend one more than k)
    source: str = ""  # whose acceptance statistics judge it (see controller); "": the drafter's
    match: int = 0  # prompt lookup: how many tokens of the text's suffix matched (0: a model's draft)
    trusted: bool = False  # it rests on the text at hand itself (a long, agreeing match)

    @property
    def k(self) -> int:
        return len(self.tokens)

    @staticmethod
    def empty(steps: int = 0) -> Proposal:
        return Proposal(np.zeros(0, dtype=np.int64), None, steps)


class Drafter(Protocol):
    name: str
    uses_model: bool  # False: proposals cost no model evaluation (prompt lookup)
    cost_prior: float  # a step's cost relative to the target's token, until one is measured

    def prepare(self, tokens: Sequence[int]) -> None:
        """One-off work before proposing after `tokens` (a draft model catching up on the
        prompt, the small head built on first use): the engine times it apart from the
        draft steps, so that a step's measured cost is a step's."""
        ...

    def propose(
        self, tokens: Sequence[int], k: int, sampling: SamplingParams, rng: np.random.Generator,
        processor: LogitsProcessor | None = None,
    ) -> Proposal: ...


def draft_autoregressively(
    backend: Any,
    tokens: Sequence[int],
    k: int,
    sampling: SamplingParams,
    rng: np.random.Generator,
    threshold: float,
    processor: LogitsProcessor | None = None,
) -> Proposal:
    """Decode up to k tokens after tokens[-1] one at a time, stopping early at low confidence.

    The confidence is the draft's top-1 probability (of the sampling distribution when
    sampling, of the raw softmax when greedy). `processor` transforms each draft row as it
    transforms the target's (penalties, grammar). The caller restores the KV cache.
    """
    drafted: list[int] = []
    dists: list[npt.NDArray[np.float64]] = []
    steps = 0
    cur = tokens[-1]
    for _ in range(k):
        logits = backend.decode([cur], logits="last")
        if processor is not None:
            logits = processor.apply(tokens, logits, drafted)
        logits = logits[0]
        steps += 1
        if not np.isfinite(logits.max()):  # every token masked (a grammar outside the small head)
            break
        if sampling.greedy:
            confidence = float(softmax(logits).max())
            tok = int(np.argmax(logits))
        else:
            q = probs_from_logits(logits, sampling)[0]
            confidence = float(q.max())
            tok = sample(q, rng)
        if confidence < threshold:
            break
        drafted.append(tok)
        if not sampling.greedy:
            dists.append(q)
        cur = tok
    probs = np.stack(dists) if dists else None
    return Proposal(np.asarray(drafted, dtype=np.int64), probs, steps)
