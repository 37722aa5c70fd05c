"""Choosing, each cycle, the drafter and draft length k that maximise tokens per second.

On a compute-bound CPU verifying n tokens costs far more than one (V(4) is 1.4-2.0x here),
and a layer-skip draft still pays the full output head, so a fixed draft length loses to
plain decoding. The controller therefore decides from measurements taken on the machine
it runs on:

  t_verify(n)   seconds to decode n tokens in one batch with the full model (measured at
                warm-up for n = 1..k_max+1, then refined by every real verify);
  t_step[d]     seconds per model evaluation of drafter d (0 for prompt lookup);
  a_i[s]        the running rate at which source s's i-th draft is accepted once drafts
                1..i-1 were. A source is a drafter, or for prompt lookup the length of the
                matched n-gram (1, 2-3, 4-7, 8+) and whether its earlier occurrences agreed
                on the next token (drafters/prompt_lookup.py): on SmolLM2 the first draft
                is accepted 15% to 95% of the time depending on the source.

A cycle that drafts k tokens from s emits on average E(k) = 1 + sum_j prod_{i<=j} a_i[s]
tokens (accepted drafts + the target's own) and costs k * t_step[d] + t_verify(k+1)
seconds. Plain decoding emits 1 token in t_verify(1). The controller picks the largest
E/cost, including k = 0, and speculates only when it beats plain decoding by `margin`.
The first position's rate enters optimistically (a bonus that shrinks as evidence
accumulates), so an untried source is tried with one draft, the cheapest experiment, and
abandoned once it is measured not to pay.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

EMA = 0.2  # weight of a new timing sample
DECAY = 0.98  # per-cycle forgetting of acceptance counts (adapts to the text at hand)
PRIOR_WEIGHT = 2.0  # observations' worth of weight of an acceptance estimate's prior
EXPLORE = 0.5  # exploration bonus of an untried source's first draft (shrinks as 1/sqrt(n))


def expected_tokens_from_rates(rates: Sequence[float]) -> float:
    """Mean tokens a cycle emits: the target's own token plus each draft reached and accepted."""
    total, p = 1.0, 1.0
    for r in rates:
        p *= r
        total += p
    return total


def expected_tokens(alpha: float, k: int) -> float:
    """E(k) with every draft accepted independently with probability alpha."""
    return expected_tokens_from_rates([alpha] * k)


@dataclass
class Acceptance:
    """Decayed counts, per draft position, of how often it was reached and accepted.

    Position i is reached when drafts 1..i-1 were accepted, so accepted[i] / reached[i] is
    the conditional acceptance the expected length needs. Measured on prompt lookup, these
    differ a lot: a first draft is accepted far less often than one that follows an
    accepted draft (a copy run, once started, tends to continue).
    """

    reached: list[float] = field(default_factory=list)
    accepted: list[float] = field(default_factory=list)

    def observe(self, n_drafted: int, n_accepted: int) -> None:
        self.reached = [r * DECAY for r in self.reached]
        self.accepted = [a * DECAY for a in self.accepted]
        while len(self.reached) < n_drafted:
            self.reached.append(0.0)
            self.accepted.append(0.0)
        for i in range(min(n_drafted, n_accepted + 1)):
            self.reached[i] += 1.0
            self.accepted[i] += 1.0 if i < n_accepted else 0.0

    @property
    def trials(self) -> float:
        """Evidence behind the first position (every cycle reaches it)."""
        return self.reached[0] if self.reached else 0.0

    def rates(self, k: int, *, optimistic: bool = False) -> list[float]:
        """Conditional acceptance of positions 1..k.

        Each estimate shrinks toward the one before it (the first toward 1/2) with the weight
        of PRIOR_WEIGHT observations, so a position with little evidence borrows from its
        neighbour. `optimistic` adds an exploration bonus to the first position only: an
        untried source is then tried with one draft, the cheapest experiment, not k_max.
        """
        out: list[float] = []
        prior = 0.5
        for i in range(k):
            reached = self.reached[i] if i < len(self.reached) else 0.0
            accepted = self.accepted[i] if i < len(self.accepted) else 0.0
            mean = (accepted + PRIOR_WEIGHT * prior) / (reached + PRIOR_WEIGHT)
            rate = mean
            if optimistic and i == 0:
                rate = min(1.0, mean + EXPLORE / math.sqrt(reached + 1.0))
            out.append(rate)
            prior = mean
        return out


