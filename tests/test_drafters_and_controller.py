"""Prompt lookup and the controller's cost model (no model needed)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from sdfp_edge.runtime.controller import (
    Acceptance,
    Candidate,
    Controller,
    CostModel,
    expected_tokens,
    expected_tokens_from_rates,
)
from sdfp_edge.runtime.cost_store import CostStore
from sdfp_edge.runtime.drafters import DraftModelDrafter, PromptLookupDrafter
from sdfp_edge.runtime.drafters.prompt_lookup import drafts_judged_by, match_source, prior_acceptance
from sdfp_edge.runtime.engine import GenerationStats, SpeculativeDecoder
from test_logits_processors import DRAFT, PROMPT, TARGET, V, BigramBackend


def test_lookup_docstring_example() -> None:
    d = PromptLookupDrafter(max_ngram=3)
    p = d.propose([5, 6, 7, 8, 9, 5, 6, 7], 2)
    assert p.tokens.tolist() == [8, 9] and p.source == "lookup:2+"  # a 3-token match


def test_lookup_prefers_latest_longest_match_and_caps_k() -> None:
    d = PromptLookupDrafter(max_ngram=2)
    toks = [1, 2, 3, 9, 2, 4, 1, 2, 5, 6, 1, 2]
    # last 2-gram [1, 2] occurs at 0 and 6; the latest earlier one (6) is followed by 5, 6, 1
    assert d.propose(toks, 3).tokens.tolist() == [5, 6, 1]
    assert d.propose(toks, 1).tokens.tolist() == [5]
    assert d.propose([1, 2, 3, 4], 3).k == 0  # no earlier occurrence of anything
    assert d.propose([7], 3).k == 0
    assert d.propose(toks, 0).k == 0
    assert d.propose([4, 8, 9, 8], 2).source == "lookup:1"


def test_lookup_sources_are_power_of_two_buckets_of_the_match_length() -> None:
    assert [match_source(n) for n in (1, 2, 3, 4, 7, 8, 20)] == [
        "lookup:1", "lookup:2+", "lookup:2+", "lookup:4+", "lookup:4+", "lookup:8+", "lookup:16+"]
    long_copy = list(range(100, 120)) + [7] + list(range(100, 110))
    assert PromptLookupDrafter().propose(long_copy, 4).source == "lookup:8+"
    # [5, 6] was followed by 1 and later by 2: the latest continuation, judged as "mixed"
    p = PromptLookupDrafter().propose([5, 6, 1, 5, 6, 2, 5, 6], 1)
    assert p.tokens.tolist() == [2] and p.source == "lookup:2+/mixed"
    assert PromptLookupDrafter().propose([5, 6, 1, 9, 5, 6, 1, 8, 5, 6], 1).source == "lookup:2+"


def test_lookup_measures_a_copy_past_the_indexed_ngram_length() -> None:
    """A copy that has run for 40 tokens is its own source (accepted more often than one of 8)."""
    src = list(range(100, 200))
    assert PromptLookupDrafter().propose(src + [7] + src[:40], 4).source == "lookup:32+"
    assert PromptLookupDrafter().propose(src + [7] + src[:90], 4).source == "lookup:64+"  # measured up to 64
    assert PromptLookupDrafter().propose(src + [7] + src[:12], 4).source == "lookup:8+"
    # the earlier occurrence starts the text: the measure stops there, not at a wrapped index
    p = PromptLookupDrafter().propose(src[:20] + src[:20], 3)
    assert p.source == "lookup:16+" and p.tokens.tolist() == src[:3]
    # a run of one token overlaps its own earlier occurrence
    assert PromptLookupDrafter().propose([3] * 30, 2).source == "lookup:16+"
    assert PromptLookupDrafter().propose(src + [7] + src[:40], 4).match == 40


def test_only_a_long_agreeing_match_is_trusted() -> None:
    src = list(range(100, 140))
    assert PromptLookupDrafter().propose(src + [7] + src[:12], 4).trusted
    short = PromptLookupDrafter().propose(src + [7] + src[:5], 4)
    assert (short.match, short.trusted) == (5, False)
    # the same 8-gram was followed by 1, then by 2: a long match, but not one to trust
    mixed = PromptLookupDrafter().propose(src[:10] + [1] + src[:10] + [2] + src[:10], 4)
    assert mixed.source == "lookup:8+/mixed" and mixed.match == 10 and not mixed.trusted


def test_expected_tokens() -> None:
    assert expected_tokens(0.0, 3) == 1.0
    assert expected_tokens(1.0, 3) == 4.0
    assert expected_tokens(0.5, 2) == pytest.approx(1 + 0.5 + 0.25)
    assert expected_tokens_from_rates([0.5, 1.0, 0.0]) == pytest.approx(1 + 0.5 + 0.5)


def cost(v: dict[int, float], steps: dict[str, float]) -> CostModel:
    return CostModel(t_verify={n: t for n, t in v.items()}, t_step=dict(steps))


CPU = {1: 0.020, 2: 0.028, 3: 0.035, 4: 0.040, 5: 0.050}  # V(n) like SmolLM2 Q4_1 on 2 cores


def seen(n: int, k: int, accepted: int) -> Acceptance:
    a = Acceptance()
    for _ in range(n):
        a.observe(k, accepted)
    return a


def test_a_costly_draft_loses_to_plain_decoding_even_if_always_accepted() -> None:
    c = Controller(cost=cost(CPU, {"layerskip": 0.017}))
    c.acceptance["layerskip"] = seen(200, 4, 4)
    assert c.choose([Candidate("layerskip", 4)]).drafter is None


def test_free_lookup_drafts_win_when_accepted_and_are_dropped_when_not() -> None:
    c = Controller(cost=cost(CPU, {"lookup": 0.0}))
    c.acceptance["lookup:8+"] = seen(100, 4, 4)
    d = c.choose([Candidate("lookup", 4, "lookup:8+")])
    assert (d.drafter, d.source) == ("lookup", "lookup:8+") and d.k >= 3
    c.acceptance["lookup:1"] = seen(100, 1, 0)
    assert c.choose([Candidate("lookup", 4, "lookup:1")]).drafter is None  # judged by its own bucket


def test_an_untried_source_is_explored_with_one_draft_and_only_if_it_could_pay() -> None:
    cheap = Controller(cost=cost({1: 0.02, 2: 0.021, 5: 0.024}, {"layerskip": 0.008}))
    assert cheap.choose([Candidate("layerskip", 4)]).drafter == "layerskip"  # GPU-like V(n): worth a try
    costly = Controller(cost=cost(CPU, {"layerskip": 0.019}))
    assert costly.choose([Candidate("layerskip", 4)]).drafter is None
    fresh = Controller(cost=cost(CPU, {"lookup": 0.0})).choose([Candidate("lookup", 4, "lookup:4+")])
    assert (fresh.drafter, fresh.k) == ("lookup", 1)


def test_acceptance_is_conditional_per_position_and_optimism_shrinks() -> None:
    a = Acceptance()
    assert a.rates(2, optimistic=True)[0] == 1.0 and a.rates(2) == [0.5, 0.5]
    for i in range(200):  # first draft accepted 1 time in 4; once started, the run continues
        a.observe(3, 3 if i % 4 == 0 else 0)
    r = a.rates(3)
    assert r[0] == pytest.approx(0.25, abs=0.05) and r[1] > 0.85 and r[2] > 0.85
    assert a.rates(1, optimistic=True)[0] - r[0] < 0.15
    # an unreached position borrows from the one before it
    assert Acceptance(reached=[10.0], accepted=[9.0]).rates(2)[1] == pytest.approx(
        Acceptance(reached=[10.0], accepted=[9.0]).rates(1)[0])


def curve(m: CostModel, n_max: int, *, fresh: bool = False) -> list[float]:
    """[0, t_verify(1), ..., t_verify(n_max)] from one weighing's prices: every size priced up front,
    the reference the controller's early stop is checked against."""
    price = m.prices(fresh=fresh)
    return [0.0] + [price(n) for n in range(1, n_max + 1)]


