"""DRY ("don't repeat yourself"), llama.cpp's llama_sampler_dry in numpy.

A token that would extend a sequence which already occurred in the last `last_n` tokens
(prompt and output) loses multiplier * base ^ (length - allowed_length) from its logit,
where length is the longest such repeated sequence it would continue (at least
allowed_length). Sequence breakers (by default newline, ':', '"', '*') cut the lookback:
repetition never spans one. A breaker string is matched against token texts as llama.cpp
does (get_overlapping_token_sequences): a token containing it is a one-token breaker;
a token ending in its first characters starts one whose tail is the rest, tokenized.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from sdfp_edge.errors import InvalidRequestError

MAX_CHAR_LEN, MAX_SEQ_LEN = 40, 20  # llama.cpp's limits on a breaker string and its tail
Breakers = dict[int, list[tuple[int, ...]]]  # head token -> tails (empty: a one-token breaker)


def breaker_table(strings: Sequence[str], n_vocab: int, token_bytes: Callable[[int], bytes],
                  tokenize: Callable[[bytes], list[int]]) -> Breakers:
    """llama.cpp's processed breakers for `strings`, over the whole vocabulary."""
    table: Breakers = {}
    texts = [token_bytes(t) for t in range(n_vocab)] if strings else []
    for s in strings:
        b = s.encode("utf-8")[:MAX_CHAR_LEN]
        if not b:
            continue
        for tok, word in enumerate(texts):
            if b in word:
                tails = table.setdefault(tok, [])
                if () not in tails:
                    tails.append(())
                continue
            pos = word.find(b[:1])
            while pos >= 0:
                i = 1
                while i < len(b) and pos + i < len(word) and word[pos + i] == b[i]:
                    i += 1
                if i == len(b) or pos + i == len(word):  # the word ends inside the breaker
                    tail = tuple(tokenize(b[i:])[:MAX_SEQ_LEN])
                    tails = table.setdefault(tok, [])
                    if tail not in tails:
                        tails.append(tail)
                pos = word.find(b[:1], pos + 1)
    return table


@dataclass(frozen=True)
class Dry:
    multiplier: float = 0.0  # 0: off
    base: float = 1.75
    allowed_length: int = 2
    last_n: int = 64  # -1: the whole text; 0: off
    breakers: Breakers = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        for name, v in (("dry_multiplier", self.multiplier), ("dry_base", self.base)):
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v < 0:
                raise InvalidRequestError(f"{name} must be a finite number >= 0, got {v!r}")
        for name, v, lo in (("dry_allowed_length", self.allowed_length, 0), ("dry_penalty_last_n", self.last_n, -1)):
            if not isinstance(v, int) or isinstance(v, bool) or v < lo:
                raise InvalidRequestError(f"{name} must be an integer >= {lo}, got {v!r}")

    @property
    def active(self) -> bool:
        return self.multiplier != 0.0 and self.base >= 1.0 and self.last_n != 0

    def penalties(self, history: Sequence[int]) -> dict[int, float]:
        """token -> what DRY subtracts from its logit after `history`."""
        n = len(history) if self.last_n < 0 else min(len(history), self.last_n)
        if not self.active or n <= self.allowed_length:
            return {}
        r = np.asarray(history[len(history) - n:], dtype=np.int64)[::-1]  # r[i]: i tokens from the end
        rep_limit = n
        for i in range(n):  # the nearest breaker bounds how far back a repetition may reach
            tails = self.breakers.get(int(r[i]))
            if not tails:
                continue
            longest = max((len(t) for t in tails if len(t) <= i and all(t[o] == r[i - o - 1] for o in range(len(t)))),
                          default=-1)
            if longest >= 0:
                rep_limit = i - longest
                break
        if rep_limit < self.allowed_length:
            return {}
        best: dict[int, int] = {}
        for k in range(1, n):  # the text's suffix also ends k tokens back, for m tokens
            eq = r[: n - k] == r[k:]
            m = min(n - k if eq.all() else int(np.argmin(eq)), rep_limit)
            if m >= self.allowed_length:
                tok = int(r[k - 1])  # the token that followed that earlier occurrence
                best[tok] = max(best.get(tok, 0), m)
        max_exp = int(88.7228391 / math.log(self.base)) if self.base > 1.000001 else 0
        out = {}
        for tok, m in best.items():
            if () in self.breakers.get(tok, ()):
                continue
            e = m - self.allowed_length
            if max_exp > 0 and e > max_exp:
                e = max_exp
            out[tok] = float(np.float32(self.multiplier) * np.float32(self.base) ** np.float32(e))
        return out

    def apply(self, history: Sequence[int], row: npt.NDArray[np.float32]) -> None:
        """Penalize one logits row [V] in place."""
        for tok, pen in self.penalties(history).items():
            row[tok] -= np.float32(pen)