@dataclass
class CostModel:
    t_verify: dict[int, float] = field(default_factory=dict)  # n -> seconds
    t_step: dict[str, float] = field(default_factory=dict)  # drafter -> seconds per evaluation

    def observe_verify(self, n: int, seconds: float) -> None:
        old = self.t_verify.get(n)
        self.t_verify[n] = seconds if old is None else (1 - EMA) * old + EMA * seconds

    def observe_step(self, drafter: str, steps: int, seconds: float) -> None:
        if steps <= 0:
            return
        per = seconds / steps
        old = self.t_step.get(drafter)
        self.t_step[drafter] = per if old is None else (1 - EMA) * old + EMA * per

    def verify(self, n: int) -> float:
        """t_verify(n), linearly inter/extrapolated from the measured sizes.

        Never below a smaller batch's cost: verifying more tokens cannot be cheaper, and a
        noisy sample saying otherwise would make long drafts look free.
        """
        floor = max((t for m, t in self.t_verify.items() if m < n), default=0.0)
        return max(floor, self._verify_raw(n))

    def _verify_raw(self, n: int) -> float:
        if n in self.t_verify:
            return self.t_verify[n]
        known = sorted(self.t_verify)
        if not known:
            raise RuntimeError("cost model has no verify timings yet")
        if len(known) == 1:
            return self.t_verify[known[0]] * n / known[0]
        lo = max([m for m in known if m < n], default=known[0])
        hi = min([m for m in known if m > n], default=known[-1])
        if lo == hi:
            lo, hi = known[-2], known[-1]
        slope = (self.t_verify[hi] - self.t_verify[lo]) / (hi - lo)
        return self.t_verify[lo] + slope * (n - lo)

    def relative(self) -> dict[str, object]:
        """c and V(n) relative to one target token, as the notes and the bench report them."""
        if 1 not in self.t_verify:
            return {}
        one = self.t_verify[1]
        return {
            "t_token_ms": one * 1e3,
            "V": {n: t / one for n, t in sorted(self.t_verify.items())},
            "c": {d: t / one for d, t in sorted(self.t_step.items())},
        }

    def calibrate(self, measure: Callable[[int], float], sizes: list[int], *, repeats: int = 1) -> None:
        """Warm-up: time `measure(n)` (seconds to verify n tokens) for each n; keep the minimum.

        The sizes are interleaved across repeats, so a burst of noise spoils one sample of
        several sizes rather than every sample of one size.
        """
        samples: dict[int, list[float]] = {n: [] for n in sizes}
        for _ in range(repeats):
            for n in sizes:
                samples[n].append(measure(n))
        for n, ts in samples.items():
            self.t_verify[n] = min(ts)


@dataclass(frozen=True)
class Candidate:
    drafter: str
    k_cap: int  # the most tokens it may draft now (lookup: what its match offers)
    source: str = ""  # whose acceptance statistics judge it (default: the drafter's own)

    @property
    def key(self) -> str:
        return self.source or self.drafter


@dataclass(frozen=True)
class Decision:
    drafter: str | None  # None: plain decoding
    k: int
    expected_rate: float  # tokens per second the choice is expected to give
    source: str = ""


@dataclass
class Controller:
    k_max: int = 4
    margin: float = 1.05  # speculation must beat plain decoding by this factor (timing noise)
    cost: CostModel = field(default_factory=CostModel)
    acceptance: dict[str, Acceptance] = field(default_factory=dict)

    def observe(self, source: str, n_drafted: int, n_accepted: int) -> None:
        self.acceptance.setdefault(source, Acceptance()).observe(n_drafted, n_accepted)

    def choose(self, candidates: Sequence[Candidate], *, accepted_in_text: int | None = None) -> Decision:
        """The best drafter and k for the next cycle, or plain decoding.

        `accepted_in_text`: drafts accepted so far in the current text. While it is 0, drafts
        are one-token probes: acceptance learned on earlier text is a weak guide to this one,
        and a failed k-token draft wastes V(k+1) - 1 token times (2.2 at k = 4 on SmolLM2
        here), a probe only V(2) - 1. None: no such limit.
        """
        plain = 1.0 / self.cost.verify(1)
        best = Decision(None, 0, plain)
        limit = 1 if accepted_in_text == 0 else self.k_max
        for cand in candidates:
            k_top = min(cand.k_cap, self.k_max, limit)
            if k_top <= 0:
                continue
            rates = self.acceptance.setdefault(cand.key, Acceptance()).rates(k_top, optimistic=True)
            step = self.cost.t_step.get(cand.drafter, 0.0)
            for k in range(1, k_top + 1):
                rate = expected_tokens_from_rates(rates[:k]) / (k * step + self.cost.verify(k + 1))
                if rate > best.expected_rate * (self.margin if best.drafter is None else 1.0):
                    best = Decision(cand.drafter, k, rate, cand.key)
        return best


class Stopwatch:
    """Accumulates wall time of `with` blocks."""

    def __init__(self) -> None:
        self.total = 0.0
        self.last = 0.0

    def __enter__(self) -> Stopwatch:
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.last = time.perf_counter() - self._t0
        self.total += self.last