def test_the_cost_curve_equals_verify_at_every_size() -> None:
    rng = np.random.default_rng(1)
    for _ in range(200):  # noisy measurements, some of a larger batch cheaper than a smaller one
        sizes = rng.choice(np.arange(1, 40), size=int(rng.integers(1, 8)), replace=False)
        m = CostModel(t_verify={int(n): float(rng.uniform(0.01, 0.2)) for n in sizes} | {1: 0.02},
                      t_batch_token=None if rng.random() < 0.3 else float(rng.uniform(0.001, 0.02)))
        assert curve(m, 48) == [0.0] + [m.verify(n) for n in range(1, 49)]


def test_no_verify_is_priced_below_the_floor_that_bounds_longer_drafts() -> None:
    """Controller._best stops weighing longer drafts at Prices.floor_from(n): no size from n on
    may be priced below it, tiles (16, 32, 48) near a measured size included, or a longer draft
    that pays would go unweighed."""
    rng = np.random.default_rng(3)
    tiles_seen = 0
    for _ in range(300):
        sizes = {int(n) for n in rng.choice(np.arange(2, 52), size=int(rng.integers(1, 8)), replace=False)}
        m = CostModel(t_verify={n: float(rng.uniform(0.01, 0.2)) for n in sizes} | {1: 0.02},
                      t_batch_token=None if rng.random() < 0.3 else float(rng.uniform(0.001, 0.02)))
        price, tail = m.prices(), curve(m, 80)
        for n in range(1, 80):
            assert price.floor_from(n) <= min(tail[n:]), (sorted(sizes), n)
        tiles_seen += any(t not in sizes and tail[t] < tail[t - 1] for t in (16, 32, 48))
    assert tiles_seen > 10  # the cases include tiles priced below the size before them


