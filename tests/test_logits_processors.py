"""Penalties and logprobs through the speculative loop (logits_processors.py).

Unit level: the numpy penalties equal llama.cpp's own penalties sampler; the real engine on
bigram stand-ins for target and draft keeps greedy output equal to plain decoding with the
same penalties, and sampled output follows the penalized target distribution (chi-square,
with a processor that forgets the drafted tokens as the control that must fail). Model
level (SmolLM2): the same, and logprobs are the target's, never the draft's.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from scipy.stats import chisquare

from sdfp_edge.api import Model
from sdfp_edge.runtime.backend import LlamaBackend, common_prefix_len
from sdfp_edge.runtime.drafters import DraftModelDrafter, PromptLookupDrafter
from sdfp_edge.runtime.engine import GenerationStats, SpeculativeDecoder
from sdfp_edge.errors import InvalidRequestError
from sdfp_edge.runtime.logits_processors import LogitsProcessor, Penalties, log_softmax
from sdfp_edge.runtime.sampling import SamplingParams, softmax

PEN = Penalties(presence=1.5, frequency=0.5, repeat=1.3, last_n=-1)


def llama_cpp_penalized(row: npt.NDArray[np.float32], history: Sequence[int], pen: Penalties) -> npt.NDArray[np.float32]:
    """The reference: llama.cpp's penalties sampler, fed the history, applied to the row."""
    import llama_cpp as L

    n = len(row)
    smpl = L.llama_sampler_init_penalties(n, pen.last_n if pen.last_n >= 0 else len(history) + 1,
                                          pen.repeat, pen.frequency, pen.presence)
    try:
        for t in history:
            L.llama_sampler_accept(smpl, t)
        data = (L.llama_token_data * n)(*[L.llama_token_data(i, float(x), 0.0) for i, x in enumerate(row)])
        arr = L.llama_token_data_array(data=ctypes.cast(data, ctypes.POINTER(L.llama_token_data)), size=n,
                                       selected=-1, sorted=False)
        L.llama_sampler_apply(smpl, ctypes.byref(arr))
        out = np.empty(n, dtype=np.float32)
        for d in data[:n]:
            out[d.id] = d.logit
        return out
    finally:
        L.llama_sampler_free(smpl)


@pytest.mark.parametrize("pen", [PEN, Penalties(presence=-0.7, frequency=1.1, repeat=0.8, last_n=5),
                                 Penalties(repeat=1.1, last_n=64), Penalties(frequency=0.3, last_n=1)])
def test_penalties_equal_llama_cpp_bit_for_bit(pen: Penalties) -> None:
    rng = np.random.default_rng(1)
    for _ in range(20):
        row = rng.normal(scale=4, size=300).astype(np.float32)
        history = rng.integers(0, 300, size=int(rng.integers(0, 90))).tolist()
        ours = row.copy()
        pen.apply(history, ours)
        assert ours.tobytes() == llama_cpp_penalized(row, history, pen).tobytes()


@pytest.mark.parametrize("kwargs", [{"presence": 2.5}, {"frequency": float("nan")}, {"repeat": 0.0},
                                    {"repeat": -1.0}, {"last_n": -2}, {"presence": True}])
def test_bad_penalties_are_refused(kwargs: dict) -> None:
    with pytest.raises(InvalidRequestError):
        Penalties(**kwargs)


# --- the engine on bigram stand-ins ----------------------------------------------------------
class BigramBackend:
    """Stands in for LlamaBackend: the next token's logits are table[last token]."""

    can_rollback = True  # its KV is a list: any suffix can be cut

    def __init__(self, table: npt.NDArray[np.float32], n_ctx: int = 256) -> None:
        self.table, self.n_vocab, self.n_ctx = table, table.shape[1], n_ctx
        self.kv_tokens: list[int] = []
        self.bos_token = 0

    @property
    def n_past(self) -> int:
        return len(self.kv_tokens)

    def decode(self, tokens: Sequence[int], *, logits: str = "all") -> npt.NDArray[np.float32]:
        self.kv_tokens.extend(tokens)
        rows = self.table[list(tokens)]
        return rows.copy() if logits == "all" else rows[-1:].copy()

    def truncate(self, n_past: int) -> None:
        del self.kv_tokens[n_past:]

    def sync(self, context: Sequence[int]) -> int:  # as a draft model's backend
        keep = common_prefix_len(self.kv_tokens, context)
        self.truncate(keep)
        self.kv_tokens.extend(context[keep:])
        return keep

    def prefill(self, prompt: Sequence[int]) -> tuple[int, npt.NDArray[np.float32]]:
        keep = min(common_prefix_len(self.kv_tokens, prompt), len(prompt) - 1)
        self.truncate(keep)
        return keep, self.decode(prompt[keep:], logits="last")[-1]

    def set_skip(self, layers: object) -> None:
        pass

    def is_eog(self, token: int) -> bool:
        return False


