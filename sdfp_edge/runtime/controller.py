"""Choosing, each cycle, the drafter and draft length k that maximise tokens per second.

On a compute-bound CPU verifying n tokens costs far more than one (V(4) is 1.4-2.0x here),
and a layer-skip draft still pays the full output head, so a fixed draft length loses to
plain decoding. The controller therefore decides from measurements taken on the machine
it runs on:

  t_verify(n)   seconds to decode n tokens in one batch with the full model, learned from
                the real verifies (CostModel: no warm-up; measured sizes persist across
                processes, cost_store.py);
  t_step[d]     seconds per model evaluation of drafter d (0 for prompt lookup; before it
                is measured, a prior from the drafter's size);
  a_i[s]        the running rate at which source s's i-th draft is accepted once drafts
                1..i-1 were. A source is a drafter, or for prompt lookup the length of the
                match (1, 2-3, 4-7, ... 64+ tokens) and whether its earlier occurrences
                agreed on the next token (drafters/prompt_lookup.py): the first draft is
                accepted 16% to 100% of the time depending on the source. A lookup draft's
                i-th token continues a match i - 1 tokens longer, so it is judged by that
                longer match's first-draft rate (Candidate.chain).

A cycle that drafts k tokens from s emits on average E(k) = 1 + sum_j prod_{i<=j} a_i[s]
tokens (accepted drafts + the target's own) and costs k * t_step[d] + t_verify(k+1)
seconds. Plain decoding emits 1 token in t_verify(1). The controller picks the largest
E/cost, including k = 0, and speculates only when it beats plain decoding by `margin`.
A source whose acceptance was never measured (a model drafter; any source when sampling)
enters with its first position's rate optimistic (a bonus that shrinks as evidence
accumulates), so it is tried with one draft, the cheapest experiment, and abandoned once it
is measured not to pay. A greedy lookup source starts from its measured rate instead.
"""

from __future__ import annotations

import bisect
import itertools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

EMA = 0.2  # weight of a new timing sample
DECAY = 0.98  # per-cycle forgetting of acceptance counts (adapts to the text at hand)
PRIOR_WEIGHT = 2.0  # observations' worth of weight of an acceptance estimate's prior
EXPLORE = 0.5  # exploration bonus of an untried source's first draft (shrinks as 1/sqrt(n))
UNKNOWN_PRIOR = 0.5  # the first-draft acceptance of a source with no measured prior


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

    def state(self) -> dict[str, list[float]]:
        return {"reached": list(self.reached), "accepted": list(self.accepted)}

    @staticmethod
    def from_state(state: dict[str, Any]) -> Acceptance:
        reached = [float(x) for x in state.get("reached", [])]
        accepted = [float(x) for x in state.get("accepted", [])]
        if len(reached) != len(accepted) or any(a > r + 1e-9 or a < 0 for a, r in zip(accepted, reached)):
            raise ValueError("inconsistent acceptance counts")
        return Acceptance(reached, accepted)

    @property
    def trials(self) -> float:
        """Evidence behind the first position (every cycle reaches it)."""
        return self.reached[0] if self.reached else 0.0

    def rates(self, k: int, *, optimistic: bool = False, prior: float = UNKNOWN_PRIOR) -> list[float]:
        """Conditional acceptance of positions 1..k.

        Each estimate shrinks toward the one before it (the first toward `prior`) with the weight
        of PRIOR_WEIGHT observations, so a position with little evidence borrows from its
        neighbour. `optimistic` adds an exploration bonus to the first position only: an
        untried source is then tried with one draft, the cheapest experiment, not k_cap.
        """
        out: list[float] = []
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


WARM_SAMPLES = 3  # the first decodes of a batch size carry one-off costs: keep their minimum
PRIOR_SMALL_SLOPE = 0.5  # before a size is measured: each of the first extra tokens costs this
SMALL_BATCH = 4  # ... up to this many tokens; beyond, a long batch's per-token cost applies
# Quantized matrix kernels work on tiles of rows: Qwen2.5-Coder-1.5B Q4_K_M verified 16 tokens
# for less than 15 on all four VMs measured and 32 for less than 31 on three (V(15) / V(16) /
# V(17): 6.98 / 5.37 / 6.62 and V(31) / V(32) / V(33): 10.54 / 9.33 / 10.64 on Zen 5;
# models/bench/verify-cost/). An unmeasured multiple of TILE is therefore priced as the
# measured size at most TILE // 2 below it (_verify_from): one verify then says what it costs.
TILE = 16
MIN_PREFILL = 16  # a prompt this long is decoded at prompt-processing speed

