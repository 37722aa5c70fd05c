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
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
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
MIN_PREFILL = 16  # a prompt this long is decoded at prompt-processing speed


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
    """

    t_verify: dict[int, float] = field(default_factory=dict)  # n -> seconds
    t_step: dict[str, float] = field(default_factory=dict)  # drafter -> seconds per evaluation
    t_batch_token: float | None = None  # seconds per token of a long batch (a prompt's prefill)
    samples: dict[int, int] = field(default_factory=dict)  # n -> verifies observed

    def observe_verify(self, n: int, seconds: float) -> None:
        old = self.t_verify.get(n)
        seen = self.samples.get(n, 0)
        if old is None:
            self.t_verify[n] = seconds
        elif seen < WARM_SAMPLES:
            self.t_verify[n] = min(old, seconds)
        else:
            self.t_verify[n] = (1 - EMA) * old + EMA * seconds
        self.samples[n] = seen + 1

    def observe_batch(self, n: int, seconds: float) -> None:
        """A prefill of n new tokens (ignored below MIN_PREFILL: not a long batch)."""
        if n < MIN_PREFILL:
            return
        per = seconds / n
        old = self.t_batch_token
        self.t_batch_token = per if old is None else (1 - EMA) * old + EMA * per

    def observe_step(self, drafter: str, steps: int, seconds: float) -> None:
        if steps <= 0:
            return
        per = seconds / steps
        old = self.t_step.get(drafter)
        self.t_step[drafter] = per if old is None else (1 - EMA) * old + EMA * per

    @property
    def ready(self) -> bool:
        """Whether t_verify(1), the plain-decoding rate everything is weighed against, is known."""
        return 1 in self.t_verify

    def verify(self, n: int) -> float:
        """t_verify(n): from the monotone fit of the measured sizes, interpolated or extrapolated."""
        fit = self._monotone_fit()
        return self._verify_from(fit, sorted(fit), n)

    def curve(self, n_max: int) -> list[float]:
        """[0, verify(1), ..., verify(n_max)], fitting once: the controller weighs every k of
        every candidate each cycle."""
        fit = self._monotone_fit()
        known = sorted(fit)
        return [0.0] + [self._verify_from(fit, known, n) for n in range(1, n_max + 1)]

    def _monotone_fit(self) -> dict[int, float]:
        """The measured t_verify made non-decreasing in n: the weighted least-squares monotone
        fit (pool adjacent violators, each size weighted by its samples).

        Verifying more tokens cannot be cheaper, so measurements that say otherwise are noise,
        and a running maximum would let one slow sample of a small size price every larger
        draft out of use, and never be measured again (a persisted file had V(2) = 6.8 from
        4 samples beside V(4) = 3.0). Pooling lets the better-measured side decide.
        """
        blocks: list[tuple[float, float, list[int]]] = []  # (weight, weighted sum, sizes)
        for n in sorted(self.t_verify):
            w = float(max(1, self.samples.get(n, 1)))
            block = (w, w * self.t_verify[n], [n])
            while blocks and blocks[-1][1] / blocks[-1][0] > block[1] / block[0]:
                w0, s0, n0 = blocks.pop()
                block = (w0 + block[0], s0 + block[1], n0 + block[2])
            blocks.append(block)
        return {n: total / w for w, total, sizes in blocks for n in sizes}

    def _verify_from(self, fit: dict[int, float], known: list[int], n: int) -> float:
        if n in fit:
            return fit[n]
        if not known:
            raise RuntimeError("cost model has no verify timings yet")
        if n > known[-1]:
            return self._extrapolate(fit, known[-1], known[-2] if len(known) >= 2 else None, n)
        i = bisect.bisect_left(known, n)  # known[i - 1] < n < known[i]
        hi = known[i]
        if i == 0:
            return fit[hi] * n / hi
        lo = known[i - 1]
        between = fit[lo] + (fit[hi] - fit[lo]) * (n - lo) / (hi - lo)
        # no dearer than what the smaller size extrapolates to: sizes are measured only when
        # chosen, and a straight line to a far, costly size (V(8) = 7.3 where V(7) is 5.1 on
        # the EPYC VM, tools/verify_cost.py) would price the sizes between out of use before
        # one was ever tried
        return min(between, self._extrapolate(fit, lo, known[i - 2] if i >= 2 else None, n))

    def _extrapolate(self, fit: dict[int, float], top: int, prev: int | None, n: int) -> float:
        """Beyond measured size `top` (`prev`: the one below it): its small-batch slope up to
        SMALL_BATCH tokens, a long batch's per-token cost after."""
        if prev is not None:
            small = (fit[top] - fit[prev]) / (top - prev)
        else:
            small = PRIOR_SMALL_SLOPE * fit[top] / top
        big = self.t_batch_token if self.t_batch_token is not None else small
        extra_small = max(0, min(n, SMALL_BATCH) - top)
        return fit[top] + small * extra_small + big * (n - top - extra_small)

    def step(self, drafter: str, prior: float) -> float:
        """t_step of a drafter, or `prior` x t_verify(1) before it was ever measured."""
        t = self.t_step.get(drafter)
        return t if t is not None else prior * self.verify(1)

    def state(self) -> dict[str, Any]:
        """What is worth keeping across processes (cost_store.py)."""
        return {"t_verify": {str(n): t for n, t in sorted(self.t_verify.items())},
                "samples": {str(n): c for n, c in sorted(self.samples.items())},
                "t_step": dict(self.t_step), "t_batch_token": self.t_batch_token}

    def load_state(self, state: dict[str, Any]) -> None:
        self.t_verify = {int(n): float(t) for n, t in state.get("t_verify", {}).items()}
        self.samples = {int(n): int(c) for n, c in state.get("samples", {}).items()}
        self.t_step = {str(d): float(t) for d, t in state.get("t_step", {}).items()}
        tb = state.get("t_batch_token")
        self.t_batch_token = None if tb is None else float(tb)

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
            self.samples[n] = max(self.samples.get(n, 0), len(ts))


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