def test_verify_cost_interpolates() -> None:
    m = cost({1: 1.0, 3: 2.0}, {})
    assert m.verify(2) == pytest.approx(1.5)
    assert m.verify(5) == pytest.approx(3.0)


def test_a_noisy_cheap_long_verify_does_not_make_long_drafts_free() -> None:
    m = CostModel(t_verify={1: 0.020, 2: 0.040, 5: 0.021}, samples={1: 50, 2: 10, 5: 1})  # V(5): noise
    assert m.verify(5) == pytest.approx((10 * 0.040 + 0.021) / 11)  # pooled, weighted by samples
    assert m.verify(1) == 0.020 and m.verify(2) <= m.verify(3) <= m.verify(5)


def test_one_slow_sample_of_a_small_size_does_not_price_longer_drafts_out() -> None:
    # as in a persisted cost file: V(2) = 6.8 from one slow sample, V(4) = 2.97 well measured
    cm = CostModel(t_verify={1: 0.020, 2: 0.136, 4: 0.0594}, samples={1: 3000, 2: 1, 4: 50})
    assert cm.verify(2) == cm.verify(4) == pytest.approx((0.136 + 50 * 0.0594) / 51)
    c = Controller(cost=cm)
    c.acceptance["lookup:16+"] = seen(100, 8, 8)
    d = c.choose([Candidate("lookup", 3, "lookup:16+", cost_prior=0.0)], accepted_in_text=5)
    assert (d.drafter, d.k) == ("lookup", 3)  # a running maximum priced V(4) at V(2): plain decoding


def test_the_monotone_fit_is_the_best_non_decreasing_one() -> None:
    rng = np.random.default_rng(2)
    for _ in range(200):
        sizes = sorted(int(n) for n in rng.choice(np.arange(1, 40), size=int(rng.integers(1, 9)), replace=False))
        m = CostModel(t_verify={n: float(rng.uniform(0.01, 0.2)) for n in sizes},
                      samples={n: int(rng.integers(1, 30)) for n in sizes})
        fit = [m.verify(n) for n in sizes]
        assert all(a <= b + 1e-12 for a, b in zip(fit, fit[1:]))
        w = np.array([m.samples[n] for n in sizes], float)
        y = np.array([m.t_verify[n] for n in sizes])
        sse = float(w @ (np.array(fit) - y) ** 2)
        for _ in range(20):  # no other non-decreasing sequence fits the samples better
            other = np.sort(np.array(fit) + rng.normal(0, 0.01, len(fit)))
            assert float(w @ (other - y) ** 2) >= sse - 1e-12


def reference_lookup(tokens: list[int], k: int, max_ngram: int) -> list[int]:
    """The definition, by brute force: the latest earlier occurrence of the longest suffix."""
    for n in range(min(max_ngram, len(tokens) - 1), 0, -1):
        suffix = tokens[len(tokens) - n:]
        for start in range(len(tokens) - 1 - n, -1, -1):
            if tokens[start:start + n] == suffix:
                return tokens[start + n:start + n + k]
    return []


def test_lookup_index_matches_the_definition_as_text_grows_and_changes() -> None:
    rng = np.random.default_rng(0)
    d = PromptLookupDrafter(max_ngram=4)
    for trial in range(30):
        text = rng.integers(0, 6, size=int(rng.integers(1, 12))).tolist()
        if trial % 3 == 0 and d._text:  # sometimes continue the text the index has seen
            text = d._text + text
        for _ in range(40):
            k = int(rng.integers(1, 5))
            assert d.propose(text, k).tokens.tolist() == reference_lookup(text, k, 4), text
            text.append(int(rng.integers(0, 6)))


def test_a_new_text_drafts_one_token_probes_until_a_draft_is_accepted() -> None:
    c = Controller(cost=cost(CPU, {"lookup": 0.0}))
    c.acceptance["lookup:8+"] = seen(100, 4, 4)  # earlier text: long runs always accepted
    assert c.choose([Candidate("lookup", 4, "lookup:8+")], accepted_in_text=0).k == 1
    assert c.choose([Candidate("lookup", 4, "lookup:8+")], accepted_in_text=1).k >= 3