# What persists (cost_store.py) must not carry a busy moment into every later run (issue 36:
# V(2) = 3.9 and V(8) = 10.3, stored while two other processes held both cores, kept auto
# from ever drafting again on a quiet machine, and nothing re-measured them). Hence:
CONTENTION = 1.5  # single-token times this far above their recent minimum: the machine is busy
RATIO_WINDOW_S = 5.0  # a verify's ratio to one token counts only with a single-token time this recent
MAX_RATIO = 1.25  # a batch of n above this x n single tokens: a busy moment, not the batch's cost
HALF_LIFE_S = 3 * 86400.0  # stored evidence (sizes' ratios, acceptance counts) halves in weight
FLOOR_MAX_AGE_S = 86400.0  # a stored quiet single-token time older than this defines "quiet" no more
STORED_WEIGHT_CAP = 16.0  # the most samples' worth a stored ratio carries
STORED_FIT_WEIGHT = 2.0  # ... and in the monotone fit, beside this process's own samples
DISAGREE = 1.5  # a fresh quiet ratio this far from the stored one replaces it (no averaging)
RECHECK_S = 300.0  # a size timed longer ago than this counts as untimed again (re-measured)


def _median(xs: Sequence[float]) -> float:
    s = sorted(xs)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else 0.5 * (s[mid - 1] + s[mid])


def _decayed(weight: float, at: float, now: float) -> float:
    return weight * 0.5 ** (max(0.0, now - at) / HALF_LIFE_S)


def _positive(x: Any) -> float:
    v = float(x)
    if not math.isfinite(v) or v <= 0:
        raise ValueError(f"not a positive time or ratio: {x!r}")
    return v