@dataclass
class Controller:
    margin: float = 1.05  # speculation must beat plain decoding by this factor (timing noise)
    cost: CostModel = field(default_factory=CostModel)
    acceptance: dict[str, Acceptance] = field(default_factory=dict)

    def observe(self, source: str, n_drafted: int, n_accepted: int) -> None:
        self.acceptance.setdefault(source, Acceptance()).observe(n_drafted, n_accepted)

    def observe_chain(self, chain: Sequence[str], n_accepted: int) -> None:
        """A chained candidate's verdict: each draft reached counts as a first draft of its
        own source (Candidate.chain)."""
        for i, source in enumerate(chain[: n_accepted + 1]):
            self.acceptance.setdefault(source, Acceptance()).observe(1, int(i < n_accepted))

    def rates(self, cand: Candidate, k: int) -> list[float]:
        """Conditional acceptance of the candidate's drafts 1..k.

        A source with no measured prior gets an exploration bonus on its first draft, so it
        is tried once and judged by what it does. One with a measured prior does not: the
        bonus made a fresh process probe sources that the measurements say cannot pay.
        Replayed over 79 greedy Qwen answers at the EPYC VM's V(n) (tools/lookup_replay.py,
        models/bench/replay/), dropping it for them and judging lookup drafts by
        Candidate.chain moved a one-shot process from 0.94-0.99 of plain decoding to
        0.97-1.00 per MT-Bench category, and HumanEval from 1.23x to 1.28x (1.34x to 1.42x
        in a process that served the others first; level at the Xeon VM's flatter V(n)).
        """
        def judged(source: str, n: int, prior: float | None, first: bool) -> list[float]:
            return self.acceptance.setdefault(source, Acceptance()).rates(
                n, optimistic=first and prior is None, prior=UNKNOWN_PRIOR if prior is None else prior)

        if not cand.chain:
            return judged(cand.key, k, cand.prior, True)
        return [judged(source, 1, prior, i == 0)[0] for i, (source, prior) in enumerate(cand.chain[:k])]

    def state(self) -> dict[str, Any]:
        return {"cost": self.cost.state(),
                "acceptance": {s: a.state() for s, a in self.acceptance.items() if a.reached}}

    def load_state(self, state: dict[str, Any]) -> None:
        """Adopt what an earlier process measured; anything malformed is dropped whole."""
        cost, acceptance = CostModel(), {}
        try:
            cost.load_state(state.get("cost", {}))
            for source, a in state.get("acceptance", {}).items():
                acceptance[str(source)] = Acceptance.from_state(a)
        except (AttributeError, TypeError, ValueError):
            return
        self.cost, self.acceptance = cost, acceptance

    def choose(self, candidates: Sequence[Candidate], *, accepted_in_text: int | None = None) -> Decision:
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
        """
        if not self.cost.ready:
            return Decision(None, 0, 0.0)
        caps = [probe_cap(c.k_cap, accepted_in_text, c.trusted) for c in candidates]
        verify = self.cost.curve(max(caps, default=0) + 1)
        best = Decision(None, 0, 1.0 / verify[1])
        for cand, k_top in zip(candidates, caps):
            if k_top <= 0:
                continue
            rates = self.rates(cand, k_top)
            step = self.cost.step(cand.drafter, cand.cost_prior)
            expected, reach = 1.0, 1.0  # E(k), and the chance that all k drafts are accepted
            for k in range(1, k_top + 1):
                reach *= rates[k - 1]
                expected += reach
                rate = expected / (k * step + verify[k + 1])
                if rate > best.expected_rate * (self.margin if best.drafter is None else 1.0):
                    best = Decision(cand.drafter, k, rate, cand.key, cand.chain_sources(k))
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
