"""Pure numpy: the sampling transform, greedy acceptance and the rejection sampler."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import chisquare

from sdfp_edge.errors import InvalidRequestError
from sdfp_edge.runtime.sampling import SamplingParams, draw, probs_from_logits, sample, sample_at, softmax
from sdfp_edge.runtime.verify import Verdict, accept_greedy, couple_to_draws, rejection_sample

LOGITS = np.log(np.array([[0.05, 0.4, 0.25, 0.15, 0.1, 0.05]]))


def test_greedy_is_one_hot_on_argmax() -> None:
    p = probs_from_logits(LOGITS, SamplingParams())
    assert p.tolist() == [[0, 1, 0, 0, 0, 0]]


def test_filters() -> None:
    p = probs_from_logits(LOGITS, SamplingParams(temperature=1.0, top_k=2))
    assert np.count_nonzero(p) == 2 and p[0, 1] == pytest.approx(0.4 / 0.65)
    p = probs_from_logits(LOGITS, SamplingParams(temperature=1.0, top_p=0.7))
    assert set(np.flatnonzero(p[0])) == {1, 2, 3}  # 0.4 + 0.25 < 0.7 <= 0.8
    p = probs_from_logits(LOGITS, SamplingParams(temperature=1.0, min_p=0.3))
    assert set(np.flatnonzero(p[0])) == {1, 2, 3}  # >= 0.3 * 0.4
    hot = probs_from_logits(LOGITS, SamplingParams(temperature=0.5))
    assert hot[0, 1] == pytest.approx(0.4**2 / np.sum(np.exp(LOGITS) ** 2))
    assert np.allclose(probs_from_logits(LOGITS, SamplingParams(temperature=1.0)), np.exp(LOGITS))


def test_the_transform_leaves_the_callers_logits_alone() -> None:
    logits = LOGITS.astype(np.float64).copy()  # float64 in: the fast path must not write into it
    for params in (SamplingParams(temperature=0.7), SamplingParams(temperature=0.7, top_k=3)):
        p = probs_from_logits(logits, params)
        assert np.array_equal(logits, LOGITS) and p.sum() == pytest.approx(1.0)
    assert np.allclose(softmax(logits), np.exp(LOGITS))
    assert np.array_equal(logits, LOGITS)


@pytest.mark.parametrize("kwargs", [
    {"temperature": -0.1}, {"temperature": math.nan}, {"temperature": math.inf},
    {"top_p": 0.0}, {"top_p": 1.5}, {"top_p": math.nan}, {"min_p": -1}, {"top_k": -3},
])
def test_bad_sampling_params_are_refused(kwargs: dict) -> None:
    with pytest.raises(InvalidRequestError):
        SamplingParams(**kwargs)


def test_sample_never_picks_zero_probability() -> None:
    rng = np.random.default_rng(0)
    p = np.array([0.0, 0.5, 0.0, 0.5, 0.0])
    draws = {sample(p, rng) for _ in range(2000)}
    assert draws == {1, 3}


def test_accept_greedy() -> None:
    logits = np.eye(5)[[1, 2, 3, 4]]  # target argmax per row: 1, 2, 3, 4
    assert accept_greedy(np.array([1, 2, 3]), logits) == Verdict(3, 4)
    assert accept_greedy(np.array([1, 0, 3]), logits) == Verdict(1, 2)
    assert accept_greedy(np.array([0, 2, 3]), logits) == Verdict(0, 1)
    assert accept_greedy(np.array([], dtype=int), logits[:1]) == Verdict(0, 1)


P0 = np.array([0.1, 0.3, 0.05, 0.25, 0.2, 0.1])
P1 = np.array([0.3, 0.1, 0.2, 0.1, 0.25, 0.05])
Q0 = np.array([0.4, 0.1, 0.2, 0.1, 0.1, 0.1])
Q1 = np.array([0.05, 0.05, 0.6, 0.1, 0.1, 0.1])


def on_subset(q: np.ndarray, keep: list[int]) -> np.ndarray:
    """q restricted to `keep` and renormalised: a small draft head's distribution."""
    out = np.zeros_like(q)
    out[keep] = q[keep]
    return out / out.sum()


