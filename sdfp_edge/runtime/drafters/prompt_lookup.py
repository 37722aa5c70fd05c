"""Prompt lookup: propose what followed the latest earlier occurrence of the last n-gram.

Costs no model evaluation, so it wins whenever the answer copies its input (code edits,
extraction, quoting). Example, with max_ngram=3 and tokens

    [5, 6, 7, 8, 9, 5, 6, 7]
                     ^^^^^^^ last 3-gram [5, 6, 7] occurred at 0..2, followed by [8, 9, 5, ...]

`propose(tokens, k=2)` returns [8, 9], with source "lookup:2+" (the match length's
power-of-two bucket), or "lookup:2+/mixed" had the n-gram's earlier occurrences been
followed by different tokens. Both predict acceptance, so the controller keeps statistics
per source. The index holds n-grams up to 8 tokens; a match that long is then measured up
to 64 tokens, because a copy that has run for a while is the surest draft there is. On
greedy answers to 34 chat prompts (tools/lookup_acceptance.py --k 32, 2026-12-01), the
first draft was accepted after an agreeing match of 1 / 2-3 / 4-7 / 8-15 / 16-31 / 32-63 /
64+ tokens 30 / 58 / 77 / 92 / 97 / 98 / 100% of the time on SmolLM2 and 32 / 61 / 71 /
87 / 94 / 99 / 100% on Qwen2.5-Coder-1.5B; 16% and 28% after a 1- or 2-3-token match
whose occurrences disagree.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

from sdfp_edge.runtime.drafters.base import Proposal
from sdfp_edge.runtime.logits_processors import LogitsProcessor
from sdfp_edge.runtime.sampling import SamplingParams

# matches are measured up to this many tokens: a copy that has run for 16 or 32 tokens is
# accepted more often than one of 8, and drafts far longer pay when they are (LOOKUP_MAX)
LONG_MATCH = 64
# a match this long whose earlier occurrences agree is evidence from the text at hand, not
# from statistics of earlier texts: its first draft was accepted 87-100% of the time
TRUSTED_MATCH = 8
# how often a source's first draft is accepted, greedy, before this process has seen any:
# the mean of the two models measured above (tools/lookup_acceptance.py, models/bench/lookup/),
# capped at 0.98 (a prior, not a certainty); 4+/mixed from Qwen alone, 8+/mixed left out
# (10 proposals)
FIRST_ACCEPTED = {"lookup:1": 0.31, "lookup:2+": 0.60, "lookup:4+": 0.74, "lookup:8+": 0.90,
                  "lookup:16+": 0.95, "lookup:32+": 0.98, "lookup:64+": 0.98,
                  "lookup:1/mixed": 0.16, "lookup:2+/mixed": 0.28, "lookup:4+/mixed": 0.40}


class PromptLookupDrafter:
    """Stateful only as a cache: an index of every n-gram's latest end, extended as the text
    grows (rebuilt when it does not continue the text seen last). A scan of the whole text
    per cycle cost 0.4 ms at 300 tokens and 1 ms at 2000, 2-5% of a 20 ms decode step."""

    name = "lookup"
    uses_model = False
    cost_prior = 0.0

    def __init__(self, *, max_ngram: int = 8, min_ngram: int = 1) -> None:
        if not 1 <= min_ngram <= max_ngram:
            raise ValueError("need 1 <= min_ngram <= max_ngram")
        self.max_ngram = max_ngram
        self.min_ngram = min_ngram
        self._text: list[int] = []  # the indexed tokens: all but the last of the latest call
        # n-gram -> (end of its latest occurrence, the token after it, whether every
        # occurrence was followed by that same token)
        self._seen: dict[tuple[int, ...], tuple[int, int, bool]] = {}

    def prepare(self, tokens: Sequence[int]) -> None:
        """Nothing one-off: propose indexes the new tokens as it goes."""

    def propose(
        self,
        tokens: Sequence[int],
        k: int,
        sampling: SamplingParams | None = None,
        rng: np.random.Generator | None = None,
        processor: LogitsProcessor | None = None,  # a deterministic draft: the target's rows judge it
    ) -> Proposal:
        if k <= 0 or len(tokens) < 2:
            return Proposal.empty()
        tokens = tokens if isinstance(tokens, list) else list(tokens)  # read only: no copy per cycle
        self._index(tokens)
        n_tok = len(tokens)
        for n in range(min(self.max_ngram, n_tok - 1), self.min_ngram - 1, -1):
            hit = self._seen.get(tuple(tokens[n_tok - n :]))
            if hit is not None:  # end <= n_tok - 1: the continuation has at least one token
                end, _, agree = hit
                if n == self.max_ngram:
                    n = match_length(tokens, end, n)
                cont = np.asarray(tokens[end : end + k], dtype=np.int64)
                return Proposal(cont, None, 0, match_source(n, agree), match=n,
                                trusted=agree and n >= TRUSTED_MATCH)
        return Proposal.empty()

    def _index(self, tokens: list[int]) -> None:
        """Index the n-grams of tokens[:-1] (each is followed by a known token)."""
        text_len = len(tokens) - 1
        done = len(self._text)
        if done > text_len or tokens[:done] != self._text:
            self._text, self._seen, done = [], {}, 0
        seen = self._seen
        for end in range(done + 1, text_len + 1):
            nxt = tokens[end]
            for n in range(1, min(self.max_ngram, end) + 1):
                key = tuple(tokens[end - n : end])
                old = seen.get(key)
                seen[key] = (end, nxt, old is None or (old[2] and old[1] == nxt))
        self._text.extend(tokens[done:text_len])


def match_length(tokens: Sequence[int], end: int, n: int, longest: int = LONG_MATCH) -> int:
    """How far back, up to `longest`, the text's suffix agrees with the text before `end`,
    given that its last n tokens do: the index stops at max_ngram, a copy runs longer."""
    last = len(tokens)
    while n < longest and end - n - 1 >= 0 and tokens[end - n - 1] == tokens[last - n - 1]:
        n += 1
    return n


def prior_acceptance(source: str) -> float | None:
    """What a source's first draft is expected to do before it was ever drafted here: a
    1-token match is accepted a third of the time, so probing it from an uninformed prior
    (plus the exploration bonus) spent one-token verifies that cannot pay where V(2) is
    1.6-1.8. Measured greedy; a sampled one-hot draft is accepted with the target's
    probability of it, which ran below the greedy rate (SmolLM2 at temperature 0.7, Xeon VM,
    issue 34's notes of 2026-12-06: 0.14-0.20 for lookup:1 against 0.31, 0.50 for lookup:2+
    against 0.60, level beyond), so the greedy figure is an optimistic prior there too, and
    evidence lowers it. With no prior (and so an exploration bonus) a sampled run probed every
    source, lookup:1 included: 34% of its drafts were accepted, 50% with these priors
    (docs/bench-method.md)."""
    return FIRST_ACCEPTED.get(source)


def drafts_judged_by(p: Proposal, *, regime: str = "") -> tuple[tuple[str, float | None], ...]:
    """Whose statistics judge each draft of a proposal, with their priors (Candidate.chain).

    Draft i + 1 is reached only when drafts 1..i were accepted, and then continues a match of
    p.match + i tokens: its odds are those of a first draft after a match that long. On 79
    greedy Qwen answers (models/bench/replay/) this predicted the measured acceptance of
    every later draft within 0.06, where letting each later position borrow its source's
    first rate expected 9.7 tokens of a 32-token draft after a fresh 8-token match, not
    12.1. Drafts after the first count as agreeing: the longer n-gram's other occurrences
    are not looked up.
    `regime`: the suffix of the statistics' keys (SamplingParams.regime: "" when greedy)."""
    return _judged_by(p.source, p.match, p.k, regime) if p.k else ()


@functools.lru_cache(maxsize=4096)
def _judged_by(source: str, match: int, k: int, regime: str) -> tuple[tuple[str, float | None], ...]:
    """drafts_judged_by's chain, made once per (source, match, k, setting): the engine asks for
    one every cycle, and a 32-token chain cost more than the lookup itself."""
    sources = [source, *(match_source(min(match + i, LONG_MATCH)) for i in range(1, k))]
    return tuple((s + regime, prior_acceptance(s)) for s in sources)


def match_source(n: int, agree: bool = True) -> str:
    """The statistics bucket of an n-token match: lookup:1, lookup:2+, lookup:4+, lookup:8+...,
    with "/mixed" when the n-gram's earlier occurrences were followed by different tokens."""
    low = 1 << (n.bit_length() - 1)
    return ("lookup:1" if low == 1 else f"lookup:{low}+") + ("" if agree else "/mixed")
