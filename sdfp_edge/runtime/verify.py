"""Acceptance of drafted tokens: exact greedy matching and speculative (rejection) sampling.

Terms (as in vLLM's rejection sampler):
  draft tokens     d_1..d_k proposed by a drafter, with the drafter's distributions q_i
                   (None for a deterministic drafter such as prompt lookup: q_i = one-hot(d_i));
  target rows      p_0..p_k, the target's distributions after [last, d_1..d_k] in one batch
                   (p_{i-1} is the target's distribution for the position of d_i);
  accepted         the longest prefix d_1..d_n the rule keeps;
  recovered token  after a rejection at i, a draw from normalize(max(0, p_{i-1} - q_i));
  bonus token      after all k are accepted, a draw from p_k.
Every cycle therefore emits n + 1 tokens.

Greedy: d_i is kept while it equals argmax p_{i-1}; the next token is argmax p_n.
Sampling (Leviathan et al. 2023, Chen et al. 2023): d_i is kept with probability
min(1, p_{i-1}(d_i) / q_i(d_i)). The emitted sequence is distributed exactly as
sampling from p alone, whatever q is. For deterministic drafts (q one-hot) given one
uniform per output position, the rule is applied as a coupling: the target draws its own
token at each position with that position's uniform, d_i is kept while it equals the
draw, and the first differing draw is emitted. P(keep d_i) = p(d_i) and a differing draw
follows normalize(p with d_i removed), the same rule; and the output is what plain
sampling with those uniforms gives, whatever was drafted, so a seed reproduces it
whatever the controller chose.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from sdfp_edge.runtime.sampling import SamplingParams, draw, sample


@dataclass(frozen=True)
class Verdict:
    n_accepted: int  # how many of the k draft tokens are kept
    next_token: int  # recovered token (after a rejection) or bonus token (all accepted)


def accept_greedy(draft_tokens: npt.NDArray[np.integer], target_logits: npt.NDArray[np.floating]) -> Verdict:
    """Args: draft_tokens [k]; target_logits [k+1, V]."""
    k = len(draft_tokens)
    if k == 0:  # a plain step (every token of `off`): one row, no comparison to make
        return Verdict(0, int(target_logits[0].argmax()))
    target_top = np.argmax(target_logits[: k + 1], axis=-1)  # [k+1]
    agree = target_top[:k] == np.asarray(draft_tokens)
    n = k if agree.all() else int(np.argmin(agree))
    return Verdict(n, int(target_top[n]))


def couple_to_draws(
    draft_tokens: npt.NDArray[np.integer],
    target_logits: npt.NDArray[np.floating],
    sampling: SamplingParams,
    uniforms: Sequence[float],
) -> Verdict:
    """Deterministic drafts, sampled: keep d_i while it equals the target's own draw with its
    position's uniform (see the module docstring). Works on logits, row by row: the rows
    after the first differing draw are never turned into probabilities.

    Args: draft_tokens [k]; target_logits [k+1, V]; uniforms [k+1], one per output position."""
    d = np.asarray(draft_tokens, dtype=np.int64)
    k = len(d)
    for i in range(k + 1):
        x = draw(target_logits[i], sampling, uniforms[i])
        if i == k or x != d[i]:
            return Verdict(i, x)
    raise AssertionError("unreachable: the last row always returns")


def rejection_sample(
    draft_tokens: npt.NDArray[np.integer],
    q: npt.NDArray[np.float64],
    p: npt.NDArray[np.float64],
    rng: np.random.Generator,
) -> Verdict:
    """A model's drafts (deterministic ones go through couple_to_draws).

    Args: draft_tokens [k]; q [k, V] draft probabilities; p [k+1, V] target probabilities
    (same sampling transform as q)."""
    d = np.asarray(draft_tokens, dtype=np.int64)
    k = len(d)
    rows = np.arange(k)
    p_d = p[rows, d]  # [k]
    q_d = q[rows, d]  # [k]
    u = rng.random(k)  # [k]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(q_d > 0, p_d / q_d, 0.0)
    accepted = u < np.minimum(1.0, ratio)
    n = k if accepted.all() else int(np.argmin(accepted))
    if n == k:
        return Verdict(k, sample(p[k], rng))
    residual = np.maximum(p[n] - q[n], 0.0)
    total = residual.sum()
    if total <= 0.0:  # p == q at this row: a rejection has probability 0; fall back safely
        return Verdict(n, sample(p[n], rng))
    return Verdict(n, sample(residual / total, rng))
