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
- interval: a 95% bootstrap interval of that median (`bootstrap_median`): prompts are
  resampled with replacement, then each drawn prompt's repeats with replacement, and the
  median of the drawn ratios is taken; 2.5th and 97.5th percentiles of BOOTSTRAP_RESAMPLES
  such medians, from a seed fixed per comparison (group_seed). A difference is called ("faster", "slower") only when
  the interval excludes 1.0, from at least MIN_CALL_RUNS ratios over two prompts or more;
  otherwise "parity within noise" (or "too few runs to call").
"""

from __future__ import annotations

import statistics
import zlib
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

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
    position: int | None = None  # 0-based place of this system in its round's order (None: not recorded)
    turns: int = 1  # chat turns summed into this record (multi-turn prompts)

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


# --- the bootstrap interval of a median ratio ---------------------------------------------------------
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
CONFIDENCE = 0.95
FASTER, SLOWER, PARITY, TOO_FEW = "faster", "slower", "parity within noise", "too few runs to call"
MIN_CALL_RUNS = 5  # fewer paired ratios (or a single prompt) give a percentile interval too narrow to trust


@dataclass(frozen=True)
class Interval:
    """The median of paired ratios with its bootstrap interval, and what it allows one to say."""

    median: float
    lo: float
    hi: float
    n: int  # ratios (prompts x repeats)
    prompts: int
    call: str  # FASTER (lo > 1), SLOWER (hi < 1), PARITY, or TOO_FEW


def call(lo: float, hi: float, *, n: int = MIN_CALL_RUNS, prompts: int = 2) -> str:
    """"faster" / "slower" only when the interval [lo, hi] excludes 1.0, and only from at least
    MIN_CALL_RUNS ratios over at least two prompts (else TOO_FEW: with one prompt and two
    repeats, the bootstrap's interval is just the two values)."""
    if n < MIN_CALL_RUNS or prompts < 2:
        return TOO_FEW
    return FASTER if lo > 1.0 else SLOWER if hi < 1.0 else PARITY


def bootstrap_median(
    ratios: Mapping[tuple[Hashable, int], float],
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    confidence: float = CONFIDENCE,
) -> Interval | None:
    """Median of paired ratios and its two-level bootstrap interval (prompts, then repeats).

    Args:
        ratios: {(prompt, repeat): ratio}; a prompt may have any number of repeats.
        resamples: bootstrap draws.
        seed: the generator's seed (the same data and seed give the same interval).
        confidence: coverage of the percentile interval.
    Returns:
        Interval, or None without ratios. Each draw takes P prompts with replacement (P the
        number of prompts), then, for each drawn prompt with R repeats, R of its repeats with
        replacement, and takes the median of the P x R drawn ratios; the interval is the
        central `confidence` share of these medians.

    Example: ratios of 1.3 +- 2% on 8 prompts x 3 repeats give an interval near [1.28, 1.32],
    which excludes 1.0 ("faster"); ratios of 1.0 +- 10% give one that contains it.
    """
    by_prompt: dict[Hashable, list[float]] = {}
    for (prompt, _rep), r in ratios.items():
        by_prompt.setdefault(prompt, []).append(float(r))
    if not by_prompt:
        return None
    rows = list(by_prompt.values())
    n_p, r_max = len(rows), max(len(v) for v in rows)
    table = np.full((n_p, r_max), np.nan)  # [P, R_max] each prompt's ratios, NaN-padded
    for i, v in enumerate(rows):
        table[i, :len(v)] = v
    counts = np.array([len(v) for v in rows])  # [P]
    rng = np.random.default_rng(seed)
    p_idx = rng.integers(0, n_p, size=(resamples, n_p))  # [B, P] drawn prompts
    u = rng.random((resamples, n_p, r_max))  # [B, P, R_max]
    reps = (u * counts[p_idx][..., None]).astype(np.int64)  # a repeat of each drawn prompt
    drawn = table[p_idx[..., None], reps]  # [B, P, R_max]
    drawn[np.arange(r_max) >= counts[p_idx][..., None]] = np.nan  # R draws for a prompt with R repeats
    medians = np.nanmedian(drawn.reshape(resamples, -1), axis=1)  # [B]
    tail = (1.0 - confidence) / 2 * 100
    lo, hi = (float(x) for x in np.percentile(medians, [tail, 100 - tail]))
    point = float(np.median(np.concatenate([np.asarray(v) for v in rows])))
    return Interval(point, lo, hi, int(counts.sum()), n_p, call(lo, hi, n=int(counts.sum()), prompts=n_p))


def group_seed(*names: str) -> int:
    """A fixed seed per comparison (system, reference, category): intervals do not depend on
    which other systems or categories a run had."""
    return zlib.crc32("\x1f".join(names).encode())


@dataclass
class Ratios:
    """Paired ratios of one system to one reference system."""

    end_to_end: Spread | None
    decode: Spread | None
    end_to_end_interval: Interval | None = None
    decode_interval: Interval | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"end_to_end": _plain(self.end_to_end), "decode": _plain(self.decode),
                "end_to_end_interval": _plain(self.end_to_end_interval),
                "decode_interval": _plain(self.decode_interval)}