V = 5
_rng = np.random.default_rng(7)
TARGET = (_rng.normal(size=(V, V)) + 2.5 * np.eye(V)).astype(np.float32)  # likes to repeat itself
TARGET[2, 3] += 3.0  # and 3 after 2, as the prompt does
DRAFT = (TARGET + _rng.normal(scale=0.6, size=(V, V))).astype(np.float32)  # close, not equal
PROMPT = [1, 2, 3, 1, 2]  # prompt lookup drafts 3 after "1 2"
# a short window: the second row's penalties differ visibly with and without the drafted token
PEN_SHORT = Penalties(presence=1.5, frequency=0.5, repeat=1.3, last_n=2)


def decoder(mode: str) -> SpeculativeDecoder:
    drafters = [PromptLookupDrafter(), DraftModelDrafter(BigramBackend(DRAFT), target_vocab=V, threshold=0.0)]  # type: ignore[arg-type]
    return SpeculativeDecoder(BigramBackend(TARGET), drafters, mode=mode, k_max=3)  # type: ignore[arg-type]


class ForgetsDrafts(LogitsProcessor):
    """A broken processor: penalizes every row as if the drafted tokens were not there."""

    def apply(self, history, logits, drafted=()):  # type: ignore[no-untyped-def]
        return np.concatenate([super(ForgetsDrafts, self).apply(history, logits[r : r + 1]) for r in range(len(logits))])


def generate(dec: SpeculativeDecoder, n: int, sampling: SamplingParams, processor: LogitsProcessor | None) -> list[int]:
    return list(dec.generate(PROMPT, max_tokens=n, sampling=sampling, processor=processor))


@pytest.mark.parametrize("mode", ["draft-model", "lookup", "auto"])
def test_greedy_with_penalties_equals_plain_decoding(mode: str) -> None:
    plain = generate(decoder("off"), 40, SamplingParams(), LogitsProcessor(penalties=PEN))
    spec_dec = decoder(mode)
    spec = generate(spec_dec, 40, SamplingParams(), LogitsProcessor(penalties=PEN))
    assert spec == plain
    assert plain != generate(decoder("off"), 40, SamplingParams(), None)  # the penalties changed the text
    if mode == "draft-model":
        assert spec_dec.controller.cost.t_verify  # it really verified drafts


def exact_joint(pen: Penalties, history: list[int]) -> npt.NDArray[np.float64]:
    """P(x1, x2) of the penalized target after `history`."""
    p1 = softmax(pen_row(TARGET[history[-1]], history, pen))
    return np.stack([p1[a] * softmax(pen_row(TARGET[a], history + [a], pen)) for a in range(V)])


def pen_row(row: npt.NDArray[np.float32], history: list[int], pen: Penalties) -> npt.NDArray[np.float32]:
    out = row.copy()
    pen.apply(history, out)
    return out


FIRST = 3  # the likeliest first token; after it, both drafters always draft the second


def joint_counts(mode: str, n: int, processor_type: type[LogitsProcessor]) -> npt.NDArray[np.float64]:
    """Counts of the second and third tokens over n seeds, of the runs whose first token
    (sampled from the prefill's logits) is FIRST: the second token is then always drafted."""
    dec = decoder(mode)
    counts = np.zeros((V, V))
    for seed in range(n):
        stats = GenerationStats()
        out = list(dec.generate(PROMPT, max_tokens=3, sampling=SamplingParams(temperature=1.0, seed=seed),
                                stats=stats, processor=processor_type(penalties=PEN_SHORT, greedy=False)))
        if out[0] == FIRST:
            assert stats.drafted == 1
            counts[out[1], out[2]] += 1
    return counts


@pytest.mark.parametrize("mode", ["draft-model", "lookup"])
def test_sampling_with_penalties_follows_the_penalized_target(mode: str) -> None:
    exact = exact_joint(PEN_SHORT, PROMPT + [FIRST])
    counts = joint_counts(mode, 6000, LogitsProcessor)
    assert counts.sum() > 3000  # most runs start with FIRST
    assert chisquare(counts.ravel(), exact.ravel() * counts.sum()).pvalue > 0.01
    broken = joint_counts(mode, 3000, ForgetsDrafts)
    assert chisquare(broken.ravel(), exact.ravel() * broken.sum()).pvalue < 1e-4


# --- SmolLM2 ------------------------------------------------------------------------------------
SMOL_SKIP = [4, 9, 14, 19, 24]
MSGS = [{"role": "user", "content": "Write a short list of fruits, one per line."}]