def test_a_trusted_match_drafts_long_in_a_new_text_where_a_probe_would_not_pay() -> None:
    # V(n) of Qwen 1.5B on the EPYC VM (bench, 2026-12-01): a one-token probe pays only at 94%
    v = {1: 1.0, 2: 1.85, 3: 2.68, 4: 2.91, 5: 3.77, 6: 3.90, 9: 6.70, 16: 8.49, 33: 19.98}
    cm = CostModel(t_verify={n: 0.12 * x for n, x in v.items()}, samples={n: 10 for n in v})
    c = Controller(cost=cm)
    c.acceptance["lookup:16+"] = Acceptance(reached=[100.0] * 32, accepted=[94.0] + [99.0] * 31)
    probe = c.choose([Candidate("lookup", 32, "lookup:16+", cost_prior=0.0)], accepted_in_text=0)
    whole = c.choose([Candidate("lookup", 32, "lookup:16+", cost_prior=0.0, trusted=True)], accepted_in_text=0)
    assert probe.k == 1 and whole.k >= 8
    assert whole.expected_rate > 1.5 * probe.expected_rate


def test_an_unseen_source_is_judged_by_its_measured_first_draft_acceptance() -> None:
    # V(2) = 1.58 (Qwen 1.5B, EPYC VM): a one-token draft pays above 58% acceptance; a
    # 1-token match's first draft is accepted 31% of the time, a 16-token match's 95%
    t1 = 0.108
    cm = CostModel(t_verify={1: t1, 2: 1.58 * t1, 3: 2.27 * t1}, samples={1: 100, 2: 10, 3: 10})
    c = Controller(cost=cm)
    short = Candidate("lookup", 1, "lookup:1", cost_prior=0.0, prior=prior_acceptance("lookup:1"))
    assert c.choose([short], accepted_in_text=3).drafter is None  # measured not to pay: not even probed
    unknown = replace(short, source="lookup:new", prior=None)  # no measured prior: explored once
    assert c.choose([unknown], accepted_in_text=3).drafter == "lookup"
    c.observe("lookup:new", 1, 0)
    c.observe("lookup:new", 1, 0)
    assert c.choose([unknown], accepted_in_text=3).drafter is None  # until its failures settle it
    long = Candidate("lookup", 2, "lookup:16+", cost_prior=0.0, prior=prior_acceptance("lookup:16+"))
    assert c.choose([long], accepted_in_text=3).k == 2
    assert prior_acceptance("lookup:unknown") is None
    # sampled: the same prior (optimistic: sampled drafts were accepted less), no exploration bonus
    sampled = replace(short, source="lookup:1~sampled:t0.7")
    assert c.choose([sampled], accepted_in_text=3).drafter is None


def test_each_lookup_draft_is_judged_as_the_first_draft_of_the_match_it_continues() -> None:
    # draft i + 1 is reached only if drafts 1..i were accepted, and then continues a match
    # of match + i tokens (tools/lookup_replay.py: measured within 0.03 of this on Qwen)
    p = PromptLookupDrafter().propose([1, 2, 3, 4, 5, 6, 7, 8, 9, 1, 2, 3], 8)
    assert (p.match, p.source, p.k) == (3, "lookup:2+", 8)
    chain = drafts_judged_by(p)
    assert [s for s, _ in chain] == ["lookup:2+", *["lookup:4+"] * 4, *["lookup:8+"] * 3]
    assert chain[0][1] == prior_acceptance("lookup:2+") and chain[-1][1] == prior_acceptance("lookup:8+")
    assert drafts_judged_by(p, regime="~sampled")[:2] == (("lookup:2+~sampled", prior_acceptance("lookup:2+")),
                                                          ("lookup:4+~sampled", prior_acceptance("lookup:4+")))
    assert drafts_judged_by(PromptLookupDrafter().propose([1, 2, 3], 4)) == ()  # nothing to draft
    c = Controller(cost=cost(CPU, {"lookup": 0.0}))
    c.observe_chain([s for s, _ in chain], 2)  # the first two accepted, the third rejected
    assert c.acceptance["lookup:2+"].trials == 1.0 and c.acceptance["lookup:2+"].accepted == [1.0]
    four = c.acceptance["lookup:4+"]  # reached twice (the first decayed once), accepted once
    assert four.reached == pytest.approx([0.98 + 1]) and four.accepted == pytest.approx([0.98])
    assert "lookup:8+" not in c.acceptance  # never reached
    cand = Candidate("lookup", 8, chain[0][0], cost_prior=0.0, prior=chain[0][1], chain=chain)
    rates = c.rates(cand, 8)
    assert rates[0] == pytest.approx((1 + 2 * 0.60) / 3) and rates[1] == pytest.approx((0.98 + 2 * 0.74) / 3.98)
    assert rates[5:] == [prior_acceptance("lookup:8+")] * 3


# --- learning costs from real cycles, keeping them across processes ---------------------------
def test_a_cold_controller_decodes_plainly_until_one_token_is_timed() -> None:
    c = Controller()
    assert c.choose([Candidate("lookup", 8, "lookup:8+", cost_prior=0.0)]).drafter is None
    c.cost.observe_verify(1, 0.020)
    assert c.choose([Candidate("lookup", 8, "lookup:8+", cost_prior=0.0)]).drafter == "lookup"


