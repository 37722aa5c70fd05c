"""llama.cpp's sampler chain on one logits row (pure numpy), its defaults and its names.

The chain is common/sampling.cpp's (the pinned llama.cpp): logit bias first, then the
samplers in `samplers` order (default: penalties;dry;top_n_sigma;top_k;typ_p;top_p;min_p;
xtc;temperature), then a draw; with mirostat (1 or 2) instead: logit bias, temperature,
mirostat. Each transform follows src/llama-sampler.cpp (min_keep = 0, as common's default).

Text-dependent samplers (penalties, DRY, mirostat's state) and logit bias change logits
and live in logits_processors.py, which sees each verify row with the text up to that row.
This module holds the per-row transforms that depend on the row alone: top-n-sigma, top-k,
typical-p, top-p, min-p, XTC and temperature. XTC is stochastic: with probability
`xtc_probability` it removes the likeliest tokens. Its marginal distribution for the next
token is the mixture (1 - P) * chain-without-xtc + P * chain-with-xtc, and since llama.cpp
draws its coin independently per token, sampling from that mixture is sampling what
llama.cpp samples; it is a fixed function of the row, so speculation stays exact with it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from sdfp_edge.errors import InvalidRequestError

DEFAULT_ORDER = ("penalties", "dry", "top_n_sigma", "top_k", "typ_p", "top_p", "min_p", "xtc", "temperature")
TEXT_SAMPLERS = ("penalties", "dry")  # applied by the LogitsProcessor, before the row samplers

# common/common.h's common_params_sampling (the pinned llama.cpp), under this project's names
LLAMA_DEFAULTS: dict[str, Any] = {
    "temperature": 0.8, "top_k": 40, "top_p": 0.95, "min_p": 0.05, "typical_p": 1.0, "top_n_sigma": -1.0,
    "xtc_probability": 0.0, "xtc_threshold": 0.1, "mirostat": 0, "mirostat_tau": 5.0, "mirostat_eta": 0.1,
    "samplers": DEFAULT_ORDER, "repeat_penalty": 1.0, "presence_penalty": 0.0, "frequency_penalty": 0.0,
    "repeat_last_n": 64, "dry_multiplier": 0.0, "dry_base": 1.75, "dry_allowed_length": 2,
    "dry_penalty_last_n": 64, "dry_sequence_breakers": ("\n", ":", "\"", "*"),
}

_CANONICAL = {"dry", "top_k", "top_p", "top_n_sigma", "typ_p", "min_p", "temperature", "xtc", "penalties"}
_ALIASES = {"nucleus": "top_p", "temp": "temperature", "typ": "typ_p"}
for _name in list(_CANONICAL):
    if "_" in _name:
        _ALIASES[_name.replace("_", "-")] = _name
        _ALIASES[_name.replace("_", "")] = _name
_ALIASES.update({"typical_p": "typ_p", "typical-p": "typ_p", "typicalp": "typ_p"})  # common also accepts these
_CHARS = {"d": "dry", "k": "top_k", "y": "typ_p", "p": "top_p", "s": "top_n_sigma", "m": "min_p",
          "t": "temperature", "x": "xtc", "e": "penalties"}


def parse_samplers(value: str | Sequence[str]) -> tuple[str, ...]:
    """'top_k;temperature' (llama.cpp's --samplers), a list of names, or 'kt' (--sampling-seq)."""
    if isinstance(value, str):
        v = value.strip()
        if ";" not in v and v not in _CANONICAL and v not in _ALIASES and v and all(c in _CHARS for c in v):
            names = [_CHARS[c] for c in v]
        else:
            names = [n for n in v.split(";") if n.strip()]
    else:
        names = list(value)
    out = []
    for n in names:
        n = str(n).strip().lower()
        n = _ALIASES.get(n, n)
        if n not in _CANONICAL:
            raise InvalidRequestError(f"unknown sampler '{n}' (known: {', '.join(DEFAULT_ORDER)})")
        out.append(n)
    check_order(out)
    return tuple(out)


def check_order(order: Sequence[str]) -> None:
    """Penalties and DRY change logits with the text so far; they are applied to each row before
    the row samplers, so an order must name them before any other sampler."""
    seen_row = False
    for n in order:
        if n in TEXT_SAMPLERS and seen_row:
            raise InvalidRequestError(f"samplers: '{n}' must come before the other samplers "
                                      f"(penalties and dry run first on each row), got {';'.join(order)}")
        seen_row = seen_row or n not in TEXT_SAMPLERS


def _softmax(v: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    e = np.exp(v - np.max(v))
    return e / e.sum()


def _top_k(ids: np.ndarray, v: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    if k <= 0 or k >= len(v):
        return ids, v
    keep = np.argpartition(-v, k - 1)[:k]
    return ids[keep], v[keep]


def _top_p(ids: np.ndarray, v: np.ndarray, p: float) -> tuple[np.ndarray, np.ndarray]:
    if p >= 1.0:
        return ids, v
    e = np.exp(v - np.max(v))
    total = e.sum()
    head = min(len(v), 256)  # as llama.cpp: sort the likeliest 256 first, all of them if they fall short
    while True:
        order = np.argpartition(-v, head - 1)[:head] if head < len(v) else np.arange(len(v))
        order = order[np.argsort(-v[order], kind="stable")]
        probs = e[order] / total
        before = np.cumsum(probs) - probs
        n = int(np.count_nonzero(before < p))  # up to the token whose sum reaches p
        if n < head or head == len(v):
            keep = order[: max(1, n)]
            return ids[keep], v[keep]
        head = len(v)


def _min_p(ids: np.ndarray, v: np.ndarray, p: float) -> tuple[np.ndarray, np.ndarray]:
    if p <= 0.0:
        return ids, v
    keep = v >= np.max(v) + math.log(p)
    return ids[keep], v[keep]


def _typical(ids: np.ndarray, v: np.ndarray, p: float) -> tuple[np.ndarray, np.ndarray]:
    if p >= 1.0:
        return ids, v
    probs = _softmax(v)
    with np.errstate(divide="ignore", invalid="ignore"):
        logp = np.log(probs)
        entropy = -np.sum(np.where(probs > 0, probs * logp, 0.0))
        shifted = np.abs(-logp - entropy)
    order = np.argsort(shifted, kind="stable")
    cum = np.cumsum(probs[order])
    over = np.nonzero(cum > p)[0]
    last = int(over[0]) + 1 if len(over) else len(order)
    keep = order[:last]
    return ids[keep], v[keep]


def _top_n_sigma(ids: np.ndarray, v: np.ndarray, n: float) -> tuple[np.ndarray, np.ndarray]:
    if n <= 0.0 or len(v) <= 1:
        return ids, v
    keep = v >= np.max(v) - n * np.std(v)
    return ids[keep], v[keep]


def _xtc_cut(ids: np.ndarray, v: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray] | None:
    """The candidates XTC leaves when its coin says apply; None: it would change nothing."""
    order = np.argsort(-v, kind="stable")
    probs = _softmax(v[order])
    above = int(np.count_nonzero(probs >= threshold))  # sorted: a prefix; pos_last = above - 1
    if above - 1 <= 0:
        return None
    keep = order[above - 1:]
    return ids[keep], v[keep]


def xtc_active(params: Any) -> bool:
    return params.xtc_probability > 0.0 and params.xtc_threshold <= 0.5 and "xtc" in params.samplers


# top-k first (llama.cpp's default chain): its k likeliest tokens are among those this many
# logits below the row's top whenever at least k are, so only those are converted and ranked
NEAR_TOP = (8.0, 16.0)


def _top_k_first(params: Any) -> bool:
    """Whether top-k is the first row sampler that changes anything (in the default order the
    ones before it are the text samplers, applied earlier, and top-n-sigma, off by default)."""
    for name in params.samplers:
        if name == "top_k":
            return params.top_k > 0
        if name not in TEXT_SAMPLERS and not (name == "top_n_sigma" and params.top_n_sigma <= 0):
            return False
    return False


def _near_top(x: npt.NDArray[np.floating], k: int) -> np.ndarray | None:
    """The ids of every token within NEAR_TOP logits of the row's top, if at least k are: each
    of them is above every other token, so they hold the k likeliest. None: fewer (or no finite top)."""
    top = float(np.max(x))
    if not math.isfinite(top):
        return None
    for margin in NEAR_TOP:
        ids = np.flatnonzero(x >= np.float64(top - margin))
        if len(ids) >= k:
            return ids
    return None


def chain_components(x: npt.NDArray[np.floating], params: Any) -> list[tuple[float, np.ndarray, np.ndarray]]:
    """One row [V] through the row samplers of `params.samplers`: a mixture of (weight,
    candidate ids, their final logits, float64); one component unless XTC is active.

    With top-k first and k below the vocabulary (llama.cpp's default: 40), only the tokens near
    the top are ranked: on SmolLM2's own rows at temperature 0.7 and llama.cpp's defaults (82 to
    2,959 tokens near the top) a draw took 0.11 ms instead of 0.21 (2-vCPU Xeon VM, 2026-12-05).
    Ties at the k-th logit may keep another of the tied tokens than ranking the whole row would
    (llama.cpp's partial sort has its own order)."""
    near = _near_top(x, params.top_k) if _top_k_first(params) and params.top_k < len(x) else None
    if near is not None:
        ids, v0 = near, np.asarray(x[near], dtype=np.float64)
    else:
        x = np.asarray(x, dtype=np.float64)
        if np.isneginf(x).any():
            ids = np.nonzero(np.isfinite(x))[0]
            v0 = x[ids]
        else:
            ids, v0 = np.arange(len(x)), x
    parts: list[tuple[float, np.ndarray, np.ndarray]] = [(1.0, ids, v0)]
    for name in params.samplers:
        nxt = []
        for w, i, v in parts:
            if name == "top_k":
                i, v = _top_k(i, v, params.top_k)
            elif name == "top_p":
                i, v = _top_p(i, v, params.top_p)
            elif name == "min_p":
                i, v = _min_p(i, v, params.min_p)
            elif name == "typ_p":
                i, v = _typical(i, v, params.typical_p)
            elif name == "top_n_sigma":
                i, v = _top_n_sigma(i, v, params.top_n_sigma)
            elif name == "temperature":
                if params.temperature <= 0:
                    j = int(np.argmax(v))
                    i, v = i[j : j + 1], v[j : j + 1]
                else:
                    v = v / params.temperature
            elif name == "xtc" and xtc_active(params) and len(v) >= 2:
                cut = _xtc_cut(i, v, params.xtc_threshold)
                if cut is not None:
                    nxt.append((w * params.xtc_probability, *cut))
                    w *= 1.0 - params.xtc_probability
                    if w == 0.0:
                        continue
            nxt.append((w, i, v))
        parts = nxt
    return parts


def chain_probs(x: npt.NDArray[np.float64], params: Any) -> npt.NDArray[np.float64]:
    """The chain's distribution over the vocabulary for one row [V]."""
    out = np.zeros(len(x))
    for w, i, v in chain_components(x, params):
        np.add.at(out, i, w * _softmax(v))
    return out


def chain_draw(x: npt.NDArray[np.floating], params: Any, u: float) -> int:
    """sample_at(chain_probs(x, params), u) without a vocabulary-sized cumulative sum: the
    inverse CDF over the candidates in token-id order (the order the full row has)."""
    parts = chain_components(x, params)
    if len(parts) == 1:
        ids, probs = parts[0][1], _softmax(parts[0][2])
    else:
        ids = np.unique(np.concatenate([i for _, i, _ in parts]))
        probs = np.zeros(len(ids))
        for w, i, v in parts:
            np.add.at(probs, np.searchsorted(ids, i), w * _softmax(v))
    order = np.argsort(ids)
    cdf = np.cumsum(probs[order])
    j = int(min(np.searchsorted(cdf, u * cdf[-1], side="right"), len(cdf) - 1))
    return int(ids[order][j])


def mirostat_mask(x: npt.NDArray[np.float32], temperature: float, version: int, mu: float,
                  n_vocab: int, m: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Mirostat's candidates after temperature (ids, their probabilities renormalized).

    v1 (llama_sampler_mirostat): estimate Zipf's s from the m likeliest tokens, keep the top
    k tokens it implies for the target surprise mu; v2: keep the tokens whose surprise
    -log2 p is at most mu (at least one). Probabilities in float32 as llama.cpp's."""
    finite = np.isfinite(x)
    ids = np.nonzero(finite)[0]
    v = np.asarray(x[ids], dtype=np.float32) / np.float32(temperature)
    order = np.lexsort((ids, -v))
    ids, v = ids[order], v[order]
    p = np.exp(v - v[0]).astype(np.float32)
    p /= p.sum(dtype=np.float32)
    if version == 1:
        n = min(m - 1, len(p) - 1)
        i = np.arange(n)
        t = np.log((i + 2.0) / (i + 1.0)).astype(np.float32)
        b = np.log(p[:n] / p[1 : n + 1]).astype(np.float32)
        s_hat = float(np.sum(t * b) / np.sum(t * t)) if n > 0 else 1.0
        eps = s_hat - 1.0
        with np.errstate(all="ignore"):
            k = (eps * 2.0 ** mu / (1 - n_vocab ** (-eps))) ** (1 / s_hat)
        keep = max(int(k) if math.isfinite(k) else len(p), 1)
    else:
        surprise = -np.log2(p)
        over = np.nonzero(surprise > mu)[0]
        keep = max(int(over[0]) if len(over) else len(p), 1)
    ids, v = ids[:keep], v[:keep]
    q = np.exp(v - v[0]).astype(np.float32)
    return ids, q / q.sum(dtype=np.float32)


def describe(values: dict[str, Any]) -> str:
    """A one-line summary of what a chain does (for --verbose, /stats and the server log)."""
    order = tuple(values.get("samplers", DEFAULT_ORDER))
    off = {"top_k": 0, "top_p": 1.0, "min_p": 0.0, "typical_p": 1.0, "top_n_sigma": -1.0, "xtc_probability": 0.0,
           "repeat_penalty": 1.0, "presence_penalty": 0.0, "frequency_penalty": 0.0, "dry_multiplier": 0.0}
    sampler_of = {"top_k": "top_k", "top_p": "top_p", "min_p": "min_p", "typical_p": "typ_p",
                  "top_n_sigma": "top_n_sigma", "xtc_probability": "xtc", "repeat_penalty": "penalties",
                  "presence_penalty": "penalties", "frequency_penalty": "penalties", "dry_multiplier": "dry"}
    if values.get("temperature", 0) == 0:
        head = "greedy (temperature 0)"
        keys = ["repeat_penalty", "presence_penalty", "frequency_penalty", "dry_multiplier"]
    elif values.get("mirostat"):
        return (f"mirostat v{values['mirostat']} tau {values['mirostat_tau']} eta {values['mirostat_eta']}, "
                f"temperature {values['temperature']}")
    else:
        head = f"temperature {values['temperature']}"
        keys = list(off)
    on = [f"{k} {values[k]}" for k in keys
          if k in values and values[k] != off[k] and sampler_of[k] in order
          and not (k == "top_n_sigma" and values[k] <= 0)]
    tail = "" if order == DEFAULT_ORDER else f"; order {';'.join(order)}"
    return ", ".join([head, *on]) + tail


GIVEN, FROM_GGUF, FROM_LLAMA = "given", "GGUF general.sampling", "llama.cpp default"


def resolve_defaults(gguf: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """Every sampling option's default for a model: its GGUF's recommended value, else
    llama.cpp's; and where each came from. `gguf`: metadata.sampling_metadata's result,
    already checked (api.Model drops a value it cannot use, with a note)."""
    values, sources = dict(LLAMA_DEFAULTS), dict.fromkeys(LLAMA_DEFAULTS, FROM_LLAMA)
    for k, v in gguf.items():
        values[k] = parse_samplers(v) if k == "samplers" else v
        sources[k] = FROM_GGUF
    return values, sources