@pytest.fixture(scope="module")
def smol(smollm2_plain: Path, smollm2: Path):
    # smollm2 drafting for itself: with identical penalties on both sides every draft is accepted
    m = Model(smollm2_plain, n_ctx=1024, n_threads=2, skip_layers=SMOL_SKIP, draft_model=smollm2, threshold=0.3)
    yield m
    m.close()


def reference_greedy(b: LlamaBackend, prompt: list[int], n: int, pen: Penalties) -> list[int]:
    """Plain decoding, one token at a time, with llama.cpp's own penalties sampler."""
    b.reset()
    logits = b.decode(prompt, logits="last")[0]
    out: list[int] = []
    for _ in range(n):
        tok = int(np.argmax(llama_cpp_penalized(logits, prompt + out, pen)))
        out.append(tok)
        if b.is_eog(tok):
            break
        logits = b.decode([tok], logits="last")[0]
    b.reset()
    return out


@pytest.mark.slow
def test_smollm2_greedy_with_penalties_in_every_mode(smol: Model) -> None:
    kw = dict(max_tokens=40, presence_penalty=0.8, frequency_penalty=0.4, repeat_penalty=1.1, repeat_last_n=64,
              temperature=0)
    plain = smol.chat(MSGS, mode="off", **kw).tokens
    assert plain != smol.chat(MSGS, mode="off", max_tokens=40, temperature=0).tokens
    pen = Penalties(0.8, 0.4, 1.1, 64)
    assert plain == reference_greedy(smol.backend, smol.tokenize_chat(MSGS), 40, pen)[: len(plain)]
    for mode in ("lookup", "layerskip", "draft-model", "auto"):
        assert smol.chat(MSGS, mode=mode, **kw).tokens == plain, mode
        if mode in ("layerskip", "draft-model"):
            assert smol.last_stats["drafted"] > 0


@pytest.mark.slow
def test_smollm2_drafts_are_penalized_like_the_target(smol: Model, monkeypatch: pytest.MonkeyPatch) -> None:
    """The model drafting for itself is accepted (almost) always, greedy or sampled, only
    because its rows get the target's penalties: without them it is visibly rejected."""
    runs = [dict(presence_penalty=0.8, frequency_penalty=0.4, repeat_penalty=1.1, temperature=0),
            dict(temperature=0.9, seed=3, presence_penalty=1.0, frequency_penalty=0.5)]

    # end-of-generation banned: every run drafts a full answer's worth, whatever the machine's
    # kernels make of the sampled text (on a 2-vCPU AVX2 EPYC seed 3 ended after 26 tokens)
    never_end = {t: False for t in range(smol.backend.n_vocab) if smol.backend.is_eog(t)}

    def acceptance(kw: dict) -> float:
        smol.chat(MSGS, mode="draft-model", max_tokens=60, logit_bias=never_end, **kw)
        assert smol.last_stats["tokens"] == 60 and smol.last_stats["drafted"] >= 20
        return smol.last_stats["acceptance_rate"]

    assert [acceptance(kw) for kw in runs] == [pytest.approx(1.0, abs=0.05)] * 2
    import sdfp_edge.runtime.drafters.draft_model as dm

    real = dm.draft_autoregressively
    monkeypatch.setattr(dm, "draft_autoregressively", lambda *a: real(*a[:6]))  # the processor dropped
    greedy, sampled = (acceptance(kw) for kw in runs)
    assert greedy < 0.95 and sampled < 0.8


@pytest.mark.slow
def test_logprobs_are_the_targets_not_the_drafts(smol: Model) -> None:
    prompt = smol.tokenize_chat(MSGS)
    chunks = list(smol.stream_tokens(prompt, max_tokens=24, mode="layerskip", logprobs=2, temperature=0))
    tokens = [t for c in chunks for t in c.tokens]
    lps = [lp for c in chunks for lp in (c.logprobs or [])]
    assert smol.last_stats["accepted"] > 0 and [lp.token for lp in lps] == tokens
    b = smol.backend

    def logprobs_of(skip: list[int] | None) -> list[float]:
        b.reset()
        b.set_skip(skip)
        rows = [b.decode(prompt, logits="last")[0]] + [b.decode([t], logits="last")[0] for t in tokens[:-1]]
        b.set_skip(None)
        b.reset()
        return [float(log_softmax(r)[t]) for r, t in zip(rows, tokens)]

    target, draft = logprobs_of(None), logprobs_of(SMOL_SKIP)
    assert [lp.logprob for lp in lps] == pytest.approx(target, abs=0.02)
    assert max(abs(a - b) for a, b in zip(draft, target)) > 0.2  # the draft's would be visibly different
    for lp in lps:
        assert len(lp.top) == 2 and lp.top[0][1] >= lp.top[1][1] and lp.top[0][0] == lp.token  # greedy
