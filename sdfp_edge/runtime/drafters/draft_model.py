"""A separate, smaller draft model with the same vocabulary (the classic approach).

Kept as the baseline users of llama.cpp's speculative decoding know (e.g. Qwen2.5-Coder-0.5B
drafting for 1.5B). The draft model has its own context and KV cache; before each proposal
it catches up on the tokens the target accepted since the last one.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from sdfp_edge.runtime.backend import LlamaBackend
from sdfp_edge.runtime.drafters.base import Proposal, draft_autoregressively
from sdfp_edge.errors import InvalidRequestError
from sdfp_edge.runtime.logits_processors import LogitsProcessor
from sdfp_edge.runtime.sampling import SamplingParams


class DraftModelDrafter:
    name = "draft-model"
    uses_model = True

    def __init__(self, draft: LlamaBackend, *, target_vocab: int, threshold: float = 0.8,
                 cost_prior: float = 1.0) -> None:
        """`cost_prior`: a step's cost relative to the target's, until one is measured (the
        ratio of the files' sizes is a fair guess: decoding reads every weight once)."""
        if draft.n_vocab != target_vocab:
            raise InvalidRequestError(
                f"the draft model's vocabulary ({draft.n_vocab} tokens) differs from the target's "
                f"({target_vocab}); a draft model must share the target's tokenizer"
            )
        self.backend = draft
        self.threshold = threshold
        self.cost_prior = cost_prior

    def prepare(self, tokens: Sequence[int]) -> None:
        self.backend.sync(tokens[:-1])  # a new prompt: prefill it into the draft model's KV

    def propose(
        self, tokens: Sequence[int], k: int, sampling: SamplingParams, rng: np.random.Generator,
        processor: LogitsProcessor | None = None,
    ) -> Proposal:
        if k <= 0:
            return Proposal.empty()
        self.prepare(tokens)  # a no-op after the engine's own call
        start = self.backend.n_past
        try:
            return draft_autoregressively(self.backend, tokens, k, sampling, rng, self.threshold, processor)
        finally:
            self.backend.truncate(start)
