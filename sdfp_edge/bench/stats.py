"""The bench's figures, as pure functions of per-run records (no llama.cpp, no timing).

Definitions, written down once:

- decode rate: tokens emitted by the verify cycles after the first one, divided by the
  time from the end of the first cycle (its last token) to the last token. The prompt's
  prefill and the first cycle are left out the same way for every system; counting the
  first cycle's tokens without its time would favour systems that emit bursts.
- ratio to `off`: per prompt, rate(system) / rate(off), from the same interleaved round;
  a system's speedup is the median of these paired ratios, reported with min and max.
- acceptance: accepted draft tokens / drafted tokens, pooled over the prompts.
- tokens per verify: emitted tokens / verify cycles (a plain step counts as a cycle).
- k: draft model evaluations per verify cycle (a confidence stop may spend one more
  evaluation than it drafts); c: one draft evaluation's time relative to one target token,
  as measured on this machine.
- projected speedup on memory-bound hardware: tokens_per_verify / (k * c + 1). It assumes
  that verifying a few tokens costs as much as decoding one (V(n) = 1, as on GPUs where
  decoding is memory-bound) and keeps c as measured. A projection, not a measurement.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class RunRecord:
    """One system on one prompt."""

    prompt_id: str
    category: str
    system: str
    prompt_tokens: int
    tokens: int  # emitted, including a final end-of-generation token
    decode_tokens: int  # tokens of the cycles after the first
    decode_s: float  # end of the first cycle -> last token
    first_s: float  # call -> end of the first cycle (prefill + first cycle)
    total_s: float  # call -> last token
    verifies: int
    drafted: int
    accepted: int
    draft_steps: int
    steps_by_drafter: dict[str, int] = field(default_factory=dict)
    divergence: int | None = None  # first index where the ids differ from off's; None: identical
    engine_tokens_per_second: float | None = None  # the engine's own figure (sdfp systems only)

    @property
    def decode_rate(self) -> float | None:
        return self.decode_tokens / self.decode_s if self.decode_tokens > 0 and self.decode_s > 0 else None

    @property
    def end_to_end_rate(self) -> float | None:
        return self.tokens / self.total_s if self.tokens > 0 and self.total_s > 0 else None


def decode_window(cycles: Sequence[int], times: Sequence[float]) -> tuple[int, float]:
    """Tokens after the first verify cycle, and the time they took.

    Args:
        cycles: [n] the verify cycle that produced each emitted token (non-decreasing).
        times: [n] when each token reached the caller (seconds, any origin).
    Returns:
        (tokens of the later cycles, seconds from the first cycle's last token to the last token).

    Example: cycles [1, 1, 1, 2, 3, 3] at times [1.0, 1.0, 1.0, 1.5, 2.0, 2.0] -> (3, 1.0).
    """
    if len(cycles) != len(times):
        raise ValueError("cycles and times must have the same length")
    if not cycles:
        return 0, 0.0
    first = cycles[0]
    n_first = sum(1 for c in cycles if c == first)
    return len(cycles) - n_first, float(times[-1] - times[n_first - 1])


def first_divergence(a: Sequence[int], b: Sequence[int]) -> int | None:
    """Index of the first position where a and b differ (a length difference counts); None if equal."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


@dataclass(frozen=True)
class Spread:
    median: float
    min: float
    max: float
    n: int


def spread(values: Iterable[float]) -> Spread | None:
    xs = list(values)
    if not xs:
        return None
    return Spread(statistics.median(xs), min(xs), max(xs), len(xs))


def paired_ratios(
    rates: Mapping[str, float | None], base: Mapping[str, float | None]
) -> dict[str, float]:
    """Per key (prompt), rates[key] / base[key], for keys where both are positive."""
    out = {}
    for key, r in rates.items():
        b = base.get(key)
        if r is not None and b is not None and r > 0 and b > 0:
            out[key] = r / b
    return out


def ratio(num: float, den: float) -> float | None:
    return num / den if den > 0 else None


def projected_speedup(tokens_per_verify: float, k_mean: float, c: float) -> float:
    """Speedup over plain decoding if a verify cost one target token: tpv / (k c + 1)."""
    return tokens_per_verify / (k_mean * c + 1.0)


def effective_c(steps_by_drafter: Mapping[str, int], c_by_drafter: Mapping[str, float]) -> float | None:
    """Step-weighted mean draft cost over the drafters used (None if one used has no c)."""
    steps = sum(steps_by_drafter.values())
    if steps == 0:
        return 0.0
    if any(n > 0 and d not in c_by_drafter for d, n in steps_by_drafter.items()):
        return None
    return sum(n * c_by_drafter[d] for d, n in steps_by_drafter.items() if n > 0) / steps


@dataclass
class SummaryRow:
    system: str
    category: str  # a category, or "all"
    prompts: int
    tokens_per_second: Spread | None  # decode rate
    ratio: Spread | None  # paired decode-rate ratio to the base (None for the base itself)
    end_to_end_ratio: Spread | None  # the same with prefill and first cycle included
    acceptance: float | None  # None: nothing drafted
    tokens_per_verify: float | None
    k_mean: float | None
    c: float | None
    projected: float | None
    same_output: float | None  # fraction of prompts with ids identical to the base's (greedy only)

    def as_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        for key in ("tokens_per_second", "ratio", "end_to_end_ratio"):
            s = d[key]
            d[key] = None if s is None else dict(s.__dict__)
        return d


def summarize_group(
    records: Sequence[RunRecord],
    base: Sequence[RunRecord],
    *,
    system: str,
    category: str,
    c_by_drafter: Mapping[str, float],
    is_base: bool,
    compare_ids: bool,
) -> SummaryRow:
    """Figures of one system on one group of prompts, against the base system's runs of them."""
    base_rate = {r.prompt_id: r.decode_rate for r in base}
    base_e2e = {r.prompt_id: r.end_to_end_rate for r in base}
    rates = {r.prompt_id: r.decode_rate for r in records}
    e2e = {r.prompt_id: r.end_to_end_rate for r in records}
    tokens = sum(r.tokens for r in records)
    verifies = sum(r.verifies for r in records)
    drafted = sum(r.drafted for r in records)
    steps = sum(r.draft_steps for r in records)
    steps_by: dict[str, int] = {}
    for r in records:
        for d, n in r.steps_by_drafter.items():
            steps_by[d] = steps_by.get(d, 0) + n
    tpv = ratio(tokens, verifies)
    k_mean = ratio(steps, verifies)
    c = effective_c(steps_by, c_by_drafter)
    projected = projected_speedup(tpv, k_mean, c) if tpv is not None and k_mean is not None and c is not None else None
    return SummaryRow(
        system=system,
        category=category,
        prompts=len(records),
        tokens_per_second=spread(v for v in rates.values() if v is not None),
        ratio=None if is_base else spread(paired_ratios(rates, base_rate).values()),
        end_to_end_ratio=None if is_base else spread(paired_ratios(e2e, base_e2e).values()),
        acceptance=ratio(sum(r.accepted for r in records), drafted),
        tokens_per_verify=tpv,
        k_mean=k_mean,
        c=c,
        projected=projected,
        same_output=(sum(r.divergence is None for r in records) / len(records)
                     if compare_ids and records and not is_base else None),
    )


def summarize(
    records: Sequence[RunRecord],
    *,
    systems: Sequence[str],
    categories: Sequence[str],
    costs: Mapping[str, Mapping[str, float]],
    base: str = "off",
    compare_ids: bool = True,
) -> list[SummaryRow]:
    """Rows per (system, category) and per (system, "all"), in the given orders.

    Args:
        costs: system -> {drafter: c}, the measured relative draft costs.
        compare_ids: report the fraction of outputs identical to the base's (greedy runs).
    """
    rows = []
    for system in systems:
        for cat in [*categories, "all"]:
            group = [r for r in records if r.system == system and cat in ("all", r.category)]
            if not group:
                continue
            base_group = [r for r in records if r.system == base and cat in ("all", r.category)]
            rows.append(summarize_group(group, base_group, system=system, category=cat,
                                        c_by_drafter=costs.get(system, {}), is_base=system == base,
                                        compare_ids=compare_ids))
    return rows
