"""Prompt lookup and the controller's cost model (no model needed)."""

from __future__ import annotations

import numpy as np
import pytest

from sdfp_edge.controller import (
    Acceptance,
    Candidate,
    Controller,
    CostModel,
    expected_tokens,
    expected_tokens_from_rates,
)
from sdfp_edge.drafters import PromptLookupDrafter
from sdfp_edge.drafters.prompt_lookup import match_source


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
    c = Controller(k_max=4, cost=cost(CPU, {"layerskip": 0.017}))
    c.acceptance["layerskip"] = seen(200, 4, 4)
    assert c.choose([Candidate("layerskip", 4)]).drafter is None


def test_free_lookup_drafts_win_when_accepted_and_are_dropped_when_not() -> None:
    c = Controller(k_max=4, cost=cost(CPU, {"lookup": 0.0}))
    c.acceptance["lookup:8+"] = seen(100, 4, 4)
    d = c.choose([Candidate("lookup", 4, "lookup:8+")])
    assert (d.drafter, d.source) == ("lookup", "lookup:8+") and d.k >= 3
    c.acceptance["lookup:1"] = seen(100, 1, 0)
    assert c.choose([Candidate("lookup", 4, "lookup:1")]).drafter is None  # judged by its own bucket


def test_an_untried_source_is_explored_with_one_draft_and_only_if_it_could_pay() -> None:
    cheap = Controller(k_max=4, cost=cost({1: 0.02, 2: 0.021, 5: 0.024}, {"layerskip": 0.008}))
    assert cheap.choose([Candidate("layerskip", 4)]).drafter == "layerskip"  # GPU-like V(n): worth a try
    costly = Controller(k_max=4, cost=cost(CPU, {"layerskip": 0.019}))
    assert costly.choose([Candidate("layerskip", 4)]).drafter is None
    fresh = Controller(k_max=4, cost=cost(CPU, {"lookup": 0.0})).choose([Candidate("lookup", 4, "lookup:4+")])
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


def test_verify_cost_interpolates() -> None:
    m = cost({1: 1.0, 3: 2.0}, {})
    assert m.verify(2) == pytest.approx(1.5)
    assert m.verify(5) == pytest.approx(3.0)


def test_a_noisy_cheap_long_verify_does_not_make_long_drafts_free() -> None:
    m = cost({1: 0.020, 2: 0.040, 5: 0.021}, {})  # V(5) sample hit by noise
    assert m.verify(5) == pytest.approx(0.040)
    assert m.verify(3) >= m.verify(2)


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
    c = Controller(k_max=4, cost=cost(CPU, {"lookup": 0.0}))
    c.acceptance["lookup:8+"] = seen(100, 4, 4)  # earlier text: long runs always accepted
    assert c.choose([Candidate("lookup", 4, "lookup:8+")], accepted_in_text=0).k == 1
    assert c.choose([Candidate("lookup", 4, "lookup:8+")], accepted_in_text=1).k >= 3
