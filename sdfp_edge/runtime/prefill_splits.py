"""Where a prompt's prefill may be split into batches without changing its KV, bit for bit.

A prompt's KV depends on how its prefill is cut into llama_decode batches: on a 2-vCPU EPYC,
SmolLM2's logits moved by up to 0.77 between two cuttings of one prompt (2026-12-01), enough
to change a greedy token. serve --parallel and batch mode reuse one prompt's KV for another
(a shared system prompt, a chat's previous turn) and split a long prefill between other
streams' steps; for a request's text not to depend on what ran before or beside it, every
prompt gets the KV of one fixed cutting of its own (its *batches*: cut at multiples of
n_batch, as llama.cpp cuts, and at the prompt's `cuts`), whatever is reused or split.

Two things in the pinned llama.cpp's CPU kernels make a batch's rows depend on the batch
(found 2026-12-08, tools/prefill_exactness.py): flash attention computes a batch of 64 rows
or more another way than a smaller one (GGML_FA_TILE_Q), and repacked weights (Q4_K, Q4_0
on x86) multiply rows in groups of 4 from the batch's start, the last (rows mod 4) one at a
time. Split anywhere else, a batch gives the same KV: on a Zen 5 EPYC, for SmolLM2 Q4_1,
Qwen2.5-Coder 0.5B and 1.5B Q4_K_M and Gemma 3 270M Q4_K_M, every split a multiple of 4 rows
from the batch's start with both sides of 64 rows or more (or both under) gave the whole
batch's logits bit for bit, and each split that broke either rule changed them on the Q4_K
models (the tile rule on all four). `SplitRule` states that with margins (groups of 16, for kernels
that take more rows at a time); a GPU's kernels were never measured, so there a batch is
never split (SplitRule.whole).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

CPU_ROW_GROUP = 16  # a split's offset from its batch's start: repacked weights take rows 4 at a time
CPU_WHOLE_TILE = 64  # flash attention's row tile (GGML_FA_TILE_Q): a batch under it is computed otherwise


@dataclass(frozen=True)
class SplitRule:
    """Which splits of a prefill batch leave every row's KV as the whole batch computes it."""

    group: int  # a part starts a multiple of `group` rows after its batch's start
    tile: int  # a batch of `tile` rows or more is computed otherwise than a smaller one: no part goes under it

    @classmethod
    def cpu(cls) -> SplitRule:
        return cls(CPU_ROW_GROUP, CPU_WHOLE_TILE)

    @classmethod
    def whole(cls, n_batch: int) -> SplitRule:
        """Batches never split (and so reuse only where a batch starts): kernels not measured."""
        return cls(n_batch, n_batch)

    def tail_cut(self, length: int) -> frozenset[int]:
        """A cut where a prompt with no cuts of its own ends its last whole tile.

        Reuse inside a batch keeps a whole tile to compute (`reusable`); after a cut here the
        rest is a batch under a tile, so a prompt that extends this one by a few tokens (an
        editor's next completion) reuses all of it but the last row group (the last tile where
        it ends in the next one), at the price of one small batch more in its prefill.

        >>> SplitRule(16, 64).tail_cut(150), SplitRule(16, 64).tail_cut(128)
        (frozenset({128}), frozenset())
        """
        cut = length - length % self.tile
        return frozenset({cut}) if 0 < cut < length else frozenset()

    def parts(self, start: int, stop: int) -> list[tuple[int, int]]:
        """[start, stop) of one batch as parts of `tile` positions, the rest joined to the last
        one (so none is under `tile`): prefilled one part per step, they give the batch's KV.

        >>> SplitRule(16, 64).parts(24, 200)
        [(24, 88), (88, 200)]
        """
        n = (stop - start) // self.tile
        if n <= 1:
            return [(start, stop)]
        bounds = [start + i * self.tile for i in range(n)] + [stop]
        return list(zip(bounds, bounds[1:]))


def batches(positions: Sequence[int], cuts: AbstractSet[int], n_batch: int) -> list[tuple[int, int]]:
    """A prefill's batches, as [start, stop) indices into `positions`: a new one wherever a
    position is a multiple of n_batch or in `cuts`, and at most n_batch tokens in one.

    >>> batches(range(24, 200), {100}, 64)
    [(0, 40), (40, 76), (76, 104), (104, 168), (168, 176)]
    """
    bounds, start = [], 0
    for i in range(1, len(positions) + 1):
        if i == len(positions) or positions[i] % n_batch == 0 or positions[i] in cuts or i - start == n_batch:
            bounds.append((start, i))
            start = i
    return bounds


def next_bound(start: int, cuts: Iterable[int], end: int, n_batch: int) -> int:
    """Where the batch that starts at `start` ends: the next cut, multiple of n_batch or the end."""
    return min([end, start - start % n_batch + n_batch, *(c for c in cuts if c > start)])


def reusable(shared: int, *, cuts: frozenset[int], end: int, held_cuts: frozenset[int], n_batch: int,
             rule: SplitRule) -> int:
    """How much of a new prompt's KV a cached prefill of another prompt gives, bit for bit.

    Args:
        shared: the tokens both prompts share (at most the cached prefill's length, and less than
            the new prompt's `end`: its last token is always decoded, for its logits).
        cuts: the new prompt's cuts; end: its length.
        held_cuts: the cached prefill's cuts, its own end among them (where its batches ended).
    Returns:
        k <= shared such that the cached KV of positions < k, with the new prompt's positions
        k.. prefilled as one batch up to its next bound, equals the new prompt's KV from its own
        batches: k is where a batch both prefills share starts, or inside it, a multiple of
        rule.group after that start, where the cached rows and the rest from k are each computed
        as that batch computes them (on the same side of rule.tile).
    """
    n = min(shared, min(cuts ^ held_cuts, default=shared))  # past a cut only one has, the batches part
    start = max([n - n % n_batch, *(c for c in cuts & held_cuts if c <= n)])
    stop = next_bound(start, cuts, end, n_batch)
    held_stop = next_bound(start, held_cuts, end=max(held_cuts | {n}), n_batch=n_batch)
    whole = stop - start >= rule.tile
    if (held_stop - start >= rule.tile) != whole:  # the cached rows were computed the other way
        return start
    limit = stop - rule.tile if whole else n  # the rest from k keeps a whole tile
    return start + (min(n, limit) - start) // rule.group * rule.group
