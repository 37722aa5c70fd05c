"""The bench's figures, as pure functions of per-run records (no llama.cpp, no timing).

Definitions, written down once:

- end-to-end rate: emitted tokens / time from the call to the last token, prefill and
  whatever the system pays on a request included (a process's first request carries its
  warm-up: nothing is run unrecorded before it).
- decode rate: tokens emitted by the verify cycles after the first one, divided by the
  time from the end of the first cycle (its last token) to the last token. The prompt's
  prefill and the first cycle are left out the same way for every system; counting the
  first cycle's tokens without its time would favour systems that emit bursts.
- ratio to a reference (plain llama.cpp `llama-cpp`, the headline; our own `off`): per
  prompt and repeat, rate(system) / rate(reference) from the same interleaved round; a
  system's speedup is the median of these paired ratios, reported with min and max.
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
from typing import Any, TypeVar

Key = TypeVar("Key")


@dataclass
class RunRecord:
    """One system on one prompt, in one repeat."""

    prompt_id: str
    category: str
    system: str
    prompt_tokens: int
    tokens: int  # emitted, including a final end-of-generation token
    decode_tokens: int  # tokens of the cycles after the first
    decode_s: float  # end of the first cycle -> last token
    first_s: float  # call -> end of the first cycle (prefill + first cycle)
    total_s: float  # call -> last token
    verifies: int | None  # None: the system does not report its cycles
    drafted: int
    accepted: int
    draft_steps: int | None  # None: the system does not report its draft model's steps
    steps_by_drafter: dict[str, int] = field(default_factory=dict)
    repeat: int = 0
    first_request: bool = False  # the system process's first generation (its warm-up included)
    divergence: int | None = None  # first index where the ids differ from the base's; None: identical
    system_stats: dict[str, Any] = field(default_factory=dict)  # the system's own figures

    @property
    def key(self) -> tuple[str, int]:
        """What pairs a run with the reference's run: the same prompt in the same round."""
        return self.prompt_id, self.repeat

    @property
    def decode_rate(self) -> float | None:
        return self.decode_tokens / self.decode_s if self.decode_tokens > 0 and self.decode_s > 0 else None

    @property
    def end_to_end_rate(self) -> float | None:
        return self.tokens / self.total_s if self.tokens > 0 and self.total_s > 0 else None


def decode_window(first_cycle: int, times: Sequence[float]) -> tuple[int, float]:
    """Tokens after the first verify cycle, and the time they took.

    Args:
        first_cycle: how many of the emitted tokens the first verify cycle produced.
        times: [n] when each token reached the caller (seconds, any origin).
    Returns:
        (tokens of the later cycles, seconds from the first cycle's last token to the last token).

    Example: first_cycle 3, times [1.0, 1.0, 1.0, 1.5, 2.0, 2.0] -> (3, 1.0).
    """
    if not 0 <= first_cycle <= len(times) or (times and first_cycle == 0):
        raise ValueError(f"first_cycle {first_cycle} does not fit {len(times)} tokens")
    if not times:
        return 0, 0.0
    return len(times) - first_cycle, float(times[-1] - times[first_cycle - 1])


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


def paired_ratios(rates: Mapping[Key, float | None], base: Mapping[Key, float | None]) -> dict[Key, float]:
    """Per key (prompt, repeat), rates[key] / base[key], for keys where both are positive."""
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


def _total(values: Iterable[int | None]) -> int | None:
    """Sum, or None if any value is unknown."""
    xs = list(values)
    return None if any(x is None for x in xs) else sum(x for x in xs if x is not None)


@dataclass
class Ratios:
    """Paired ratios of one system to one reference system."""

    end_to_end: Spread | None
    decode: Spread | None


