"""Choosing attention and MLP blocks to skip by score per unit of cost (pure numpy)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sdfp_edge.convert.block_choice import choose_skip_blocks, cost_fractions, whole_layer_cost
from sdfp_edge.errors import SkipListError


def test_cost_fractions_count_the_head_as_a_fixed_part() -> None:
    attn, ffn = cost_fractions([1, 1, 1, 1], [2, 2, 2, 2], 4)
    np.testing.assert_allclose(attn, [1 / 16] * 4)
    np.testing.assert_allclose(ffn, [2 / 16] * 4)
    assert 1.0 - attn.sum() - ffn.sum() == pytest.approx(4 / 16)  # the head's share
    assert whole_layer_cost([1, 2], attn, ffn) == pytest.approx(6 / 16)
    with pytest.raises(SkipListError, match="1-D"):
        cost_fractions([1, 2], [1], 0)
    with pytest.raises(SkipListError, match="negative"):
        cost_fractions([1, -1], [1, 1], 0)


def test_choose_skip_blocks_prefers_low_score_per_cost() -> None:
    attn_cost, ffn_cost = np.full(5, 0.05), np.full(5, 0.10)
    attn = np.array([0.0, 1.0, 0.2, 3.0, 0.0])  # first and last are the lowest: never chosen
    ffn = np.array([0.0, 0.3, 5.0, 0.1, 0.0])
    # score / cost: attn 20, 4, 60; ffn 3, 50, 1 (layers 1, 2, 3)
    assert choose_skip_blocks(attn, ffn, attn_cost, ffn_cost, 0.0) == ([], [])
    assert choose_skip_blocks(attn, ffn, attn_cost, ffn_cost, 0.1) == ([], [3])
    assert choose_skip_blocks(attn, ffn, attn_cost, ffn_cost, 0.15) == ([], [1, 3])
    assert choose_skip_blocks(attn, ffn, attn_cost, ffn_cost, 0.2) == ([], [1, 3])
    assert choose_skip_blocks(attn, ffn, attn_cost, ffn_cost, 0.25) == ([2], [1, 3])
    assert choose_skip_blocks(attn, ffn, attn_cost, ffn_cost, 0.45) == ([1, 2, 3], [1, 2, 3])
    assert choose_skip_blocks(attn, ffn, attn_cost, ffn_cost, 0.1, keep_first=False) == ([0], [0])
    # a budget met up to rounding (costs summed in another order) takes no extra block
    assert choose_skip_blocks(attn, ffn, attn_cost, ffn_cost, 0.25 * (1 + 1e-12)) == ([2], [1, 3])


def test_choose_skip_blocks_rejects_bad_input() -> None:
    ones = np.ones(4)
    with pytest.raises(SkipListError, match="cannot save"):
        choose_skip_blocks(ones, ones, ones / 10, ones / 10, 0.5)  # at most 0.4 (layers 1, 2)
    with pytest.raises(SkipListError, match="cannot save"):
        choose_skip_blocks(ones, ones, ones / 10, ones / 10, -0.1)
    with pytest.raises(SkipListError, match="NaN"):
        choose_skip_blocks([1.0, float("nan"), 1.0], [1.0] * 3, [0.1] * 3, [0.1] * 3, 0.1)
    with pytest.raises(SkipListError, match="1-D"):
        choose_skip_blocks(ones, np.ones(3), ones, ones, 0.1)
    with pytest.raises(SkipListError, match="positive"):
        choose_skip_blocks(ones, ones, np.zeros(4), ones, 0.1)
    with pytest.raises(SkipListError, match="finite number"):
        choose_skip_blocks(ones, ones, ones, ones, float("inf"))
    with pytest.raises(SkipListError, match="finite number"):
        choose_skip_blocks(ones, ones, ones, ones, True)  # type: ignore[arg-type]


@settings(max_examples=200, deadline=None)
@given(
    data=st.data(),
    n=st.integers(3, 30),
    keep_first=st.booleans(),
)
def test_choose_skip_blocks_properties(data: st.DataObject, n: int, keep_first: bool) -> None:
    scores = st.lists(st.floats(0, 1e3, allow_nan=False), min_size=n, max_size=n)
    costs = st.lists(st.floats(1e-4, 1.0, allow_nan=False), min_size=n, max_size=n)
    attn, ffn = np.array(data.draw(scores)), np.array(data.draw(scores))
    attn_cost, ffn_cost = np.array(data.draw(costs)), np.array(data.draw(costs))
    layers = [i for i in range(n - 1) if i > 0 or not keep_first]
    available = float(attn_cost[layers].sum() + ffn_cost[layers].sum())
    budget = data.draw(st.floats(0.0, available))

    skip_attn, skip_ffn = choose_skip_blocks(attn, ffn, attn_cost, ffn_cost, budget, keep_first=keep_first)
    for chosen in (skip_attn, skip_ffn):
        assert chosen == sorted(set(chosen))
        assert n - 1 not in chosen and (not keep_first or 0 not in chosen)
    saved = float(attn_cost[skip_attn].sum() + ffn_cost[skip_ffn].sum())
    assert saved >= budget * (1 - 1e-9)
    ratio = {("a", i): attn[i] / attn_cost[i] for i in layers} | {("f", i): ffn[i] / ffn_cost[i] for i in layers}
    cost = {("a", i): attn_cost[i] for i in layers} | {("f", i): ffn_cost[i] for i in layers}
    chosen_keys = [("a", i) for i in skip_attn] + [("f", i) for i in skip_ffn]
    rest = [k for k in ratio if k not in chosen_keys]
    if chosen_keys:
        worst = max(chosen_keys, key=lambda k: (ratio[k], k[1], k[0]))  # the last one taken
        assert saved - cost[worst] < budget  # no block more than needed
        if rest:
            assert ratio[worst] <= min(ratio[k] for k in rest)  # the cheapest per cost first


def test_importing_block_skip_does_not_import_torch() -> None:
    code = "import sys, sdfp_edge.convert.block_choice; sys.exit(int('torch' in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent.parent, check=False).returncode == 0
