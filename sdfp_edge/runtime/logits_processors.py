"""What a request does to logits besides the sampling transform: penalties, a grammar, logprobs.

The engine calls one `LogitsProcessor` at the two places where logits are read:

    apply(history, logits, drafted)   the target's verify rows [k+1, V] (row i follows
                                      history + drafted[:i]) and each draft step's row [1, V]
                                      (history = the text + what was drafted so far)
    accept(emitted, raw)              after a verify: the emitted tokens and the target's raw
                                      rows they were chosen from (row i for emitted[i])

Per row, in llama.cpp's order: logit bias, penalties, DRY (dry.py), the grammar, and with
mirostat its truncation (mirostat's chain has no penalties or DRY, as in llama.cpp). Mirostat's
state mu is a function of the text: row i of a verify is truncated with the mu that the
drafts before it would leave, and `accept` commits mu for the emitted tokens only.
These are applied to the target's and the draft's rows alike. What makes
speculation exact is the target: its row i is transformed with the text it follows, so greedy
output equals plain decoding with the same settings and sampling draws from the transformed
target distribution. The draft gets the same transform only so that it is accepted more often.
Log-probabilities come from the target's raw rows (before penalties and grammar), as
llama.cpp's server reports them by default; never from a draft.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from sdfp_edge.errors import InvalidRequestError
from sdfp_edge.runtime.dry import Dry
from sdfp_edge.runtime.grammar import Grammar
from sdfp_edge.runtime.sampler_chain import mirostat_mask

MAX_TOP_LOGPROBS = 20


@dataclass(frozen=True)
class Penalties:
    """llama.cpp's penalties sampler: over the last `last_n` tokens of prompt and output (-1: all),
    a token seen c times gets its logit divided by `repeat` (multiplied when <= 0), then
    `frequency * c + presence` subtracted."""

    presence: float = 0.0
    frequency: float = 0.0
    repeat: float = 1.0
    last_n: int = 64

    def __post_init__(self) -> None:
        for name, v, lo, hi in (("presence_penalty", self.presence, -2.0, 2.0),
                                ("frequency_penalty", self.frequency, -2.0, 2.0),
                                ("repeat_penalty", self.repeat, 0.0, 10.0)):
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or not lo <= v <= hi:
                raise InvalidRequestError(f"{name} must be a number in [{lo}, {hi}], got {v!r}")
        if self.repeat == 0:
            raise InvalidRequestError("repeat_penalty must be > 0 (1 = off)")
        if not isinstance(self.last_n, int) or isinstance(self.last_n, bool) or self.last_n < -1:
            raise InvalidRequestError(f"repeat_last_n must be an integer >= -1, got {self.last_n!r}")

    @property
    def active(self) -> bool:
        return self.last_n != 0 and (self.presence != 0 or self.frequency != 0 or self.repeat != 1)

    def apply(self, history: Sequence[int], row: npt.NDArray[np.float32]) -> None:
        """Penalize one logits row [V] in place, in float32 as llama.cpp does."""
        window = history if self.last_n < 0 else history[max(0, len(history) - self.last_n):]
        if not len(window):
            return
        ids, counts = np.unique(np.asarray(window, dtype=np.int64), return_counts=True)
        x = row[ids]
        x = np.where(x <= 0, x * np.float32(self.repeat), x / np.float32(self.repeat)).astype(np.float32)
        x -= counts.astype(np.float32) * np.float32(self.frequency) + np.float32(self.presence)
        row[ids] = x


@dataclass
class Mirostat:
    """Mirostat's settings and its state mu (2 tau at the start, as llama.cpp resets it)."""

    version: int
    temperature: float
    tau: float = 5.0
    eta: float = 0.1
    n_vocab: int = 0
    mu: float = field(default=float("nan"))

    def __post_init__(self) -> None:
        if self.mu != self.mu:
            self.mu = 2.0 * self.tau

    def candidates(self, row: npt.NDArray[np.float32], mu: float) -> tuple[np.ndarray, np.ndarray]:
        return mirostat_mask(row, self.temperature, self.version, mu, self.n_vocab or len(row))

    def update(self, mu: float, ids: np.ndarray, q: np.ndarray, token: int) -> float:
        """mu after `token` was drawn from the candidates (ids, q): mu - eta (surprise - tau)."""
        hit = np.nonzero(ids == token)[0]
        if not len(hit):  # a drafted token outside the candidates: rejected, the rows after it unused
            return mu
        surprise = -math.log2(float(q[hit[0]]))
        return float(np.float32(mu - self.eta * (surprise - self.tau)))


