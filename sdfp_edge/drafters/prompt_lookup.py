"""Prompt lookup: propose what followed the latest earlier occurrence of the last n-gram.

Costs no model evaluation, so it wins whenever the answer copies its input (code edits,
extraction, quoting). Example, with max_ngram=3 and tokens

    [5, 6, 7, 8, 9, 5, 6, 7]
                     ^^^^^^^ last 3-gram [5, 6, 7] occurred at 0..2, followed by [8, 9, 5, ...]

`propose(tokens, k=2)` returns [8, 9], with source "lookup:2+" (the match length's
power-of-two bucket): longer matches are accepted far more often (SmolLM2, first draft:
22% after a 1-token match, 51-64% after 2-3, 73-77% after 4-7, 94% after 8), and the
controller keeps statistics per bucket.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from sdfp_edge.drafters.base import Proposal
from sdfp_edge.sampling import SamplingParams


class PromptLookupDrafter:
    """Stateful only as a cache: an index of every n-gram's latest end, extended as the text
    grows (rebuilt when it does not continue the text seen last). A scan of the whole text
    per cycle cost 0.4 ms at 300 tokens and 1 ms at 2000, 2-5% of a 20 ms decode step."""

    name = "lookup"
    uses_model = False

    def __init__(self, *, max_ngram: int = 8, min_ngram: int = 1) -> None:
        if not 1 <= min_ngram <= max_ngram:
            raise ValueError("need 1 <= min_ngram <= max_ngram")
        self.max_ngram = max_ngram
        self.min_ngram = min_ngram
        self._text: list[int] = []  # the indexed tokens: all but the last of the latest call
        self._ends: dict[tuple[int, ...], int] = {}  # n-gram -> end of its latest occurrence

    def propose(
        self,
        tokens: Sequence[int],
        k: int,
        sampling: SamplingParams | None = None,
        rng: np.random.Generator | None = None,
    ) -> Proposal:
        if k <= 0 or len(tokens) < 2:
            return Proposal.empty()
        tokens = list(tokens)
        self._index(tokens[:-1])
        n_tok = len(tokens)
        for n in range(min(self.max_ngram, n_tok - 1), self.min_ngram - 1, -1):
            end = self._ends.get(tuple(tokens[n_tok - n :]))
            if end is not None:  # end <= n_tok - 1: the continuation has at least one token
                return Proposal(np.asarray(tokens[end : end + k], dtype=np.int64), None, 0, match_source(n))
        return Proposal.empty()

    def _index(self, text: list[int]) -> None:
        done = len(self._text)
        if done > len(text) or text[:done] != self._text:
            self._text, self._ends, done = [], {}, 0
        ends = self._ends
        for end in range(done + 1, len(text) + 1):
            for n in range(1, min(self.max_ngram, end) + 1):
                ends[tuple(text[end - n : end])] = end
        self._text.extend(text[done:])


def match_source(n: int) -> str:
    """The statistics bucket of an n-token match: lookup:1, lookup:2+, lookup:4+, lookup:8+..."""
    low = 1 << (n.bit_length() - 1)
    return "lookup:1" if low == 1 else f"lookup:{low}+"
