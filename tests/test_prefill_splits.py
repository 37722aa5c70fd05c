"""prefill_splits: a prefill split or reused where the rule allows gives its KV bit for bit."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from sdfp_edge.api import Model
from sdfp_edge.runtime.backend import common_prefix_len
from sdfp_edge.runtime.parallel import ParallelDecoder, Request
from sdfp_edge.runtime.prefill_splits import CPU_ROW_GROUP, CPU_WHOLE_TILE, SplitRule, batches, reusable

RULE = SplitRule.cpu()


# --- pure: the rule against a model of the kernels --------------------------------------------
def rows(prefill: list[tuple[int, int]], group: int) -> dict[int, tuple]:
    """How each row of these llama_decode batches is computed, by the two facts the rule rests
    on: flash attention's way for a batch of CPU_WHOLE_TILE rows or more or fewer, and weights
    that take rows `group` at a time from the batch's start, the rest one at a time."""
    out = {}
    for a, z in prefill:
        whole = z - a >= CPU_WHOLE_TILE
        grouped = a + (z - a) // group * group
        for r in range(a, z):
            out[r] = (whole, a + (r - a) // group * group if r < grouped else r)
    return out


def prefill(start: int, end: int, cuts: frozenset[int], n_batch: int, *, split: bool) -> list[tuple[int, int]]:
    """The llama_decode batches of positions start..end-1: each batch whole, or in its parts."""
    out = [(start + i, start + j) for i, j in batches(range(start, end), cuts, n_batch)]
    return [p for a, z in out for p in RULE.parts(a, z)] if split else out


@pytest.mark.parametrize("group", [1, 2, 4, 8, 16])
def test_reuse_and_parts_compute_every_row_as_a_prefill_from_empty_does(group: int) -> None:
    """Random pairs of prompts (lengths, shared prefix, cuts, n_batch): the new prompt's rows
    below `reusable`'s k taken from the other's prefill, the rest prefilled from k (whole or
    in parts), are computed as its own prefill from an empty cache computes them."""
    rng = random.Random(group)
    reused = 0
    for _ in range(3000):
        n_batch = rng.choice([64, 128, 512])
        len_a, len_b = rng.randint(1, 700), rng.randint(2, 700)
        shared = rng.randint(0, min(len_a, len_b - 1))
        common = {rng.randint(1, max(1, shared)) for _ in range(rng.randint(0, 2))} if shared else set()
        cuts_a = frozenset(common | {rng.randint(1, len_a) for _ in range(rng.randint(0, 2))}) - {len_a}
        cuts_b = frozenset(common | {rng.randint(1, len_b) for _ in range(rng.randint(0, 2))}) - {len_b}
        held = cuts_a | {len_a}
        k = reusable(shared, cuts=cuts_b, end=len_b, held_cuts=held, n_batch=n_batch, rule=RULE)
        assert 0 <= k <= shared
        fresh = rows(prefill(0, len_b, cuts_b, n_batch, split=rng.random() < 0.5), group)
        held_rows = rows(prefill(0, len_a, cuts_a, n_batch, split=rng.random() < 0.5), group)
        rest = rows(prefill(k, len_b, cuts_b, n_batch, split=rng.random() < 0.5), group)
        got = {**{r: held_rows[r] for r in range(k)}, **rest}
        assert got == fresh, (n_batch, len_a, len_b, shared, sorted(cuts_a), sorted(cuts_b), k)
        reused += k
    assert reused > 0


def test_reuse_goes_inside_a_batch_only_where_the_rest_keeps_a_whole_tile() -> None:
    def k(shared: int, end: int, held_end: int, cuts: frozenset[int] = frozenset()) -> int:
        return reusable(shared, cuts=cuts, end=end, held_cuts=cuts | {held_end}, n_batch=512, rule=RULE)

    assert k(100, end=300, held_end=203) == 96  # the last whole group
    assert k(100, end=120, held_end=203) == 48  # 72 rows left: a whole tile
    assert k(40, end=50, held_end=45) == 32  # two batches under a tile: computed alike
    assert k(40, end=50, held_end=203) == 0  # one under a tile, the other not
    assert k(24, end=136, held_end=150, cuts=frozenset({24})) == 24  # where both batches start
    whole = SplitRule.whole(512)  # kernels never measured: only where a batch starts
    assert reusable(300, cuts=frozenset({24}), end=400, held_cuts=frozenset({24, 350}), n_batch=512, rule=whole) == 24
    assert whole.parts(0, 512) == [(0, 512)]


def test_a_completion_extended_by_a_few_tokens_reuses_all_but_its_tail() -> None:
    """serve cuts a completion where its last whole tile ends (tail_cut): the next prompt that
    extends it (an editor's) reuses all but the last row group, or the last tile where the two
    end in different tiles; without that cut, reuse stops a whole tile short of its end."""
    for length in range(1, 600):
        for more in (1, 5, 40):
            end = length + more
            k = reusable(length, cuts=RULE.tail_cut(end), end=end, held_cuts=RULE.tail_cut(length) | {length},
                         n_batch=512, rule=RULE)
            same_tile = length // CPU_WHOLE_TILE == end // CPU_WHOLE_TILE
            assert length - k < (CPU_ROW_GROUP if same_tile else CPU_WHOLE_TILE + CPU_ROW_GROUP), (length, end, k)
            bare = reusable(length, cuts=frozenset(), end=end, held_cuts=frozenset({length}), n_batch=512, rule=RULE)
            if CPU_WHOLE_TILE <= end < 512:  # one batch, of a tile or more
                assert bare <= end - CPU_WHOLE_TILE


def test_parts_keep_a_whole_tile_each_and_start_a_group_apart() -> None:
    for start in (0, 24, 100):
        for n in range(1, 300):
            parts = RULE.parts(start, start + n)
            assert parts[0][0] == start and parts[-1][1] == start + n
            assert all(p[1] == q[0] for p, q in zip(parts, parts[1:]))
            assert len(parts) == max(1, n // CPU_WHOLE_TILE)
            if len(parts) > 1:
                assert all(z - a >= CPU_WHOLE_TILE and (a - start) % CPU_ROW_GROUP == 0 for a, z in parts)


# --- the kernels themselves ---------------------------------------------------------------------
@pytest.mark.slow
def test_qwen_reuses_inside_a_batch_bit_for_bit(qwen05: Path) -> None:
    """Qwen2.5-Coder-0.5B Q4_K_M: repacked weights on x86 take rows 4 at a time, so a reuse
    off a row group would change the KV. A prompt sharing 102 tokens with another reuses 96
    (not a multiple of 64, where reuse stopped before 2026-12-08) and its prefill, whole or a
    part per step, gives the logits of its prefill from an empty cache, bit for bit."""
    with Model(qwen05, n_ctx=3 * 512, n_threads=2, n_seq_max=3, cost_cache=False) as m:
        b = m.backend
        text = m.tokenize_prompt("def total(items):\n    return sum(i.price for i in items)\n" * 12)
        a, p = text[:140], text[:102] + m.tokenize_prompt(" # and now in another order:\n" * 30)[:160]
        assert len(p) >= 102 + CPU_WHOLE_TILE * 2 and common_prefix_len(a, p) == 102

        def first(dec: ParallelDecoder, slot: int, prompt: list[int], *, parts: bool = False) -> tuple[np.ndarray, int]:
            s = dec.slots[slot]
            dec._start(s, Request(slot, prompt, 1))  # as admit does, then its parts one at a time
            n_parts, update = len(s.pending), None
            while s.pending:
                update = dec._prefill(s, 1 if parts else len(s.pending))
            assert update is not None and update.result is not None  # one token: done
            assert n_parts >= 2 or not parts
            b.seq_remove(slot, len(prompt) - 1)
            return b.decode_seqs(prompt[-1:], [len(prompt) - 1], [slot])[0], update.result.reused_tokens

        fresh, _ = first(ParallelDecoder(b, seq_ctx=512, mode="off"), 0, p)
        for parts in (False, True):
            dec = ParallelDecoder(b, seq_ctx=512, mode="off")
            first(dec, 0, a)
            got, reused = first(dec, 1, p, parts=parts)
            assert reused == 96
            assert np.array_equal(got, fresh)
        b.split_rule = SplitRule(1, CPU_WHOLE_TILE)  # the same reuse off the group: what the rule avoids
        dec = ParallelDecoder(b, seq_ctx=512, mode="off")
        first(dec, 0, a)
        got, reused = first(dec, 1, p)
        assert reused == 102 and not np.array_equal(got, fresh), "these kernels no longer group rows by 4"
