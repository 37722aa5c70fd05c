"""Which attention and MLP blocks a sub-layer draft leaves out, for a target saving.

A whole-layer draft saves the cost of both blocks of each skipped layer and must take
them together; a sub-layer draft can leave out the insensitive half of a layer and keep
the other. Given a sensitivity score per block (sdfp_edge.convert.fit.score_blocks) and each
block's cost as a fraction of one full forward step, `choose_skip_blocks` removes blocks
in order of score per unit of cost saved until the saving reaches the target.

Costs are proportional to parameter counts: at decode time a step reads every weight
once, so the weights are the cost (the attention over the KV cache, which grows with the
context, is not counted). The output head is a fixed part of every step, never skipped.

Pure numpy: importing this module does not import torch (`block_costs` does, lazily, as
it reads a PyTorch model). Example:

    attn_cost, ffn_cost = block_costs(model)            # [n_layer] each, + head = 1
    budget = whole_layer_cost([3, 7, 11], attn_cost, ffn_cost)
    attn, ffn = choose_skip_blocks(scores["fit"]["attn"], scores["fit"]["ffn"],
                                   attn_cost, ffn_cost, budget)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from sdfp_edge.errors import SkipListError

_RTOL = 1e-9  # a saving this close to the target reaches it (sums of costs in another order)


def cost_fractions(
    attn_params: npt.ArrayLike, ffn_params: npt.ArrayLike, head_params: int
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Each block's share of a forward step, from parameter (or weight byte) counts.

    Args:
        attn_params: [n_layer] parameter count of each layer's attention block.
        ffn_params: [n_layer] parameter count of each layer's MLP block.
        head_params: parameter count of the output head (never skipped).

    Returns:
        (attn_cost [n_layer], ffn_cost [n_layer]), float64; their sum plus
        head_params / total is 1.
    """
    a = np.asarray(attn_params, dtype=np.float64)
    f = np.asarray(ffn_params, dtype=np.float64)
    if a.ndim != 1 or a.shape != f.shape or a.size == 0:
        raise SkipListError(f"block parameter counts must be two 1-D arrays of one length, got {a.shape} and {f.shape}")
    if np.any(a < 0) or np.any(f < 0) or head_params < 0:
        raise SkipListError("parameter counts cannot be negative")
    total = float(a.sum() + f.sum()) + head_params
    if total <= 0:
        raise SkipListError("the model has no parameters to count")
    return a / total, f / total


def block_costs(model: Any) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """`cost_fractions` of a Hugging Face causal LM (its output head: the output embeddings).

    Returns:
        (attn_cost [n_layer], ffn_cost [n_layer]), float64.
    """
    from sdfp_edge.convert.fit import block_parameters, find_decoder_layers

    counts = [[sum(p.numel() for p in params) for params in block_parameters(layer)]
              for layer in find_decoder_layers(model)]
    head = model.get_output_embeddings()
    head_params = sum(p.numel() for p in head.parameters()) if head is not None else 0
    return cost_fractions([c[0] for c in counts], [c[1] for c in counts], head_params)


def whole_layer_cost(
    skip_layers: Sequence[int], attn_cost: npt.ArrayLike, ffn_cost: npt.ArrayLike
) -> float:
    """The fraction of a step that skipping these whole layers saves."""
    a, f = np.asarray(attn_cost, dtype=np.float64), np.asarray(ffn_cost, dtype=np.float64)
    return float(sum(a[i] + f[i] for i in skip_layers))


def choose_skip_blocks(
    attn_scores: npt.ArrayLike,
    ffn_scores: npt.ArrayLike,
    attn_cost: npt.ArrayLike,
    ffn_cost: npt.ArrayLike,
    budget: float,
    *,
    keep_first: bool = True,
) -> tuple[list[int], list[int]]:
    """The blocks to skip so that the saved cost reaches `budget`, least sensitive per cost first.

    Greedy: blocks ranked by score / cost ascending (ties: lower layer, attention before
    MLP), taken until their total cost reaches budget. Never a block of the last layer
    (it produces the output), nor of layer 0 unless keep_first=False.

    Args:
        attn_scores, ffn_scores: [n_layer], higher = more sensitive.
        attn_cost, ffn_cost: [n_layer], each block's fraction of a forward step, > 0.
        budget: the fraction of a step to save, 0 <= budget <= the candidates' total cost.

    Returns:
        (attention layers, MLP layers) to skip, each sorted.
    """
    arrays = [np.asarray(x, dtype=np.float64) for x in (attn_scores, ffn_scores, attn_cost, ffn_cost)]
    names = ("attention scores", "MLP scores", "attention costs", "MLP costs")
    n_layer = arrays[0].size
    for name, x in zip(names, arrays):
        if x.ndim != 1 or x.size == 0 or x.size != n_layer:
            raise SkipListError(f"{name} must be non-empty 1-D arrays of one length, got shape {x.shape}")
        if not np.all(np.isfinite(x)):
            raise SkipListError(f"{name} contain NaN or infinity at layers {np.flatnonzero(~np.isfinite(x)).tolist()}")
    scores, costs = np.stack(arrays[:2]), np.stack(arrays[2:])  # [2, n_layer]: attention, MLP
    if np.any(costs <= 0):
        raise SkipListError("block costs must be positive")
    numeric = isinstance(budget, (int, float, np.floating, np.integer)) and not isinstance(budget, bool)
    if not numeric or not math.isfinite(budget):
        raise SkipListError(f"the cost to save must be a finite number, got {budget!r}")
    layers = [i for i in range(n_layer - 1) if i > 0 or not keep_first]
    candidates = [(i, kind) for i in layers for kind in (0, 1)]
    available = float(sum(costs[kind, i] for i, kind in candidates))
    if not 0.0 <= budget <= available * (1 + _RTOL):
        rule = "the first and the last" if keep_first else "the last"
        raise SkipListError(
            f"cannot save {budget:.4g} of a step by skipping blocks of {n_layer} layers: {rule} layer are kept, "
            f"so at most {available:.4g} can be saved"
        )
    ranked = sorted(candidates, key=lambda c: (scores[c[1], c[0]] / costs[c[1], c[0]], c[0], c[1]))
    chosen: tuple[list[int], list[int]] = ([], [])
    saved = 0.0
    for i, kind in ranked:
        if saved >= budget * (1 - _RTOL):
            break
        chosen[kind].append(i)
        saved += costs[kind, i]
    return sorted(chosen[0]), sorted(chosen[1])