@dataclass
class CostModel:
    """Seconds to verify n tokens and per draft step, learned from the real decodes.

    Nothing is timed up front: plain decoding measures t_verify(1) in its first cycle, each
    verify of n tokens measures t_verify(n), and every prompt of MIN_PREFILL+ tokens gives
    the per-token cost of a long batch (t_batch_token). Sizes not yet measured are
    extrapolated: PRIOR_SMALL_SLOPE x t_verify(1) per extra token (or the slope measured
    between the two largest sizes) up to SMALL_BATCH tokens, t_batch_token per token beyond,
    which matches the measured curve on this CPU (notes: V(32) = 6.7, 0.17-0.19 per token
    from 16 to 64) and is conservative on a GPU until the real verifies correct it. A size
    between two measured ones is interpolated, but priced no higher than the smaller one's
    extrapolation: the optimistic guess gets it tried, and one verify measures it.

    Across processes (state/load_state) only ratios to one token persist, V(n) =
    t_verify(n) / t_verify(1), each from samples taken while the machine was quiet (a
    single-token time of the last RATIO_WINDOW_S within CONTENTION of its recent minimum, and
    the batch no dearer than MAX_RATIO x n single tokens), weighted by age (HALF_LIFE_S). A
    stored size prices drafts at V(n) x this process's t_verify(1) until this process times
    it; the first of its own samples below the stored price replaces it at once, and a stored
    size that contradicts one timed here (dearer than a larger one, cheaper than a smaller
    one) is left out. What a stored state alone says is never final: the controller
    re-measures, now and then, what a fresh process would draft (Controller.choose, explore).
    """

    t_verify: dict[int, float] = field(default_factory=dict)  # n -> seconds (timed or given here)
    t_step: dict[str, float] = field(default_factory=dict)  # drafter -> seconds per evaluation
    t_batch_token: float | None = None  # seconds per token of a long batch (a prompt's prefill)
    samples: dict[int, int] = field(default_factory=dict)  # n -> verifies observed
    stored: dict[int, float] = field(default_factory=dict)  # n -> stored V(n), not yet timed here
    here: dict[int, int] = field(default_factory=dict)  # n -> verifies timed in this process (recently)
    timed_at: dict[int, float] = field(default_factory=dict)  # n -> monotonic time of the last one
    steps_here: set[str] = field(default_factory=set)  # drafters whose step was timed here
    batch_here: bool = False  # whether t_batch_token was measured here
    quiet: dict[int, list[float]] = field(default_factory=dict)  # n -> quiet V(n) samples taken here
    record: dict[str, Any] = field(default_factory=dict)  # the stored state this process started from
    _ones: list[tuple[float, float]] = field(default_factory=list)  # recent (monotonic time, t_verify(1) sample)
    _floor_here: float | None = None  # the lowest single-token time seen here
    _floor_stored: float | None = None  # the stored one, while recent (FLOOR_MAX_AGE_S)

    def observe_verify(self, n: int, seconds: float) -> None:
        now = time.monotonic()
        if self.here.get(n, 0) and now - self.timed_at[n] > RECHECK_S:
            self.here[n] = 0  # re-timed after a long while: its first samples may correct it at once
        seen = self.here.get(n, 0)
        old = self.t_verify.get(n)
        if old is None and n in self.stored and 1 in self.t_verify:
            old = self.stored[n] * self.t_verify[1]
        if old is None:
            self.t_verify[n] = seconds
        elif seen < WARM_SAMPLES:
            self.t_verify[n] = min(old, seconds)
        else:
            self.t_verify[n] = (1 - EMA) * old + EMA * seconds
        self.stored.pop(n, None)
        self.samples[n] = self.samples.get(n, 0) + 1
        self.here[n] = seen + 1
        self.timed_at[n] = now
        self._note_quiet(n, seconds, now)

    def _note_quiet(self, n: int, seconds: float, now: float) -> None:
        """Keep a sample for the store only if it was taken on a quiet machine."""
        if n == 1:
            self._ones = [*self._ones[-7:], (now, seconds)]
            self._floor_here = seconds if self._floor_here is None else min(self._floor_here, seconds)
            return
        recent = [t for at, t in self._ones if now - at <= RATIO_WINDOW_S]
        if not recent or self.contended():
            return
        ratio = seconds / _median(recent)
        if ratio <= MAX_RATIO * n:
            self.quiet[n] = [*self.quiet.get(n, [])[-31:], ratio]

    def floor(self) -> float | None:
        """The lowest single-token time seen recently: here, or stored from a quiet run."""
        known = [t for t in (self._floor_here, self._floor_stored) if t is not None]
        return min(known) if known else None

    def contended(self) -> bool:
        """Whether the recent single-token times run far above their recent minimum (another
        process is using the cores): what is measured now is not this machine's cost."""
        floor = self.floor()
        if floor is None or not self._ones:
            return False
        return _median([t for _, t in self._ones]) > CONTENTION * floor

    def observe_batch(self, n: int, seconds: float) -> None:
        """A prefill of n new tokens (ignored below MIN_PREFILL: not a long batch)."""
        if n < MIN_PREFILL:
            return
        per = seconds / n
        old = self.t_batch_token if self.batch_here else None
        self.t_batch_token = per if old is None else (1 - EMA) * old + EMA * per
        self.batch_here = True

    def observe_step(self, drafter: str, steps: int, seconds: float) -> None:
        if steps <= 0:
            return
        per = seconds / steps
        old = self.t_step.get(drafter)
        self.t_step[drafter] = per if old is None else (1 - EMA) * old + EMA * per
        self.steps_here.add(drafter)

    @property
    def ready(self) -> bool:
        """Whether t_verify(1), the plain-decoding rate everything is weighed against, is known."""
        return 1 in self.t_verify

    def timed_recently(self, n: int) -> bool:
        """Whether this process timed a verify of n tokens in the last RECHECK_S."""
        return self.here.get(n, 0) > 0 and time.monotonic() - self.timed_at[n] <= RECHECK_S

    def verify(self, n: int) -> float:
        """t_verify(n): from the monotone fit of the measured sizes, interpolated or extrapolated."""
        return self.prices()(n)

    def prices(self, *, fresh: bool = False) -> Prices:
        """t_verify(n) for one weighing, each size priced when first asked for. `fresh`: from
        what this process timed only (and t_verify(1)), as a process with no stored state would
        price drafts."""
        fit = self._monotone_fit(self._points(fresh))
        return Prices(self, fit, self.t_batch_token if self.batch_here or not fresh else None)

    def _points(self, fresh: bool = False) -> dict[int, tuple[float, float]]:
        """n -> (seconds, weight) for the fit: the sizes known here, and the stored ones that
        agree with them (none with `fresh`)."""
        if fresh:
            return {n: (t, float(max(1, self.here.get(n, 1)))) for n, t in self.t_verify.items()
                    if n == 1 or self.here.get(n, 0)}
        points = {n: (t, float(max(1, self.samples.get(n, 1)))) for n, t in self.t_verify.items()}
        one = self.t_verify.get(1)
        if one is None or not self.stored:
            return points
        sizes = sorted(points)
        times = [points[n][0] for n in sizes]
        below = list(itertools.accumulate(times, max))  # the dearest size up to each
        above = list(itertools.accumulate(reversed(times), min))[::-1]  # the cheapest from each on
        for n, v in self.stored.items():
            if n in points:
                continue
            t, i = v * one, bisect.bisect_left(sizes, n)  # sizes[:i] < n < sizes[i:]
            if (i < len(sizes) and above[i] < t) or (i > 0 and below[i - 1] > t):
                continue  # contradicted by a size known here: the stored one is stale
            points[n] = (t, STORED_FIT_WEIGHT)
        return points

    @staticmethod
    def _monotone_fit(points: dict[int, tuple[float, float]]) -> dict[int, float]:
        """The measured t_verify made non-decreasing in n: the weighted least-squares monotone
        fit (pool adjacent violators, each size weighted by its samples).

        Verifying more tokens cannot be cheaper, so measurements that say otherwise are noise,
        and a running maximum would let one slow sample of a small size price every larger
        draft out of use, and never be measured again (a persisted file had V(2) = 6.8 from
        4 samples beside V(4) = 3.0). Pooling lets the better-measured side decide.
        """
        sizes = sorted(points)
        times = [points[n][0] for n in sizes]
        if all(a <= b for a, b in zip(times, times[1:])):
            return dict(zip(sizes, times))  # already non-decreasing: the fit is the data
        blocks: list[tuple[float, float, list[int]]] = []  # (weight, weighted sum, sizes)
        for n in sizes:
            t, w = points[n]
            block = (w, w * t, [n])
            while blocks and blocks[-1][1] / blocks[-1][0] > block[1] / block[0]:
                w0, s0, n0 = blocks.pop()
                block = (w0 + block[0], s0 + block[1], n0 + block[2])
            blocks.append(block)
        return {n: total / w for w, total, sizes in blocks for n in sizes}

    def _verify_from(self, fit: dict[int, float], known: list[int], n: int, batch: float | None) -> float:
        if n in fit:
            return fit[n]
        if not known:
            raise RuntimeError("cost model has no verify timings yet")
        i = bisect.bisect_left(known, n)  # known[i - 1] < n < known[i]
        if i and n % TILE == 0 and known[i - 1] >= n - TILE // 2:
            # a tile's size may cost no more than a smaller size near it: priced so, it gets
            # tried, and one verify measures it. Interpolated instead, V(32) between a measured
            # V(27) and V(33) was priced at 10.3 where it is 9.33, so auto drafted 15 tokens at a time
            # through whole copies, where 31 yield 14% more (tools/lookup_replay.py, Zen 5 curve)
            return fit[known[i - 1]]
        if n > known[-1]:
            return self._extrapolate(fit, known[-1], known[-2] if len(known) >= 2 else None, n, batch)
        hi = known[i]
        if i == 0:
            return fit[hi] * n / hi
        lo = known[i - 1]
        between = fit[lo] + (fit[hi] - fit[lo]) * (n - lo) / (hi - lo)
        # no dearer than what the smaller size extrapolates to: sizes are measured only when
        # chosen, and a straight line to a far, costly size (V(8) = 7.3 where V(7) is 5.1 on
        # the EPYC VM, tools/verify_cost.py) would price the sizes between out of use before
        # one was ever tried
        return min(between, self._extrapolate(fit, lo, known[i - 2] if i >= 2 else None, n, batch))

    @staticmethod
    def _extrapolate(fit: dict[int, float], top: int, prev: int | None, n: int, batch: float | None) -> float:
        """Beyond measured size `top` (`prev`: the one below it): its small-batch slope up to
        SMALL_BATCH tokens, a long batch's per-token cost (`batch`) after."""
        if prev is not None:
            small = (fit[top] - fit[prev]) / (top - prev)
        else:
            small = PRIOR_SMALL_SLOPE * fit[top] / top
        big = batch if batch is not None else small
        extra_small = max(0, min(n, SMALL_BATCH) - top)
        return fit[top] + small * extra_small + big * (n - top - extra_small)

    def fresh_is_full(self) -> bool:
        """Whether prices(fresh=True) and step(fresh=True) are exactly the full ones: nothing was
        stored or given, and every timing (samples and their weights) is this process's own.
        Then the controller need not weigh drafts twice per cycle (Controller.choose)."""
        return (not self.stored and not self.record and self.here == self.samples
                and all(n == 1 or self.here.get(n, 0) for n in self.t_verify)
                and self.steps_here.issuperset(self.t_step)
                and (self.batch_here or self.t_batch_token is None))

    def step(self, drafter: str, prior: float, *, fresh: bool = False, one: float | None = None) -> float:
        """t_step of a drafter, or `prior` x t_verify(1) (`one`, when the caller has it) before it
        was ever measured (`fresh`: measured in this process)."""
        t = self.t_step.get(drafter) if drafter in self.steps_here or not fresh else None
        return t if t is not None else prior * (self.verify(1) if one is None else one)

    def state(self, now: float | None = None) -> dict[str, Any]:
        """What is worth keeping across processes (cost_store.py): the stored state this
        process started from, merged with what it measured on a quiet machine.

        t_token      seconds per token of plain decoding on a quiet machine
        floor, floor_at   the lowest single-token time and when (wall clock): "quiet" for later runs
        V, weight, at     per size n: V(n), its samples' worth and when it was last measured
        c            drafter -> its step relative to one token; batch_token: a long batch's token
        """
        now = time.time() if now is None else now
        old = self.record
        busy = self.contended()
        one = self.t_verify.get(1)
        quiet_one = one if one is not None and self.here.get(1, 0) and not busy else None
        fallback = old.get("t_token") or self._floor_here or one  # a busy run's best guess of quiet
        doc: dict[str, Any] = {"t_token": quiet_one if quiet_one is not None else fallback}
        if self._floor_here is not None and not busy:
            doc["floor"], doc["floor_at"] = self._floor_here, now
        elif "floor" in old:
            doc["floor"], doc["floor_at"] = old["floor"], old["floor_at"]
        ratios, weights, ats = dict(old.get("V", {})), dict(old.get("weight", {})), dict(old.get("at", {}))
        for n, xs in self.quiet.items():
            key, r_new, w_new = str(n), _median(xs), float(min(len(xs), STORED_WEIGHT_CAP))
            if key in ratios:
                r_old, w_old = ratios[key], _decayed(weights[key], ats[key], now)
                if abs(math.log(r_new / r_old)) <= math.log(DISAGREE):
                    r_new = (w_old * r_old + w_new * r_new) / (w_old + w_new)
                    w_new = min(STORED_WEIGHT_CAP, w_old + w_new)
            ratios[key], weights[key], ats[key] = r_new, w_new, now
        fresh = {int(n): ratios[str(n)] for n in self.quiet}
        for key in [k for k in ratios if int(k) not in fresh]:  # older sizes that what was measured now contradicts
            n, r = int(key), ratios[key]
            if any((m >= n and v < r) or (m <= n and v > r) for m, v in fresh.items()):
                del ratios[key], weights[key], ats[key]
        doc["V"], doc["weight"], doc["at"] = ratios, weights, ats
        c = dict(old.get("c", {}))
        if quiet_one is not None:
            c.update({d: self.t_step[d] / quiet_one for d in self.steps_here})
        doc["c"] = c
        doc["batch_token"] = (self.t_batch_token / quiet_one if quiet_one is not None and self.batch_here
                              else old.get("batch_token"))
        return doc

    def load_state(self, state: dict[str, Any], now: float | None = None) -> None:
        """Adopt a stored state (raises ValueError, TypeError or AttributeError if malformed).
        Ratios a quiet machine cannot produce (a batch of n dearer than MAX_RATIO x n tokens)
        are dropped."""
        now = time.time() if now is None else now
        one = _positive(state["t_token"])
        ratios = {int(n): _positive(v) for n, v in state.get("V", {}).items()}
        weights = {int(n): _positive(v) for n, v in state.get("weight", {}).items()}
        ats = {int(n): float(v) for n, v in state.get("at", {}).items()}
        if set(weights) != set(ratios) or set(ats) != set(ratios) or any(n < 2 for n in ratios):
            raise ValueError("inconsistent stored sizes")
        c = {str(d): float(v) for d, v in state.get("c", {}).items()}
        if any(not math.isfinite(v) or v < 0 for v in c.values()):
            raise ValueError("negative draft cost")
        batch = state.get("batch_token")
        batch = None if batch is None else _positive(batch)
        floor = state.get("floor")
        if floor is not None:
            floor, floor_at = _positive(floor), float(state["floor_at"])
        kept = [n for n, v in ratios.items() if v <= MAX_RATIO * n and _decayed(weights[n], ats[n], now) >= 0.01]
        self.t_verify, self.samples = {1: one}, {1: int(STORED_FIT_WEIGHT)}
        self.stored = {n: ratios[n] for n in kept}
        self.t_step = {d: v * one for d, v in c.items()}
        self.t_batch_token = None if batch is None else batch * one
        self._floor_stored = floor if floor is not None and now - floor_at <= FLOOR_MAX_AGE_S else None
        self.record = {"t_token": one, "V": {str(n): ratios[n] for n in kept},
                       "weight": {str(n): weights[n] for n in kept},
                       "at": {str(n): ats[n] for n in kept}, "c": c, "batch_token": batch}
        if floor is not None:
            self.record |= {"floor": floor, "floor_at": floor_at}

    def relative(self) -> dict[str, object]:
        """c and V(n) relative to one target token, as the notes and the bench report them
        (sizes timed in this process, and the stored ones that agree with them)."""
        if 1 not in self.t_verify:
            return {}
        one = self.t_verify[1]
        v = {n: t / one for n, (t, _) in self._points().items()}
        return {
            "t_token_ms": one * 1e3,
            "V": dict(sorted(v.items())),
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
                self._note_quiet(n, samples[n][-1], time.monotonic())
        now = time.monotonic()
        for n, ts in samples.items():
            self.t_verify[n] = min(ts)
            self.samples[n] = max(self.samples.get(n, 0), len(ts))
            self.stored.pop(n, None)
            self.here[n], self.timed_at[n] = self.here.get(n, 0) + len(ts), now


class Prices:
    """The cost model's prices for one weighing: the monotone fit made once, a size priced
    when first asked for. The controller weighs a candidate's lengths only until no longer one
    can win, often a few where a lookup chain offers 32; pricing every size up front made
    Controller.choose about a fifth slower (issue 34: the per-cycle Python of `auto`)."""

    __slots__ = ("_model", "_fit", "_known", "_batch", "_memo")

    def __init__(self, model: CostModel, fit: dict[int, float], batch: float | None) -> None:
        self._model, self._fit, self._known, self._batch = model, fit, sorted(fit), batch
        self._memo: dict[int, float] = {}

    def __call__(self, n: int) -> float:
        t = self._memo.get(n)
        if t is None:
            t = self._memo[n] = self._model._verify_from(self._fit, self._known, n, self._batch)
        return t

    def floor_from(self, n: int) -> float:
        """A price no verify of n tokens or more is below (what bounds longer drafts in
        Controller._best). Each size is priced at least at the fit of the largest measured size
        not above it (_verify_from: interpolations, extrapolations and tiles add nothing
        negative), and beyond the largest measured size, where no tile's price can apply,
        extrapolation only rises."""
        known, fit = self._known, self._fit
        top = known[-1]
        if n <= top:
            i = bisect.bisect_right(known, n) - 1
            return fit[known[i]] if i >= 0 else 0.0  # below every measured size: no floor
        if -(-n // TILE) * TILE <= top + TILE // 2:  # a tile's size ahead, priced at fit[top]
            return fit[top]
        return self(n)


def probe_cap(k_cap: int, accepted_in_text: int | None, trusted: bool) -> int:
    """The most drafts a source may offer now: one-token probes while nothing was accepted
    in this text, unless its draft rests on the text itself (see Controller.choose)."""
    return min(k_cap, 1) if accepted_in_text == 0 and not trusted else k_cap


@dataclass(frozen=True)
class Candidate:
    drafter: str
    k_cap: int  # the most tokens it may draft now (lookup: what its match offers)
    source: str = ""  # whose acceptance statistics judge it (default: the drafter's own)
    cost_prior: float = 1.0  # its step's cost relative to t_verify(1) until one is measured
    trusted: bool = False  # its draft rests on the text at hand (Proposal.trusted): no probe first
    # its first draft's acceptance measured before this process saw any (prompt lookup's
    # FIRST_ACCEPTED), or None: unknown, UNKNOWN_PRIOR plus an exploration bonus (Controller.rates)
    prior: float | None = None
    # per draft, the source whose first-draft statistics judge it, and that source's prior
    # (prompt lookup: drafts_judged_by); empty: the source's per-position statistics
    chain: tuple[tuple[str, float | None], ...] = ()

    @property
    def key(self) -> str:
        return self.source or self.drafter

    def chain_sources(self, k: int | None = None) -> tuple[str, ...]:
        """The sources of the first k drafts' chain (all when None): what observe_chain takes."""
        return tuple(source for source, _ in self.chain[:k])


@dataclass(frozen=True)
class Decision:
    drafter: str | None  # None: plain decoding
    k: int
    expected_rate: float  # tokens per second the choice is expected to give
    source: str = ""
    chain: tuple[str, ...] = ()  # the chosen candidate's Candidate.chain sources, k of them
    explore: bool = False  # a re-measurement: what a process without stored state would draft
    plain_rate: float = 0.0  # tokens per second of plain decoding by the same figures


BOUND_SLACK = 1.0 + 1e-9  # _best stops only when a longer draft cannot win by more than rounding
NO_EVIDENCE = Acceptance()  # a source never observed (read only: Acceptance.rates changes nothing)
NEAR = 1.1  # a best choice within this factor of plain decoding is "near break-even"


@dataclass
class Controller:
    margin: float = 1.05  # speculation must beat plain decoding by this factor (timing noise)
    cost: CostModel = field(default_factory=CostModel)
    acceptance: dict[str, Acceptance] = field(default_factory=dict)
    # what this process alone observed: how a process without stored state would judge sources
    fresh: dict[str, Acceptance] = field(default_factory=dict)

    def observe(self, source: str, n_drafted: int, n_accepted: int) -> None:
        for table in (self.acceptance, self.fresh):
            table.setdefault(source, Acceptance()).observe(n_drafted, n_accepted)

    def observe_chain(self, chain: Sequence[str], n_accepted: int) -> None:
        """A chained candidate's verdict: each draft reached counts as a first draft of its
        own source (Candidate.chain)."""
        for i, source in enumerate(chain[: n_accepted + 1]):
            for table in (self.acceptance, self.fresh):
                table.setdefault(source, Acceptance()).observe(1, int(i < n_accepted))

    def rates(self, cand: Candidate, k: int, *, fresh: bool = False) -> list[float]:
        """Conditional acceptance of the candidate's drafts 1..k (`fresh`: from this process's
        observations only).

        A source with no measured prior gets an exploration bonus on its first draft, so it
        is tried once and judged by what it does. One with a measured prior does not: the
        bonus made a fresh process probe sources that the measurements say cannot pay.
        Replayed over 79 greedy Qwen answers at the EPYC VM's V(n) (tools/lookup_replay.py,
        models/bench/replay/), dropping it for them and judging lookup drafts by
        Candidate.chain moved a one-shot process from 0.94-0.99 of plain decoding to
        0.97-1.00 per MT-Bench category, and HumanEval from 1.23x to 1.28x (1.34x to 1.42x
        in a process that served the others first; level at the Xeon VM's flatter V(n)).
        """
        rate = self._rate_of(cand, k, fresh=fresh)
        return [rate(i) for i in range(k)]

    def _rate_of(self, cand: Candidate, k: int, *, fresh: bool = False) -> Callable[[int], float]:
        """Draft i's (0-based, i < k) conditional acceptance, on demand: _best stops weighing
        longer drafts once none can win, and a 32-token lookup chain names only a few sources
        (one per power-of-two match length), each looked up once."""
        table = self.fresh if fresh else self.acceptance

        def judged(source: str, n: int, prior: float | None, first: bool) -> list[float]:
            return table.get(source, NO_EVIDENCE).rates(
                n, optimistic=first and prior is None, prior=UNKNOWN_PRIOR if prior is None else prior)

        if not cand.chain:
            rates = judged(cand.key, k, cand.prior, True)
            return rates.__getitem__
        seen: dict[tuple[str, float | None, bool], float] = {}

        def chained(i: int) -> float:
            source, prior = cand.chain[i]
            key = (source, prior, i == 0)
            if key not in seen:
                seen[key] = judged(source, 1, prior, i == 0)[0]
            return seen[key]

        return chained

    def state(self, now: float | None = None) -> dict[str, Any]:
        now = time.time() if now is None else now
        return {"cost": self.cost.state(now), "saved_at": now,
                "acceptance": {s: a.state() for s, a in self.acceptance.items() if a.reached}}

    def load_state(self, state: dict[str, Any], now: float | None = None) -> None:
        """Adopt what an earlier process measured, its acceptance counts weighted by age
        (HALF_LIFE_S); anything malformed is dropped whole."""
        now = time.time() if now is None else now
        cost, acceptance = CostModel(), {}
        try:
            cost.load_state(state["cost"], now)
            age = _decayed(1.0, float(state.get("saved_at", now)), now)
            for source, a in state.get("acceptance", {}).items():
                counts = Acceptance.from_state(a)
                acceptance[str(source)] = Acceptance([r * age for r in counts.reached],
                                                     [x * age for x in counts.accepted])
        except (AttributeError, KeyError, TypeError, ValueError):
            return
        self.cost, self.acceptance = cost, acceptance

    def choose(self, candidates: Sequence[Candidate], *, accepted_in_text: int | None = None,
               explore: bool = False) -> Decision:
        """The best drafter and k for the next cycle, or plain decoding.

        Plain decoding until t_verify(1) is measured (the first cycle of a cold start).
        `accepted_in_text`: drafts accepted so far in the current text. While it is 0, drafts
        are one-token probes: acceptance learned on earlier text is a weak guide to this one,
        and a failed k-token draft wastes V(k+1) - 1 token times (2.2 at k = 4 on SmolLM2
        here), a probe only V(2) - 1. None: no such limit. A trusted candidate (a long
        agreeing lookup match) is exempt: its evidence is this text, and where V(2) is 1.85
        (Qwen 1.5B on the EPYC VM) a one-token probe pays only at 94% acceptance, so a
        probe-first rule kept auto from drafting a 110-token copy that llama-server's
        ngram-simple took whole.

        `explore` (the caller's budget allows a re-measurement now): when a process without
        stored state (this process's own timings and acceptance only, priors elsewhere) would
        make a draft that the full state expects at or near plain decoding's rate (NEAR), with
        a verify size this process has not timed (recently), that draft is chosen instead
        (Decision.explore); a short draft that pays a little no longer hides a long one. A
        stored curve that prices drafts out therefore cannot keep them out: its sizes get
        timed, and a wrong one is replaced (CostModel). The cost is bounded by what a fresh
        process would have done at that cycle, once per size and per the caller's budget.
        """
        if not self.cost.ready:
            return Decision(None, 0, 0.0)
        caps = [probe_cap(c.k_cap, accepted_in_text, c.trusted) for c in candidates]
        best = self._best(candidates, caps, fresh=False)
        # a process that measured everything it knows would weigh the same figures: the shadow
        # is `best` itself (one of two weighings per cycle; SmolLM2 at 0.7, issue 34)
        if explore and not (self.cost.fresh_is_full() and self.acceptance == self.fresh):
            shadow = self._best(candidates, caps, fresh=True)
            if (shadow.drafter is not None and (shadow.drafter, shadow.k) != (best.drafter, best.k)
                    and not self.cost.timed_recently(shadow.k + 1)):
                cand = next(c for c in candidates if c.drafter == shadow.drafter and c.key == shadow.source)
                # what the stored state expects of that draft: near or below plain decoding
                verify = self.cost.prices()
                expected = expected_tokens_from_rates(self.rates(cand, shadow.k))
                seconds = shadow.k * self.cost.step(cand.drafter, cand.cost_prior, one=verify(1)) + verify(shadow.k + 1)
                if expected / seconds <= NEAR * self.margin * best.plain_rate:
                    return replace(shadow, explore=True)
        return best

    def _best(self, candidates: Sequence[Candidate], caps: Sequence[int], *, fresh: bool) -> Decision:
        verify = self.cost.prices(fresh=fresh)
        one = verify(1)
        plain = 1.0 / one
        best = Decision(None, 0, plain, plain_rate=plain)
        for cand, k_top in zip(candidates, caps):
            if k_top <= 0:
                continue
            rate_of = self._rate_of(cand, k_top, fresh=fresh)
            step = self.cost.step(cand.drafter, cand.cost_prior, fresh=fresh, one=one)
            expected, reach = 1.0, 1.0  # E(k), and the chance that all k drafts are accepted
            for k in range(1, k_top + 1):
                reach *= rate_of(k - 1)
                expected += reach
                rate = expected / (k * step + verify(k + 1))
                bar = best.expected_rate * (self.margin if best.drafter is None else 1.0)
                if rate > bar:
                    best = Decision(cand.drafter, k, rate, cand.key, cand.chain_sources(k), plain_rate=plain)
                    bar = rate
                # no longer draft can win: each adds at most `reach` tokens and costs at least
                # the cheapest longer verify (rates never exceed 1; BOUND_SLACK covers rounding)
                if k < k_top and (expected + reach * (k_top - k)) * BOUND_SLACK <= bar * (
                        (k + 1) * step + verify.floor_from(k + 2)):
                    break
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
