"""Prompt lookup: propose what followed the latest earlier occurrence of the last n-gram.

Costs no model evaluation, so it wins whenever the answer copies its input (code edits,
extraction, quoting). Example, with max_ngram=3 and tokens

    [5, 6, 7, 8, 9, 5, 6, 7]
                     ^^^^^^^ last 3-gram [5, 6, 7] occurred at 0..2, followed by [8, 9, 5, ...]

`propose(tokens, k=2)` returns [8, 9].
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from sdfp_edge.drafters.base import Proposal
from sdfp_edge.sampling import SamplingParams


class PromptLookupDrafter:
    name = "lookup"
    uses_model = False

    def __init__(self, *, max_ngram: int = 3, min_ngram: int = 1) -> None:
        if not 1 <= min_ngram <= max_ngram:
            raise ValueError("need 1 <= min_ngram <= max_ngram")
        self.max_ngram = max_ngram
        self.min_ngram = min_ngram

    def propose(
        self,
        tokens: Sequence[int],
        k: int,
        sampling: SamplingParams | None = None,
        rng: np.random.Generator | None = None,
    ) -> Proposal:
        if k <= 0:
            return Proposal.empty()
        arr = np.asarray(tokens, dtype=np.int64)
        n_tok = len(arr)
        for n in range(min(self.max_ngram, n_tok - 1), self.min_ngram - 1, -1):
            pattern = arr[n_tok - n :]
            windows = sliding_window_view(arr[: n_tok - 1], n)  # starts 0..n_tok-1-n; excludes the suffix itself
            hits = np.flatnonzero((windows == pattern).all(axis=1))
            if len(hits):
                start = int(hits[-1]) + n
                cont = arr[start : start + k]
                if len(cont):
                    return Proposal(cont.copy(), None, 0)
        return Proposal.empty()