def test_the_first_samples_of_a_size_keep_their_minimum_then_average() -> None:
    cm = CostModel()
    for t in (0.050, 0.020, 0.030):  # the first decode of a shape pays one-off costs
        cm.observe_verify(2, t)
    assert cm.t_verify[2] == 0.020
    cm.observe_verify(2, 0.030)
    assert cm.t_verify[2] == pytest.approx(0.8 * 0.020 + 0.2 * 0.030)


def test_unmeasured_sizes_extrapolate_from_a_long_batch_cost_and_measured_ones_win() -> None:
    cm = CostModel()
    cm.observe_verify(1, 0.060)
    cm.observe_batch(8, 0.4)  # too short to be a prompt-processing sample
    assert cm.t_batch_token is None
    cm.observe_batch(100, 1.2)  # 12 ms per token: Qwen 1.5B's prompt speed here
    v = {n: cm.verify(n) / 0.060 for n in (2, 4, 8, 32)}
    assert v[2] == pytest.approx(1.5) and v[4] == pytest.approx(2.5)
    assert v[32] == pytest.approx(2.5 + 28 * 0.2)
    assert all(cm.verify(n + 1) >= cm.verify(n) for n in range(1, 40))
    cm.observe_verify(8, 0.060 * 3.23)  # measured: V(8) = 3.23 (notes)
    assert cm.verify(8) / 0.060 == pytest.approx(3.23)
    assert cm.verify(6) / 0.060 == pytest.approx(1 + 5 * (3.23 - 1) / 7)  # between the measured 1 and 8


def test_long_trusted_lookup_matches_draft_long_on_a_prompt_speed_cost_curve() -> None:
    cm = CostModel()
    for n, v in {1: 1.0, 2: 1.58, 4: 1.78, 8: 3.23, 16: 3.96, 32: 6.71}.items():  # Qwen 1.5B here
        cm.observe_verify(n, 0.060 * v)
    c = Controller(cost=cm)
    c.acceptance["lookup:8+"] = seen(100, 32, 32)
    d = c.choose([Candidate("lookup", 32, "lookup:8+", cost_prior=0.0)], accepted_in_text=5)
    assert d.k >= 16
    c.acceptance["lookup:1"] = seen(100, 4, 0)  # a source that is never accepted is not drafted
    assert c.choose([Candidate("lookup", 32, "lookup:1", cost_prior=0.0)], accepted_in_text=5).drafter is None


def test_a_size_between_measured_ones_is_tried_before_a_costly_neighbour_prices_it_out() -> None:
    # V(n) of Qwen 1.5B on the EPYC VM (tools/verify_cost.py, models/bench/verify-cost/):
    # V(7) = 5.08 but V(8) = 7.25, so a straight line from V(4) to V(8) priced V(7) at 6.19
    # and a 7-token copy was drafted 3 at a time, never measuring 5..7
    t1 = 0.108
    cm = CostModel(t_verify={n: t1 * v for n, v in {1: 1.0, 2: 1.58, 3: 2.27, 4: 3.00, 8: 7.25}.items()},
                   samples={1: 100, 2: 10, 3: 10, 4: 10, 8: 10}, t_batch_token=0.47 * t1)  # prefill rate
    assert cm.verify(7) == pytest.approx(t1 * (3.00 + 3 * 0.47))  # the extrapolation from V(4)
    assert all(cm.verify(n) <= cm.verify(n + 1) for n in range(1, 12))
    c = Controller(cost=cm)
    c.acceptance["lookup:8+"] = seen(100, 7, 7)
    copy = [Candidate("lookup", 7, "lookup:8+", cost_prior=0.0, trusted=True)]
    assert c.choose(copy, accepted_in_text=5).k == 6
    for n, v in {5: 3.70, 6: 4.34, 7: 5.08}.items():  # measured: they pay
        cm.observe_verify(n, t1 * v)
    assert c.choose(copy, accepted_in_text=5).k >= 5
    for n in (5, 6, 7):  # had they been dear, the measurements say so
        cm.t_verify[n] = t1 * (3.00 + n - 4)
    assert c.choose(copy, accepted_in_text=5).k == 3