@dataclass
class SummaryRow:
    system: str
    category: str  # a category, or "all"
    prompts: int
    runs: int  # prompts x repeats
    end_to_end_tokens_per_second: Spread | None
    tokens_per_second: Spread | None  # decode rate
    vs: dict[str, Ratios | None]  # reference system -> ratios (None for the reference itself)
    acceptance: float | None  # None: nothing drafted
    tokens_per_verify: float | None  # None: the system does not report its cycles
    k_mean: float | None
    c: float | None
    projected: float | None
    same_output: float | None  # share of runs with ids identical to the base's (greedy only)

    def as_dict(self) -> dict[str, Any]:
        def plain(x: Any) -> Any:
            return None if x is None else dict(x.__dict__)

        d = dict(self.__dict__)
        d["end_to_end_tokens_per_second"] = plain(self.end_to_end_tokens_per_second)
        d["tokens_per_second"] = plain(self.tokens_per_second)
        d["vs"] = {ref: None if r is None else {"end_to_end": plain(r.end_to_end), "decode": plain(r.decode)}
                   for ref, r in self.vs.items()}
        return d


def ratios_to(records: Sequence[RunRecord], reference: Sequence[RunRecord]) -> Ratios:
    """Paired end-to-end and decode-rate ratios of records to the reference's runs of the same rounds."""
    e2e = paired_ratios({r.key: r.end_to_end_rate for r in records}, {r.key: r.end_to_end_rate for r in reference})
    dec = paired_ratios({r.key: r.decode_rate for r in records}, {r.key: r.decode_rate for r in reference})
    return Ratios(spread(e2e.values()), spread(dec.values()))


def summarize_group(
    records: Sequence[RunRecord],
    references: Mapping[str, Sequence[RunRecord]],
    *,
    system: str,
    category: str,
    c_by_drafter: Mapping[str, float],
    base: str,
    compare_ids: bool,
) -> SummaryRow:
    """Figures of one system on one group of prompts, against each reference system's runs of them."""
    tokens = sum(r.tokens for r in records)
    verifies = _total(r.verifies for r in records)
    drafted = sum(r.drafted for r in records)
    steps = _total(r.draft_steps for r in records)
    steps_by: dict[str, int] = {}
    for r in records:
        for d, n in r.steps_by_drafter.items():
            steps_by[d] = steps_by.get(d, 0) + n
    tpv = None if verifies is None else ratio(tokens, verifies)
    k_mean = None if steps is None or verifies is None else ratio(steps, verifies)
    c = effective_c(steps_by, c_by_drafter)
    projected = projected_speedup(tpv, k_mean, c) if tpv is not None and k_mean is not None and c is not None else None
    return SummaryRow(
        system=system,
        category=category,
        prompts=len({r.prompt_id for r in records}),
        runs=len(records),
        end_to_end_tokens_per_second=spread(v for r in records if (v := r.end_to_end_rate) is not None),
        tokens_per_second=spread(v for r in records if (v := r.decode_rate) is not None),
        vs={ref: None if ref == system else ratios_to(records, runs) for ref, runs in references.items()},
        acceptance=ratio(sum(r.accepted for r in records), drafted),
        tokens_per_verify=tpv,
        k_mean=k_mean,
        c=c,
        projected=projected,
        same_output=(sum(r.divergence is None for r in records) / len(records)
                     if compare_ids and records and system != base else None),
    )


def summarize(
    records: Sequence[RunRecord],
    *,
    systems: Sequence[str],
    categories: Sequence[str],
    costs: Mapping[str, Mapping[str, float]],
    references: Sequence[str],
    compare_ids: bool = True,
) -> list[SummaryRow]:
    """Rows per (system, category) and per (system, "all"), in the given orders.

    Args:
        costs: system -> {drafter: c}, the measured relative draft costs.
        references: the systems every ratio is taken against; the first is the base, whose
            ids the others' are compared with.
        compare_ids: report the share of outputs identical to the base's (greedy runs).
    """
    rows = []
    for system in systems:
        for cat in [*categories, "all"]:
            group = [r for r in records if r.system == system and cat in ("all", r.category)]
            if not group:
                continue
            refs = {ref: [r for r in records if r.system == ref and cat in ("all", r.category)] for ref in references}
            rows.append(summarize_group(group, refs, system=system, category=cat, c_by_drafter=costs.get(system, {}),
                                        base=references[0], compare_ids=compare_ids))
    return rows
