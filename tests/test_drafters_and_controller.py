"""Prompt lookup and the controller's cost model (no model needed)."""

from __future__ import annotations

import pytest

from sdfp_edge.controller import Acceptance, Controller, CostModel, expected_tokens
from sdfp_edge.drafters import PromptLookupDrafter


def test_lookup_docstring_example() -> None:
    d = PromptLookupDrafter(max_ngram=3)
    assert d.propose([5, 6, 7, 8, 9, 5, 6, 7], 2).tokens.tolist() == [8, 9]


def test_lookup_prefers_latest_longest_match_and_caps_k() -> None:
    d = PromptLookupDrafter(max_ngram=2)
    toks = [1, 2, 3, 9, 2, 4, 1, 2, 5, 6, 1, 2]
    # last 2-gram [1, 2] occurs at 0 and 6; the latest earlier one (6) is followed by 5, 6, 1
    assert d.propose(toks, 3).tokens.tolist() == [5, 6, 1]
    assert d.propose(toks, 1).tokens.tolist() == [5]
    assert d.propose([1, 2, 3, 4], 3).k == 0  # no earlier occurrence of anything
    assert d.propose([7], 3).k == 0
    assert d.propose(toks, 0).k == 0


def test_expected_tokens() -> None:
    assert expected_tokens(0.0, 3) == 1.0
    assert expected_tokens(1.0, 3) == 4.0
    assert expected_tokens(0.5, 2) == pytest.approx(1 + 0.5 + 0.25)


def cost(v: dict[int, float], steps: dict[str, float]) -> CostModel:
    return CostModel(t_verify={n: t for n, t in v.items()}, t_step=dict(steps))


CPU = {1: 0.020, 2: 0.028, 3: 0.035, 4: 0.040, 5: 0.050}  # V(n) like SmolLM2 Q4_1 on 2 cores


def test_a_costly_draft_loses_to_plain_decoding_even_if_always_accepted() -> None:
    c = Controller(k_max=4, cost=cost(CPU, {"layerskip": 0.017}))
    c.acceptance["layerskip"] = Acceptance(accepted=1000, drafted=1000)
    assert c.choose({"layerskip": 4}).drafter is None


def test_free_lookup_drafts_win_when_accepted_and_are_dropped_when_not() -> None:
    c = Controller(k_max=4, cost=cost(CPU, {"lookup": 0.0}))
    c.acceptance["lookup"] = Acceptance(accepted=90, drafted=100)
    d = c.choose({"lookup": 4})
    assert d.drafter == "lookup" and d.k >= 3
    bad = Controller(k_max=4, cost=cost(CPU, {"lookup": 0.0}))
    bad.acceptance["lookup"] = Acceptance(accepted=2, drafted=400)
    assert bad.choose({"lookup": 4}).drafter is None


def test_an_untried_drafter_is_explored_only_if_it_could_pay() -> None:
    cheap = Controller(k_max=4, cost=cost({1: 0.02, 2: 0.021, 5: 0.024}, {"layerskip": 0.008}))
    assert cheap.choose({"layerskip": 4}).drafter == "layerskip"  # GPU-like V(n): worth a try
    costly = Controller(k_max=4, cost=cost(CPU, {"layerskip": 0.019}))
    assert costly.choose({"layerskip": 4}).drafter is None


def test_optimism_shrinks_with_evidence() -> None:
    a = Acceptance()
    assert a.optimistic == 1.0
    for _ in range(50):
        a.observe(4, 1)
    assert a.mean == pytest.approx(0.25, abs=0.05) and a.optimistic < 0.5


def test_verify_cost_interpolates() -> None:
    m = cost({1: 1.0, 3: 2.0}, {})
    assert m.verify(2) == pytest.approx(1.5)
    assert m.verify(5) == pytest.approx(3.0)


def test_a_noisy_cheap_long_verify_does_not_make_long_drafts_free() -> None:
    m = cost({1: 0.020, 2: 0.040, 5: 0.021}, {})  # V(5) sample hit by noise
    assert m.verify(5) == pytest.approx(0.040)
    assert m.verify(3) >= m.verify(2)