def test_an_unmeasured_tile_size_near_a_measured_one_is_tried() -> None:
    # V(n) of Qwen2.5-Coder-1.5B Q4_K_M on the Zen 5 VM (models/bench/verify-cost/), at the sizes a
    # replayed process had timed: V(32) = 9.33 lies below the line from V(27) to V(33)
    t1 = 0.026
    zen5 = {1: 1.0, 2: 1.68, 3: 2.17, 8: 4.52, 9: 4.93, 13: 6.10, 16: 5.37, 17: 6.62, 27: 8.88, 33: 10.64}
    cm = CostModel(t_verify={n: t1 * v for n, v in zen5.items()}, samples=dict.fromkeys(zen5, 10),
                   t_batch_token=0.28 * t1)
    assert cm.verify(32) == pytest.approx(t1 * 8.88)  # the measured size at most TILE // 2 below
    assert cm.verify(31) > cm.verify(32)  # other sizes between are interpolated as before
    assert cm.verify(48) > cm.verify(33)  # no measured size within 8 below 48: extrapolated
    assert CostModel(t_verify={1: t1, 2: 1.68 * t1}).verify(16) > 1.68 * t1  # nor below 16
    c = Controller(cost=cm)
    c.acceptance["lookup:64+"] = seen(100, 1, 1)
    copy = [Candidate("lookup", 32, "lookup:64+", cost_prior=0.0, trusted=True)]
    assert c.choose(copy, accepted_in_text=5).k == 31  # a batch of 32: tried, so measured
    cm.observe_verify(32, t1 * 9.33)  # measured: it pays
    assert c.choose(copy, accepted_in_text=5).k == 31
    cm.t_verify[32] = t1 * 10.9  # had it been dear, the measurement says so
    assert c.choose(copy, accepted_in_text=5).k == 15


def test_one_off_drafting_work_is_counted_but_kept_out_of_the_step_cost() -> None:
    """A draft model's catch-up on the prompt, the small head's build and a drafter's first
    steps in a process (its graph) are not what a step costs: a c that carried them (the
    small head alone took 340 ms, nine of Qwen 1.5B's tokens) would price the drafter out
    for the rest of the process. They stay in the call's time."""
    drafter = DraftModelDrafter(BigramBackend(DRAFT), target_vocab=V, threshold=0.0)  # type: ignore[arg-type]
    real_prepare, real_propose = drafter.prepare, drafter.propose
    calls = {"prepare": 0, "propose": 0}

    def prepare(tokens):
        time.sleep(0.2 if calls["prepare"] == 0 else 0.0)
        calls["prepare"] += 1
        real_prepare(tokens)

    def propose(*args, **kwargs):
        time.sleep(0.1 if calls["propose"] == 0 else 0.0)
        calls["propose"] += 1
        return real_propose(*args, **kwargs)

    drafter.prepare, drafter.propose = prepare, propose  # type: ignore[method-assign]
    dec = SpeculativeDecoder(BigramBackend(TARGET), [drafter], mode="draft-model", k_max=3)  # type: ignore[arg-type]
    dec.controller.cost.observe_verify(1, 0.001)  # measured: the forced mode drafts at once
    stats = GenerationStats()
    list(dec.generate(PROMPT, max_tokens=12, stats=stats))
    assert calls["propose"] >= 3 and stats.draft_steps >= 3
    assert dec.controller.cost.t_step["draft-model"] < 0.01  # the later steps: microseconds
    assert stats.t_draft >= 0.3


def test_an_unmeasured_model_drafter_is_judged_by_its_cost_prior() -> None:
    cm = CostModel(t_verify={1: 0.020, 2: 0.021, 3: 0.022})  # GPU-like V(n)
    cheap = Controller(cost=cm).choose([Candidate("layerskip", 2, cost_prior=0.3)])
    assert cheap.drafter == "layerskip"
    assert Controller(cost=cm).choose([Candidate("layerskip", 2, cost_prior=0.95)]).drafter is None


def test_controller_state_round_trips_and_a_damaged_state_is_dropped() -> None:
    c = Controller()
    for n, t in [(1, 0.020), (1, 0.020), (2, 0.028), (4, 0.040), (1, 0.020)]:  # a quiet machine
        c.cost.observe_verify(n, t)
    c.cost.observe_step("layerskip", 1, 0.017)
    c.cost.observe_batch(64, 0.3)
    c.observe("lookup:2+", 3, 2)
    again = Controller()
    again.load_state(json.loads(json.dumps(c.state())))
    # stored as ratios to one token: the sizes price drafts as before, at this process's t_verify(1)
    assert again.cost.t_verify == {1: 0.020} and again.cost.stored == pytest.approx({2: 1.4, 4: 2.0})
    assert [again.cost.verify(n) for n in (1, 2, 3, 4, 8)] == pytest.approx([c.cost.verify(n) for n in (1, 2, 3, 4, 8)])
    assert again.cost.t_step == pytest.approx(c.cost.t_step)
    assert again.cost.t_batch_token == pytest.approx(c.cost.t_batch_token)
    assert again.acceptance["lookup:2+"].rates(3) == pytest.approx(c.acceptance["lookup:2+"].rates(3))
    broken = c.state()
    broken["acceptance"]["lookup:2+"] = {"reached": [1.0], "accepted": [5.0]}
    again = Controller()
    again.load_state(broken)
    assert not again.cost.ready and not again.acceptance
    again.load_state({"cost": {"t_verify": {"x": 1}}})
    assert not again.cost.ready