@dataclass
class TokenLogprob:
    """One emitted token's log-probability under the target, and the most likely alternatives."""

    token: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)  # (token, logprob), most likely first


def log_softmax(row: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
    x = np.asarray(row, dtype=np.float64)
    m = np.max(x)
    return x - (m + np.log(np.sum(np.exp(x - m))))


def token_logprob(token: int, row: npt.NDArray[np.floating], top_n: int) -> TokenLogprob:
    lp = log_softmax(row)
    top: list[tuple[int, float]] = []
    if top_n > 0:
        best = np.argpartition(-lp, top_n - 1)[:top_n]
        best = best[np.argsort(-lp[best], kind="stable")]
        top = [(int(t), float(lp[t])) for t in best]
    return TokenLogprob(int(token), float(lp[token]), top)


class LogitsProcessor:
    """One request's penalties, grammar and log-probabilities (see the module docstring).

    Args:
        penalties: None or inactive: none.
        grammar: the grammar state at the start of the output; None: unconstrained.
        greedy: only the best allowed token matters (the grammar then examines the likeliest
            tokens only, not the whole vocabulary).
        top_logprobs: None: no log-probabilities; n >= 0: the emitted token's and the n best.
        is_eog: end-of-generation tokens end the output and never reach the grammar.
    """

    def __init__(self, *, penalties: Penalties | None = None, grammar: Grammar | None = None,
                 greedy: bool = True, top_logprobs: int | None = None,
                 is_eog: Callable[[int], bool] = lambda t: False, dry: Dry | None = None,
                 logit_bias: dict[int, float] | None = None, mirostat: Mirostat | None = None) -> None:
        if top_logprobs is not None and not 0 <= top_logprobs <= MAX_TOP_LOGPROBS:
            raise InvalidRequestError(f"top_logprobs must be in 0..{MAX_TOP_LOGPROBS}, got {top_logprobs}")
        self.mirostat = mirostat if mirostat is not None and not greedy else None
        text_samplers = self.mirostat is None  # mirostat's chain: logit bias, temperature, mirostat
        self.penalties = penalties if text_samplers and penalties is not None and penalties.active else None
        self.dry = dry if text_samplers and dry is not None and dry.active else None
        self.logit_bias = dict(logit_bias or {})
        self._bias = (np.fromiter(self.logit_bias, dtype=np.int64, count=len(self.logit_bias)),
                      np.fromiter(self.logit_bias.values(), dtype=np.float32, count=len(self.logit_bias)))
        self._miro_rows: list[tuple[np.ndarray, np.ndarray]] = []  # the last verify's mirostat candidates
        self.grammar = grammar
        self.greedy = greedy
        self.top_logprobs = top_logprobs
        self.is_eog = is_eog
        self.logprobs: list[TokenLogprob] = []  # one per emitted token, in order
        self._committed = -1  # length of the text the committed grammar state follows (-1: not seen yet)
        self._scratch: tuple[list[int], Grammar] | None = None  # (drafted tokens, a clone that accepted them)

    @property
    def changes_logits(self) -> bool:
        return (self.penalties is not None or self.grammar is not None or self.dry is not None
                or bool(self.logit_bias) or self.mirostat is not None)

    def apply(self, history: Sequence[int], logits: npt.NDArray[np.floating],
              drafted: Sequence[int] = ()) -> npt.NDArray[np.float32]:
        """Rows [n, V] -> transformed rows [n, V].

        `history` is the text so far (prompt and emitted tokens). The rows are the last n of
        the distributions after history + drafted[:i], i = 0..len(drafted): a verify passes
        k drafts and k+1 rows, a draft step the tokens drafted so far and one row. Rows after
        a drafted token the grammar forbids are left as they are: the draft is rejected at
        that token, so they are never used.
        """
        out = np.array(logits, dtype=np.float32, copy=True)
        if not self.changes_logits:
            return out
        first = len(drafted) + 1 - len(out)
        if first < 0:
            raise ValueError(f"{len(out)} rows for {len(drafted)} drafted tokens")
        if self._committed < 0:
            self._committed = len(history)
        elif len(history) != self._committed:
            raise ValueError(f"history of {len(history)} tokens, but {self._committed} were emitted")
        drafted = [int(t) for t in drafted]
        text = [*history, *drafted[:first]]
        grammar = self._grammar_after(drafted[:first]) if self.grammar is not None else None
        mu = self.mirostat.mu if self.mirostat is not None else 0.0
        if first == 0:
            self._miro_rows = []
        for r in range(len(out)):
            if len(self._bias[0]):
                out[r, self._bias[0]] += self._bias[1]
            if self.penalties is not None:
                self.penalties.apply(text, out[r])
            if self.dry is not None:
                self.dry.apply(text, out[r])
            if grammar is not None:
                out[r] = grammar.mask_top(out[r]) if self.greedy else grammar.mask(out[r])
                if not np.isfinite(out[r]).any():
                    raise InvalidRequestError("the grammar allows no token at this point of the output")
            i = first + r
            if self.mirostat is not None:
                ids, q = self.mirostat.candidates(out[r], mu)
                masked = np.full_like(out[r], -np.inf)
                masked[ids] = out[r][ids]
                out[r] = masked
                if first == 0:
                    self._miro_rows.append((ids, q))
                if i < len(drafted):  # the mu the next row sees if this draft is kept
                    mu = self.mirostat.update(mu, ids, q, drafted[i])
            if i < len(drafted):
                if grammar is not None and not self._advance(grammar, drafted[: i + 1]):
                    break
                text.append(drafted[i])
        return out

    def accept(self, emitted: Sequence[int], raw: npt.NDArray[np.floating]) -> None:
        """The tokens a verify emitted; raw [>= len(emitted), V]: the target's rows for them."""
        if self.top_logprobs is not None:
            self.logprobs.extend(token_logprob(int(t), raw[i], self.top_logprobs) for i, t in enumerate(emitted))
        if self.grammar is not None:
            self.grammar.accept_all([int(t) for t in emitted if not self.is_eog(int(t))])
        if self.mirostat is not None:
            if len(self._miro_rows) < len(emitted):
                raise ValueError("mirostat: accept() without the verify rows of these tokens")
            for (ids, q), t in zip(self._miro_rows, emitted):
                self.mirostat.mu = self.mirostat.update(self.mirostat.mu, ids, q, int(t))
            self._miro_rows = []
        if self._committed >= 0:
            self._committed += len(emitted)
        self._scratch = None

    def _grammar_after(self, drafted: list[int]) -> Grammar | None:
        """A grammar state after the emitted text + `drafted` (a clone: the committed state stays);
        None when a drafted token is forbidden (a draft drafting on past one: left unmasked).

        Drafting extends the same clone token by token, so each draft step accepts only its
        newest token.
        """
        assert self.grammar is not None
        if self._scratch is not None and drafted[: len(self._scratch[0])] == self._scratch[0]:
            g = self._scratch[1]
        else:
            g = self.grammar.clone()
            self._scratch = ([], g)
        return g if self._advance(g, drafted) else None

    def _advance(self, g: Grammar, drafted: list[int]) -> bool:
        """Bring the scratch clone `g` to `drafted` (which extends what it has accepted)."""
        assert self._scratch is not None and self._scratch[1] is g
        seen = self._scratch[0]
        ok = g.accept_all([t for t in drafted[len(seen):] if not self.is_eog(t)])
        self._scratch = (list(drafted), g) if ok else None
        return ok