def _plain(x: Any) -> Any:
    return None if x is None else dict(x.__dict__)


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
        d = dict(self.__dict__)
        d["end_to_end_tokens_per_second"] = _plain(self.end_to_end_tokens_per_second)
        d["tokens_per_second"] = _plain(self.tokens_per_second)
        d["vs"] = {ref: None if r is None else r.as_dict() for ref, r in self.vs.items()}
        return d


def ratios_to(records: Sequence[RunRecord], reference: Sequence[RunRecord], *, seed: int = BOOTSTRAP_SEED) -> Ratios:
    """Paired end-to-end and decode-rate ratios of records to the reference's runs of the same rounds,
    with their bootstrap intervals."""
    e2e = paired_ratios({r.key: r.end_to_end_rate for r in records}, {r.key: r.end_to_end_rate for r in reference})
    dec = paired_ratios({r.key: r.decode_rate for r in records}, {r.key: r.decode_rate for r in reference})
    return Ratios(spread(e2e.values()), spread(dec.values()), bootstrap_median(e2e, seed=seed),
                  bootstrap_median(dec, seed=seed))


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
        vs={ref: None if ref == system else ratios_to(records, runs, seed=group_seed(system, ref, category))
            for ref, runs in references.items()},
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


# --- pairwise comparisons -------------------------------------------------------------------------------
@dataclass
class Comparison:
    """System a against system b on one group of prompts: rate(a) / rate(b), paired per prompt and round."""

    a: str
    b: str
    category: str  # a category, or "all"
    end_to_end: Interval | None
    decode: Interval | None

    def as_dict(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b, "category": self.category, "end_to_end": _plain(self.end_to_end),
                "decode": _plain(self.decode)}


def compare(records: Sequence[RunRecord], a: str, b: str, *, categories: Sequence[str]) -> list[Comparison]:
    """a against b per category and over all prompts (rows only where both ran)."""
    out = []
    for cat in [*categories, "all"]:
        ra = [r for r in records if r.system == a and cat in ("all", r.category)]
        rb = [r for r in records if r.system == b and cat in ("all", r.category)]
        if not ra or not rb:
            continue
        ratios = ratios_to(ra, rb, seed=group_seed(a, b, cat))
        out.append(Comparison(a, b, cat, ratios.end_to_end_interval, ratios.decode_interval))
    return out


def best_of(candidates: Sequence[str], rows: Sequence[SummaryRow], *, base: str) -> str | None:
    """Among `candidates` that ran, the one with the highest overall median end-to-end ratio to base.

    The pick uses the same data as the comparison it feeds, which favours the peer picked
    (a winner's curse that counts against whoever is compared with it)."""
    scored = []
    for row in rows:
        if row.system in candidates and row.category == "all":
            r = row.vs.get(base)
            if r is not None and r.end_to_end is not None:
                scored.append((r.end_to_end.median, row.system))
    return max(scored)[1] if scored else None
