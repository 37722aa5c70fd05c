"""Choosing, each cycle, the drafter and draft length k that maximise tokens per second.

On a compute-bound CPU verifying n tokens costs far more than one (V(4) is 1.4-2.0x here),
and a layer-skip draft still pays the full output head, so a fixed draft length loses to
plain decoding. The controller therefore decides from measurements taken on the machine
it runs on:

  t_verify(n)   seconds to decode n tokens in one batch with the full model (measured at
                warm-up for n = 1..k_max+1, then refined by every real verify);
  t_step[d]     seconds per model evaluation of drafter d (0 for prompt lookup);
  alpha[d]      the running rate at which d's drafted tokens are accepted.

With per-token acceptance alpha, a cycle that drafts k tokens emits on average
E(k) = (1 - alpha^(k+1)) / (1 - alpha) tokens (accepted + the target's own) and costs
k * t_step[d] + t_verify(k+1) seconds. Plain decoding emits 1 token in t_verify(1). The
controller picks the largest E/cost, including k = 0. Acceptance enters optimistically
(an upper confidence bound that shrinks as evidence accumulates), so a drafter is tried
only when it could pay, and abandoned once it is measured not to.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

EMA = 0.2  # weight of a new timing sample
DECAY = 0.98  # per-cycle forgetting of acceptance counts (adapts to the text at hand)


def expected_tokens(alpha: float, k: int) -> float:
    """Mean tokens a cycle emits with k drafts accepted independently with probability alpha."""
    if k == 0:
        return 1.0
    if alpha >= 1.0:
        return float(k + 1)
    return (1.0 - alpha ** (k + 1)) / (1.0 - alpha)


@dataclass
class Acceptance:
    accepted: float = 0.0
    drafted: float = 0.0

    def observe(self, n_drafted: int, n_accepted: int) -> None:
        self.accepted = self.accepted * DECAY + n_accepted
        self.drafted = self.drafted * DECAY + n_drafted

    @property
    def mean(self) -> float:
        return (self.accepted + 1.0) / (self.drafted + 2.0)

    @property
    def optimistic(self) -> float:
        return min(1.0, self.mean + 1.0 / math.sqrt(self.drafted + 1.0))


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
class Decision:
    drafter: str | None  # None: plain decoding
    k: int
    expected_rate: float  # tokens per second the choice is expected to give


@dataclass
class Controller:
    k_max: int = 4
    margin: float = 1.05  # speculation must beat plain decoding by this factor (timing noise)
    cost: CostModel = field(default_factory=CostModel)
    acceptance: dict[str, Acceptance] = field(default_factory=dict)
    decisions: Counter[str] = field(default_factory=Counter)

    def observe(self, drafter: str, n_drafted: int, n_accepted: int) -> None:
        self.acceptance.setdefault(drafter, Acceptance()).observe(n_drafted, n_accepted)

    def choose(self, candidates: dict[str, int]) -> Decision:
        """candidates: drafter -> the most tokens it may draft now (lookup: its match length)."""
        plain = 1.0 / self.cost.verify(1)
        best = Decision(None, 0, plain)
        for name, k_cap in candidates.items():
            acc = self.acceptance.setdefault(name, Acceptance())
            alpha = acc.optimistic
            step = self.cost.t_step.get(name, 0.0)
            for k in range(1, min(k_cap, self.k_max) + 1):
                rate = expected_tokens(alpha, k) / (k * step + self.cost.verify(k + 1))
                if rate > best.expected_rate * (self.margin if best.drafter is None else 1.0):
                    best = Decision(name, k, rate)
        self.decisions[f"{best.drafter or 'plain'}:{best.k}"] += 1
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