def test_cost_store_round_trip_identity_and_damage(tmp_path: Path) -> None:
    a = CostStore({"model": ["m.gguf", 1, 2], "n_threads": 2}, tmp_path)
    assert a.load() is None
    a.save({"cost": {"t_verify": {"1": 0.02}}})
    assert a.load() == {"cost": {"t_verify": {"1": 0.02}}}
    other = CostStore({"model": ["m.gguf", 1, 2], "n_threads": 4}, tmp_path)
    assert other.path != a.path and other.load() is None
    a.path.write_text("{not json")
    assert a.load() is None
    a.path.write_text(json.dumps({"schema": "something-else", "state": {}}))
    assert a.load() is None
    blocked = tmp_path / "file"
    blocked.write_text("")
    CostStore({"x": 1}, blocked / "costs").save({"cost": {}})  # cannot be written: ignored
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".costs-")] == []


def test_stored_costs_name_the_libraries_llama_cpp_loaded(tmp_path: Path) -> None:
    """A build loaded through LLAMA_CPP_LIB_PATH (e.g. a Vulkan libllama beside the CPU wheel)
    has costs of its own: the identity lists that folder's libraries, not the wheel's."""
    import llama_cpp

    wheel_libs = Path(llama_cpp.__file__).parent / "lib"
    other = tmp_path / "other-build"
    shutil.copytree(wheel_libs, other, symlinks=True)
    (other / "libextra.so").write_bytes(b"")  # a file only this folder has
    code = ("import json; from sdfp_edge.runtime.backend import runtime_identity; "
            "print(json.dumps(runtime_identity()['libs']))")

    def libs(env_extra: dict) -> list:
        env = {k: v for k, v in os.environ.items() if k != "LLAMA_CPP_LIB_PATH"} | env_extra
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        return [name for name, *_ in json.loads(out.stdout.splitlines()[-1])]

    assert "libextra.so" not in libs({})
    assert "libextra.so" in libs({"LLAMA_CPP_LIB_PATH": str(other)})


def test_layer_skip_candidates_from_the_gguf_scores() -> None:
    from sdfp_edge.runtime.drafters.skip_layers import layer_skip_candidates
    from sdfp_edge.runtime.layer_skip import DraftMask
    from sdfp_edge.metadata import SkipMetadata

    scores = tuple(float(x) for x in [9, 1, 5, 2, 8, 3, 7, 4, 6, 0.5, 9, 9])  # 12 layers
    meta = SkipMetadata("qwen2", 12, (1, 3), layer_scores=scores, skip_attn=(2, 4), skip_ffn=(5,))
    got = layer_skip_candidates((1, 3), meta, small_head=True)
    assert got["layerskip"] == DraftMask.layers((1, 3), small_head=True)
    assert got["layerskip-deep"] == DraftMask.layers((1, 3, 5, 9), small_head=True)  # 2 x 2, <= 12 // 3
    assert got["layerskip-blocks"] == DraftMask((2, 4), (5,), True)
    # a list from the command line is exactly that draft
    assert layer_skip_candidates((6,), None, small_head=False) == {"layerskip": DraftMask.layers((6,))}
    # nothing deeper to add when the list already holds a third of the layers; no block keys
    few = SkipMetadata("qwen2", 12, (1, 3, 5, 9), layer_scores=scores)
    assert set(layer_skip_candidates((1, 3, 5, 9), few, small_head=False)) == {"layerskip"}


def exhaustive_best(c: Controller, candidates: list[Candidate], caps: list[int], fresh: bool) -> tuple:
    """The controller's rule weighed at every k of every candidate (what _best's early stop
    must reproduce): the largest E(k) / cost, plain decoding unless a draft beats it by the margin."""
    verify = curve(c.cost, max(caps, default=0) + 1, fresh=fresh)
    best, bar_rate = (None, 0), 1.0 / verify[1]
    for cand, k_top in zip(candidates, caps):
        if k_top <= 0:
            continue
        rates = c.rates(cand, k_top, fresh=fresh)
        step = c.cost.step(cand.drafter, cand.cost_prior, fresh=fresh, one=verify[1])
        for k in range(1, k_top + 1):
            rate = expected_tokens_from_rates(rates[:k]) / (k * step + verify[k + 1])
            if rate > bar_rate * (c.margin if best[0] is None else 1.0):
                best, bar_rate = (cand.drafter, k), rate
    return best