def two_token_joint(rule, n: int, *, one_hot_draft: int | None = None, seed: int = 0,
                    q0: np.ndarray = Q0, q1: np.ndarray = Q1) -> np.ndarray:
    """Emit two tokens per trial with k=2 drafts; when fewer come out, the target continues.

    p_1 does not depend on the first token here, so the exact joint is outer(P0, P1).
    """
    rng = np.random.default_rng(seed)
    counts = np.zeros((6, 6))
    p = np.stack([P0, P1, P1])
    for _ in range(n):
        if one_hot_draft is None:
            d = np.array([sample(q0, rng), sample(q1, rng)])
            q = np.stack([q0, q1])
        else:
            d = np.array([one_hot_draft, one_hot_draft])
            q = np.eye(6)[d]  # a deterministic draft as a distribution: q_i = one-hot(d_i)
        v = rule(d, q, p, rng)
        out = [*d[: v.n_accepted].tolist(), v.next_token]
        if len(out) == 1:
            out.append(sample(P1, rng))
        counts[out[0], out[1]] += 1
    return counts


def accept_everything(d, q, p, rng) -> Verdict:
    return Verdict(len(d), sample(p[len(d)], rng))


@pytest.mark.parametrize("one_hot", [None, 1])
def test_rejection_sampler_reproduces_the_target_distribution(one_hot: int | None) -> None:
    n = 20000
    counts = two_token_joint(rejection_sample, n, one_hot_draft=one_hot)
    expected = np.outer(P0, P1).ravel() * n
    assert chisquare(counts.ravel(), expected).pvalue > 0.01


def test_a_draft_over_a_subset_of_the_vocabulary_keeps_the_target_distribution() -> None:
    """The small draft head gives q = 0 outside its tokens (draft_vocab.py); still exact."""
    n = 20000
    counts = two_token_joint(rejection_sample, n, q0=on_subset(Q0, [0, 1, 2]), q1=on_subset(Q1, [2, 3, 4, 5]))
    expected = np.outer(P0, P1).ravel() * n
    assert chisquare(counts.ravel(), expected).pvalue > 0.01
    broken = two_token_joint(accept_everything, n, q0=on_subset(Q0, [0, 1, 2]), q1=on_subset(Q1, [2, 3, 4, 5]))
    assert chisquare(broken.ravel(), expected).pvalue < 1e-6


def test_the_chi_square_check_catches_a_broken_rule() -> None:
    n = 5000
    counts = two_token_joint(accept_everything, n)
    expected = np.outer(P0, P1).ravel() * n
    assert chisquare(counts.ravel(), expected).pvalue < 1e-6


ONE = SamplingParams(temperature=1.0)  # on log-probabilities, draws follow p itself


def test_one_hot_drafts_with_position_uniforms_reproduce_the_target_distribution() -> None:
    n = 20000

    def coupled(d, q, p, rng):
        return couple_to_draws(d, np.log(p), ONE, rng.random(len(d) + 1))

    counts = two_token_joint(coupled, n, one_hot_draft=1)
    assert chisquare(counts.ravel(), np.outer(P0, P1).ravel() * n).pvalue > 0.01


def test_with_position_uniforms_the_output_does_not_depend_on_the_draft() -> None:
    """What makes a seed reproducible whatever the controller drafted."""
    rng = np.random.default_rng(3)
    p = np.stack([P0, P1, P0, P1])
    for _ in range(500):
        u = rng.random(4)
        plain = [sample_at(p[i], u[i]) for i in range(4)]
        k = int(rng.integers(0, 4))
        d = rng.integers(0, 6, size=k)
        v = couple_to_draws(d, np.log(p[: k + 1]), ONE, u[: k + 1])
        out = [*d[: v.n_accepted].tolist(), v.next_token]
        assert out == plain[: len(out)]


@pytest.mark.parametrize("params", [
    SamplingParams(temperature=0.7), SamplingParams(temperature=1.3), SamplingParams(),
    SamplingParams(temperature=0.7, top_k=40), SamplingParams(temperature=0.9, top_p=0.9, min_p=0.05),
])
def test_draw_is_the_inverse_cdf_of_the_transformed_distribution(params: SamplingParams) -> None:
    """The shortcut for temperature alone skips the normalization, not the transform."""
    rng = np.random.default_rng(11)
    logits = (rng.standard_normal(5000) * 4).astype(np.float32)
    before = logits.copy()
    draws = [draw(logits, params, u) for u in rng.random(300)]
    assert np.array_equal(logits, before)  # the caller's row is left alone
    rng = np.random.default_rng(11)
    rng.standard_normal(5000)
    assert draws == [sample_at(probs_from_logits(logits, params)[0], u) for u in rng.random(300)]
    assert (len(set(draws)) == 1) == params.greedy  # sampled rows reach past the argmax