def test_the_best_draft_is_what_weighing_every_length_gives() -> None:
    """_best stops weighing longer drafts once none can win; on random costs, statistics and
    candidates (lookup chains of up to 32 drafts, model drafters) it chooses what weighing them all does."""
    rng = np.random.default_rng(7)
    chosen = set()
    for trial in range(400):
        c = Controller()
        sizes = sorted({1, *rng.integers(2, 34, size=rng.integers(1, 6)).tolist()})
        t1 = float(rng.uniform(0.01, 0.05))
        for n in sizes:  # noisy: the monotone fit and the extrapolation both come into play
            c.cost.observe_verify(n, t1 * (1 + float(rng.uniform(0.1, 1.2)) * (n - 1)) * float(rng.uniform(0.8, 1.2)))
        c.cost.t_batch_token = t1 * float(rng.uniform(0.1, 0.6)) if rng.random() < 0.7 else None
        c.cost.t_step["layerskip"] = t1 * float(rng.uniform(0.05, 0.9))
        for source in ("lookup:1", "lookup:2+", "lookup:4+", "lookup:8+", "lookup:16+", "lookup:32+", "layerskip"):
            a = Acceptance()
            for _ in range(int(rng.integers(0, 40))):
                k = int(rng.integers(1, 6))
                a.observe(k, int(rng.binomial(k, rng.uniform(0.2, 1.0))))
            c.acceptance[source] = a
        cands, caps = [], []
        for _ in range(int(rng.integers(1, 3))):
            match, k = int(rng.integers(1, 40)), int(rng.integers(1, 33))
            p = replace(PromptLookupDrafter().propose([1, 2, 1, 2], 1), source=match_source(match), match=match,
                        tokens=np.arange(k))
            chain, cap = drafts_judged_by(p), int(rng.integers(0, k + 1))  # room may cap it below the chain
            cands.append(Candidate("lookup", cap, chain[0][0], cost_prior=0.0, prior=chain[0][1], chain=chain))
            caps.append(cap)
        if rng.random() < 0.5:
            cands.append(Candidate("layerskip", 4, "layerskip", cost_prior=0.5))
            caps.append(4)
        d = c.choose(cands, accepted_in_text=None)
        assert (d.drafter, d.k) == exhaustive_best(c, cands, caps, fresh=False), trial
        chosen.add(d.drafter)
    assert chosen == {None, "lookup", "layerskip"}  # the cases cover every kind of choice


def test_a_process_with_only_its_own_measurements_weighs_drafts_once() -> None:
    """Controller.choose skips the explore shadow when a process without stored state would
    weigh exactly the same figures; on random histories of a fresh process the shadow then
    chooses what the full state does, and anything stored or given turns the shadow back on."""
    rng = np.random.default_rng(11)
    for trial in range(200):
        c = Controller()
        t1 = float(rng.uniform(0.01, 0.05))
        c.cost.calibrate(lambda n: t1 * (1 + 0.4 * (n - 1)) * float(rng.uniform(0.9, 1.1)), [1, 2, 4], repeats=3)
        for _ in range(int(rng.integers(0, 30))):
            n = int(rng.integers(1, 12))
            c.cost.observe_verify(n, t1 * (1 + float(rng.uniform(0.1, 1.2)) * (n - 1)))
        if rng.random() < 0.5:
            c.cost.observe_batch(64, 64 * t1 * float(rng.uniform(0.1, 0.6)))
        if rng.random() < 0.5:
            c.cost.observe_step("layerskip", 1, t1 * float(rng.uniform(0.05, 0.9)))
        for _ in range(int(rng.integers(0, 40))):
            match, k = int(rng.integers(1, 40)), int(rng.integers(1, 9))
            if rng.random() < 0.5:
                c.observe(match_source(match), k, int(rng.binomial(k, 0.6)))
            else:
                c.observe_chain([match_source(match)] * k, int(rng.binomial(k, 0.6)))
        cands, caps = [], []
        for _ in range(int(rng.integers(1, 3))):
            match, k = int(rng.integers(1, 40)), int(rng.integers(1, 33))
            p = replace(PromptLookupDrafter().propose([1, 2, 1, 2], 1), source=match_source(match), match=match,
                        tokens=np.arange(k))
            chain = drafts_judged_by(p)
            cands.append(Candidate("lookup", k, chain[0][0], cost_prior=0.0, prior=chain[0][1], chain=chain))
            caps.append(k)
        if rng.random() < 0.5:
            cands.append(Candidate("layerskip", 4, "layerskip", cost_prior=0.5))
            caps.append(4)
        assert c.cost.fresh_is_full() and c.acceptance == c.fresh, trial
        assert c._best(cands, caps, fresh=True) == c._best(cands, caps, fresh=False), trial
        assert c.choose(cands, explore=True) == c.choose(cands), trial

    c = Controller()
    c.cost.calibrate(lambda n: 0.02 * n, [1, 2], repeats=1)
    assert c.cost.fresh_is_full()
    c.cost.t_step["layerskip"] = 0.001  # given, not timed here
    assert not c.cost.fresh_is_full()
    loaded = Controller()
    loaded.load_state(c.state())
    assert not loaded.cost.fresh_is_full()
    c = Controller()
    c.acceptance["lookup:8+"] = seen(10, 4, 4)  # known from elsewhere: the fresh table lacks it
    assert c.acceptance != c.fresh
