"""llama.cpp's sampler chain (sampler_chain.py, dry.py, the LogitsProcessor's mirostat) and
its exactness under speculation.

1. Each deterministic transform equals llama.cpp's own sampler (llama-cpp-python's
   llama_sampler_* API of the installed runtime) on fixed logits.
2. For each sampler, the engine on the bigram stand-ins of test_logits_processors samples the
   second and third tokens from exactly the joint distribution that plain decoding with the
   same chain gives (computed from single rows, as plain decoding sees them), with both
   draft paths (a draft model: rejection sampling; prompt lookup: coupled draws); and a
   deliberately broken run (the sampler left out of the speculative path, or the drafted
   tokens forgotten by the text-dependent ones) must fail the same chi-square test.
3. Defaults: the GGUF's general.sampling.* values, else llama.cpp's, and where each came from.
"""

from __future__ import annotations

import copy
import ctypes
from dataclasses import replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from scipy.stats import chisquare

from sdfp_edge.errors import InvalidRequestError
from sdfp_edge.runtime.dry import Dry
from sdfp_edge.runtime.engine import GenerationStats
from sdfp_edge.runtime.logits_processors import LogitsProcessor, Mirostat, Penalties
from sdfp_edge.runtime.sampler_chain import (DEFAULT_ORDER, FROM_GGUF, FROM_LLAMA, LLAMA_DEFAULTS, chain_components,
                                             mirostat_mask, parse_samplers, resolve_defaults)
from sdfp_edge.runtime.sampling import SamplingParams, draw, probs_from_logits, sample_at
from test_logits_processors import PROMPT, TARGET, V, decoder

L = pytest.importorskip("llama_cpp")


# --- 1. against llama.cpp's own samplers ---------------------------------------------------------
def llama_cpp_chain(row: npt.NDArray[np.float32], samplers: list[object]) -> dict[int, float]:
    """Apply llama.cpp samplers in order to the row: the surviving candidates and their logits."""
    chain = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())
    for s in samplers:
        L.llama_sampler_chain_add(chain, s)
    n = len(row)
    data = (L.llama_token_data * n)(*[L.llama_token_data(i, float(x), 0.0) for i, x in enumerate(row)])
    arr = L.llama_token_data_array(data=ctypes.cast(data, ctypes.POINTER(L.llama_token_data)), size=n,
                                   selected=-1, sorted=False)
    try:
        L.llama_sampler_apply(chain, ctypes.byref(arr))
        return {arr.data[i].id: arr.data[i].logit for i in range(arr.size) if np.isfinite(arr.data[i].logit)}
    finally:
        L.llama_sampler_free(chain)  # frees the samplers it holds


def ours(row: npt.NDArray[np.float32], params: SamplingParams) -> dict[int, float]:
    (_, ids, v), = chain_components(np.asarray(row, dtype=np.float64), params)
    return dict(zip(ids.tolist(), v.tolist()))


def same(a: dict[int, float], b: dict[int, float]) -> bool:
    """The same candidates, with the same distribution over them."""
    if set(a) != set(b):
        return False
    ids = sorted(a)
    pa, pb = (np.exp(np.array([d[i] for i in ids]) - max(d.values())) for d in (a, b))
    return np.allclose(pa / pa.sum(), pb / pb.sum(), rtol=1e-4, atol=1e-6)


def rows(n: int = 12, size: int = 400) -> list[npt.NDArray[np.float32]]:
    rng = np.random.default_rng(5)
    return [(rng.standard_normal(size) * rng.uniform(0.5, 4)).astype(np.float32) for _ in range(n)]


ONLY = dict(top_k=0, top_p=1.0, min_p=0.0)
CHAIN = dict(temperature=0.8, top_k=40, top_p=0.95, min_p=0.05)
ROW_CASES = [  # ours, llama.cpp's samplers, a wrong setting the comparison must tell apart
    (SamplingParams(temperature=0.7, top_k=40, top_p=1.0, min_p=0.0),
     lambda: [L.llama_sampler_init_top_k(40), L.llama_sampler_init_temp(0.7)], dict(top_k=39)),
    (SamplingParams(temperature=1.0, top_k=0, top_p=0.8, min_p=0.0), lambda: [L.llama_sampler_init_top_p(0.8, 0)],
     dict(top_p=0.7)),
    (SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.1), lambda: [L.llama_sampler_init_min_p(0.1, 0)],
     dict(min_p=0.2)),
    (SamplingParams(temperature=1.0, typical_p=0.6, **ONLY), lambda: [L.llama_sampler_init_typical(0.6, 0)],
     dict(typical_p=0.5)),
    (SamplingParams(temperature=1.0, top_n_sigma=1.2, **ONLY), lambda: [L.llama_sampler_init_top_n_sigma(1.2)],
     dict(top_n_sigma=0.9)),
    (SamplingParams(temperature=1.0, xtc_probability=1.0, xtc_threshold=0.02, **ONLY),  # its coin always applies
     lambda: [L.llama_sampler_init_xtc(1.0, 0.02, 0, 1)], dict(xtc_threshold=0.05)),
    (SamplingParams(typical_p=0.9, top_n_sigma=2.0, **CHAIN),  # the default order, everything on
     lambda: [L.llama_sampler_init_top_n_sigma(2.0), L.llama_sampler_init_top_k(40), L.llama_sampler_init_typical(0.9, 0),
              L.llama_sampler_init_top_p(0.95, 0), L.llama_sampler_init_min_p(0.05, 0), L.llama_sampler_init_temp(0.8)],
     dict(temperature=0.9)),
    (SamplingParams(**{**CHAIN, "top_p": 0.5}, samplers=("min_p", "temperature", "top_p", "top_k")),  # reordered
     lambda: [L.llama_sampler_init_min_p(0.05, 0), L.llama_sampler_init_temp(0.8), L.llama_sampler_init_top_p(0.5, 0),
              L.llama_sampler_init_top_k(40)], dict(samplers=("min_p", "top_p", "temperature", "top_k"))),
]


@pytest.mark.parametrize("params, reference, wrong", ROW_CASES)
def test_row_samplers_equal_llama_cpp(params: SamplingParams, reference, wrong) -> None:  # type: ignore[no-untyped-def]
    for row in rows():
        assert same(ours(row, params), llama_cpp_chain(row, reference()))
    assert not all(same(ours(r, replace(params, **wrong)), llama_cpp_chain(r, reference())) for r in rows())


@pytest.mark.parametrize("version", [1, 2])
def test_mirostat_truncation_equals_llama_cpp(version: int) -> None:
    """At its starting state mu = 2 tau; the kept candidates are llama.cpp's."""
    sizes = set()
    for tau in (0.5, 1.5, 3.0, 5.0):
        for row in rows(6, 300):
            ids, q = mirostat_mask(row, 0.9, version, 2 * tau, len(row))
            smpl = L.llama_sampler_init_mirostat(len(row), 1, tau, 0.1, 100) if version == 1 else \
                L.llama_sampler_init_mirostat_v2(1, tau, 0.1)
            got = llama_cpp_chain(row, [L.llama_sampler_init_temp(0.9), smpl])
            assert set(got) == set(ids.tolist()), (version, tau)
            sizes.add(len(ids))
    assert len(sizes) > 3  # the truncation really varied


def test_logit_bias_penalties_and_dry_order() -> None:
    """Logit bias comes first, then penalties, then DRY, as common_sampler_init chains them."""
    row = np.linspace(-2, 2, 8).astype(np.float32)
    proc = LogitsProcessor(penalties=Penalties(repeat=2.0, last_n=-1), logit_bias={3: -1.5, 5: float("-inf")},
                           greedy=False)
    out = proc.apply([3, 4], row[None])[0]
    assert out[5] == -np.inf and out[3] == np.float32((row[3] - 1.5) * 2.0)  # biased, then penalized
    assert out[4] == np.float32(row[4] / 2.0)


def dry_reference(vocab: object, row: npt.NDArray[np.float32], history: list[int], dry: Dry,
                  breakers: list[str]) -> npt.NDArray[np.float32]:
    arr = (ctypes.c_char_p * len(breakers))(*[b.encode() for b in breakers])
    smpl = L.llama_sampler_init_dry(vocab, dry.multiplier, dry.base, dry.allowed_length, dry.last_n, arr, len(breakers))
    for t in history:
        L.llama_sampler_accept(smpl, t)
    got = llama_cpp_chain(row, [smpl])
    out = np.full(len(row), -np.inf, dtype=np.float32)
    for i, x in got.items():
        out[i] = x
    return out


def test_dry_equals_llama_cpp(smollm2: Path) -> None:
    from sdfp_edge.runtime.backend import LlamaBackend
    from sdfp_edge.runtime.dry import breaker_table

    b = LlamaBackend(smollm2, n_ctx=64, n_threads=1)
    try:
        breakers = ["\n", ":", "\"", "*"]
        table = breaker_table(breakers, b.n_vocab, lambda t: b.token_bytes(t, special=True),
                              lambda d: b.tokenize(d.decode(), add_special=False, parse_special=False))
        text = b.tokenize("a b c d: a b c d a b c d\n a b c d a b c", add_special=False)
        rng = np.random.default_rng(2)
        row = rng.standard_normal(b.n_vocab).astype(np.float32)
        penalized, told_apart = 0, False
        for dry in (Dry(0.8, 1.75, 2, 64, table), Dry(1.5, 1.3, 1, 10, table), Dry(0.5, 2.0, 3, -1, table)):
            n = len(text) if dry.last_n < 0 else dry.last_n
            for cut in range(3, len(text) + 1, 3):
                h = text[:cut]
                mine = row.copy()
                dry.apply(h, mine)
                ref = dry_reference(b.vocab, row, h, replace(dry, last_n=n), breakers)
                assert np.allclose(mine, ref, rtol=0, atol=1e-5), (dry, cut)
                penalized += int(np.count_nonzero(mine != row))
                unbroken = row.copy()  # the breakers matter: without them some row differs
                replace(dry, breakers={}).apply(h, unbroken)
                told_apart |= not np.allclose(unbroken, ref, rtol=0, atol=1e-5)
        assert penalized >= 5 and told_apart
    finally:
        b.close()


def test_sampler_names_and_order() -> None:
    assert parse_samplers("penalties;dry;top-k;nucleus;temp") == ("penalties", "dry", "top_k", "top_p", "temperature")
    assert parse_samplers("edkypmxt") == ("penalties", "dry", "top_k", "typ_p", "top_p", "min_p", "xtc", "temperature")
    assert parse_samplers(["top_k", "temperature"]) == ("top_k", "temperature")
    for bad in ("top_k;warp", "top_k;penalties", "kq"):
        with pytest.raises(InvalidRequestError):
            parse_samplers(bad)


def test_defaults_are_the_ggufs_else_llama_cpps() -> None:
    values, sources = resolve_defaults({"temperature": 0.6, "top_k": 20, "samplers": "top_k;temperature"})
    assert values["temperature"] == 0.6 and values["top_k"] == 20 and values["samplers"] == ("top_k", "temperature")
    assert values["top_p"] == 0.95 and values["min_p"] == 0.05 and values["repeat_last_n"] == 64
    assert sources["temperature"] == FROM_GGUF and sources["top_p"] == FROM_LLAMA
    assert LLAMA_DEFAULTS["samplers"] == DEFAULT_ORDER


def test_gguf_sampling_metadata_is_read_as_llama_cpp_reads_it(tmp_path: Path) -> None:
    import gguf

    from sdfp_edge.metadata import read_kv, sampling_metadata

    w = gguf.GGUFWriter(str(tmp_path / "m.gguf"), "llama")
    w.add_float32("general.sampling.temp", 0.6)
    w.add_int32("general.sampling.top_k", 20)
    w.add_string("general.sampling.sequence", "top_k;top_p;temperature")
    w.add_string("general.sampling.min_p", "not a number")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.close()
    got = sampling_metadata(read_kv(tmp_path / "m.gguf"))
    assert got == {"temperature": pytest.approx(0.6), "top_k": 20, "samplers": "top_k;top_p;temperature"}


# --- 2. exactness under speculation (bigram stand-ins) ------------------------------------------------
FIRST = 3


def processor_for(params: SamplingParams, kind: str) -> LogitsProcessor:
    if kind == "penalties":
        return LogitsProcessor(penalties=Penalties(presence=1.5, frequency=0.5, repeat=1.3, last_n=2), greedy=False)
    if kind == "dry":
        return LogitsProcessor(dry=Dry(1.0, 1.75, 2, 8), greedy=False)
    if kind == "logit_bias":
        return LogitsProcessor(logit_bias={0: 1.5, 4: -1.0}, greedy=False)
    if kind == "mirostat":
        return LogitsProcessor(mirostat=Mirostat(params.mirostat, params.temperature, params.mirostat_tau,
                                                 params.mirostat_eta, V), greedy=False)
    return LogitsProcessor(greedy=False)


def exact_joint(params: SamplingParams, kind: str) -> npt.NDArray[np.float64]:
    """P(x2, x3 | x1 = FIRST) of plain decoding: single rows, the processor advanced token by token."""
    proc = processor_for(params, kind)
    h0 = list(PROMPT)
    raw0 = TARGET[h0[-1]][None]
    proc.apply(h0, raw0)
    proc.accept([FIRST], raw0)
    h1 = h0 + [FIRST]
    raw1 = TARGET[FIRST][None]
    p1 = probs_from_logits(proc.apply(h1, raw1), params)[0]
    out = np.zeros((V, V))
    for a in range(V):
        if p1[a] == 0:
            continue
        pa = copy.deepcopy(proc)
        pa.apply(h1, raw1)
        pa.accept([a], raw1)
        out[a] = p1[a] * probs_from_logits(pa.apply(h1 + [a], TARGET[a][None]), params)[0]
    return out


class ForgetsDrafts(LogitsProcessor):
    """Broken: each verify row processed as if the drafted tokens before it were not there."""

    def apply(self, history, logits, drafted=()):  # type: ignore[no-untyped-def]
        first = len(drafted) + 1 - len(logits)
        out = [super(ForgetsDrafts, self).apply(history, logits[r : r + 1], drafted[: first]) for r in range(len(logits))]
        return np.concatenate(out)

    def accept(self, emitted, raw):  # type: ignore[no-untyped-def]
        self._miro_rows = self._miro_rows[:1] * len(emitted)  # the first row's state for all
        super().accept(emitted, raw)


def counts(mode: str, n: int, params: SamplingParams, kind: str, processor: type = LogitsProcessor):
    dec = decoder(mode)
    out = np.zeros((V, V))
    drafted = 0
    for seed in range(n):
        stats = GenerationStats()
        proc = processor_for(params, kind)
        proc.__class__ = processor
        toks = list(dec.generate(PROMPT, max_tokens=3, sampling=replace(params, seed=seed), stats=stats,
                                 processor=proc))
        if toks[0] == FIRST:
            out[toks[1], toks[2]] += 1
            drafted += stats.drafted
    return out, drafted


T1 = dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0)
CASES = {  # sampler -> (params, processor kind, the broken control)
    "top_k/top_p/min_p": (SamplingParams(temperature=0.9, top_k=4, top_p=0.9, min_p=0.05), "", "drop"),
    "typical_p": (SamplingParams(typical_p=0.5, **T1), "", "drop"),
    "top_n_sigma": (SamplingParams(top_n_sigma=0.7, **T1), "", "drop"),
    "xtc": (SamplingParams(xtc_probability=0.6, xtc_threshold=0.15, **T1), "", "drop"),
    "order": (SamplingParams(temperature=2.5, top_k=0, top_p=0.6, min_p=0.0, samplers=("temperature", "top_p")), "",
              "drop"),
    "logit_bias": (SamplingParams(**T1), "logit_bias", "no processor"),
    "penalties": (SamplingParams(**T1), "penalties", "forget drafts"),
    "dry": (SamplingParams(**T1), "dry", "forget drafts"),
    "mirostat v1": (SamplingParams(temperature=1.0, mirostat=1, mirostat_tau=1.0, mirostat_eta=0.8), "mirostat",
                    "forget drafts"),
    "mirostat v2": (SamplingParams(temperature=1.5, mirostat=2, mirostat_tau=2.0, mirostat_eta=1.0), "mirostat",
                    "forget drafts"),
}


def broken_params(params: SamplingParams) -> SamplingParams:
    """The sampler left out: what a speculative path that ignored it would sample."""
    if params.samplers != DEFAULT_ORDER:
        return replace(params, samplers=DEFAULT_ORDER)
    return replace(params, top_k=0, top_p=1.0, min_p=0.0, typical_p=1.0, top_n_sigma=-1.0, xtc_probability=0.0)


def pvalue(observed: npt.NDArray[np.float64], exact: npt.NDArray[np.float64]) -> float:
    """Chi-square of counts against a distribution; cells expecting fewer than 5 are pooled
    (the test is unreliable on them), a count outside the support gives 0."""
    o, e = observed.ravel(), exact.ravel() / exact.sum() * observed.sum()
    if o[e == 0].sum() > 0:
        return 0.0
    small = e < 5
    o2 = np.append(o[~small], o[small].sum())
    e2 = np.append(e[~small], e[small].sum())
    keep = e2 > 0
    return float(chisquare(o2[keep], e2[keep] * o2[keep].sum() / e2[keep].sum()).pvalue)


@pytest.mark.parametrize("mode", ["draft-model", "lookup"])
@pytest.mark.parametrize("case", list(CASES))
def test_speculative_sampling_follows_plain_decoding_with_the_same_chain(case: str, mode: str) -> None:
    params, kind, control = CASES[case]
    exact = exact_joint(params, kind)
    n = 8000 if kind == "dry" else 3000  # DRY makes the first token FIRST less often
    got, drafted = counts(mode, n, params, kind)
    assert got.sum() > 400 and drafted > 0.5 * got.sum()  # the second token was drafted in most runs
    assert pvalue(got, exact) > 0.01
    if control == "forget drafts" and kind == "dry" and mode == "lookup":
        # prompt lookup drafts exactly the repetition DRY penalizes (rarely kept): a processor
        # that forgets it differs on rare paths only; DRY left out is the control here
        control = "no processor"
    if control == "drop":
        bad, _ = counts(mode, n, broken_params(params), kind)
    elif control == "no processor":
        bad, _ = counts(mode, n, params, "")
    else:
        bad, _ = counts(mode, n, params, kind, ForgetsDrafts)
    assert pvalue(bad, exact) < 1e-4


def test_draw_is_the_inverse_cdf_of_the_chain() -> None:
    rng = np.random.default_rng(4)
    row = (rng.standard_normal(3000) * 3).astype(np.float32)
    for params, _, _ in CASES.values():
        if params.mirostat:
            continue
        p = probs_from_logits(row, params)[0]
        assert p.sum() == pytest.approx(1.0)
        us = rng.random(200)
        assert [draw(row, params, u) for u in us] == [sample_at(p, u) for u in us]


# --- 4. the controller keeps acceptance apart per sampler setting ---------------------------------------
def test_acceptance_is_kept_apart_per_sampler_setting() -> None:
    settings = [SamplingParams(temperature=0.6), SamplingParams(temperature=1.0),
                SamplingParams(temperature=1.0, top_k=3), SamplingParams(temperature=1.0, mirostat=2)]
    assert len({s.regime for s in settings}) == len(settings) and SamplingParams().regime == ""
    assert SamplingParams(temperature=0.6, seed=1).regime == SamplingParams(temperature=0.6, seed=2).regime
    dec = decoder("lookup")
    for s in settings:
        for seed in range(5):
            list(dec.generate(PROMPT, max_tokens=4, sampling=replace(s, seed=seed)))
    keys = set(dec.controller.acceptance)
    for s in settings:
        assert any(k.endswith(s.regime) for k in keys), (s.regime, keys)


# --- 1'. defaults end to end (SmolLM2) ------------------------------------------------------------
@pytest.fixture(scope="module")
def smol_recommending(smollm2: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2 with a maker's recommended settings in its header (and one unusable value)."""
    import gguf
    from gguf.scripts.gguf_new_metadata import MetadataDetails, copy_with_new_metadata

    reader = gguf.GGUFReader(smollm2, "r")
    out = tmp_path_factory.mktemp("rec") / "smollm2-rec.gguf"
    writer = gguf.GGUFWriter(out, arch="llama")
    F, I, S = gguf.GGUFValueType.FLOAT32, gguf.GGUFValueType.INT32, gguf.GGUFValueType.STRING
    copy_with_new_metadata(reader, writer, {
        "general.sampling.temp": MetadataDetails(F, 0.6), "general.sampling.top_k": MetadataDetails(I, 20),
        "general.sampling.sequence": MetadataDetails(S, "penalties;top_k;top_p;min_p;temperature"),
        "general.sampling.top_p": MetadataDetails(F, 7.0)}, [k for k in reader.fields if k.startswith("sdfp.")])
    return out


def test_defaults_come_from_the_gguf_else_llama_cpp(smollm2: Path, smol_recommending: Path) -> None:
    from sdfp_edge.api import Model

    notes: list[str] = []
    with Model(smol_recommending, n_ctx=256, n_threads=2, cost_cache=False, log=notes.append) as m:
        m.generate("Hello", max_tokens=2)
        used = m.last_stats["sampling"]
        assert used["settings"]["temperature"] == pytest.approx(0.6) and used["settings"]["top_k"] == 20
        assert used["source"]["temperature"] == FROM_GGUF and used["source"]["min_p"] == FROM_LLAMA
        assert used["settings"]["top_p"] == 0.95 and any("top_p" in n for n in notes)  # 7.0 is unusable
        assert used["settings"]["samplers"] == ["penalties", "top_k", "top_p", "min_p", "temperature"]
        m.generate("Hello", max_tokens=2, temperature=0, top_k=5)
        used = m.last_stats["sampling"]
        assert used["source"]["temperature"] == used["source"]["top_k"] == "given"
        assert used["summary"].startswith("greedy")
    with Model(smollm2, n_ctx=256, n_threads=2, cost_cache=False) as m:
        m.generate("Hello", max_tokens=2)
        s = m.last_stats["sampling"]
        assert all(v == FROM_LLAMA for v in s["source"].values()) and s["settings"]["temperature"] == 0.8


def test_verbose_and_json_say_which_sampling_was_used(smol_recommending: Path) -> None:
    import json

    from click.testing import CliRunner

    from sdfp_edge.cli.main import main

    args = ["generate", "-m", str(smol_recommending), "-c", "256", "-t", "2", "-n", "3", "-p", "Hi", "--mode", "off"]
    r = CliRunner().invoke(main, [*args, "--verbose", "--min-p", "0.1"])
    assert r.exit_code == 0, r.output
    line = next(x for x in r.stderr.splitlines() if x.startswith("sampling: "))
    assert "temperature 0.6" in line and "given: min_p" in line and "from the GGUF: samplers, temperature, top_k" in line
    r = CliRunner().invoke(main, [*args, "--json", "--temperature", "0"])
    assert json.loads(r.stdout)["stats"]["sampling"]["source"]["temperature"] == "given"


def test_ranking_only_the_tokens_near_the_top_changes_no_candidate(monkeypatch: pytest.MonkeyPatch) -> None:
    """With top-k first, chain_components ranks only the tokens near the row's top: on rows of a
    real vocabulary's size (spread, peaked, masked by a grammar) the candidates and their logits
    are those of ranking the whole row, and the draws are the same."""
    import sdfp_edge.runtime.sampler_chain as chain

    rng = np.random.default_rng(11)
    rows_ = [(rng.standard_normal(49152) * s).astype(np.float32) for s in (0.5, 1.0, 2.0, 4.0, 8.0)]
    peaked = (rng.standard_normal(49152) * 3).astype(np.float32)
    peaked[:30] += 40.0  # fewer than k tokens near the top: the whole row is ranked
    masked = rows_[2].copy()
    masked[rng.random(49152) < 0.999] = -np.inf  # a grammar leaves ~50 tokens
    tiny = rows_[3].copy()
    tiny[5:] = -np.inf  # fewer finite tokens than k
    settings = [SamplingParams(temperature=0.7, top_k=40, top_p=0.95, min_p=0.05), SamplingParams(temperature=1.0, top_k=1),
                SamplingParams(temperature=0.8, top_k=2000, top_p=0.99), SamplingParams(temperature=0.8, top_k=40,
                samplers=("top_p", "top_k", "temperature"))]
    near_used = []
    real = chain._near_top

    def spy(x: npt.NDArray[np.float32], k: int) -> np.ndarray | None:
        got = real(x, k)
        if chain.NEAR_TOP:  # not the whole-row reference
            near_used.append(got is not None)
        return got

    monkeypatch.setattr(chain, "_near_top", spy)
    for params in settings:
        for row in [*rows_, peaked, masked, tiny]:
            fast = chain.chain_components(row, params)
            with monkeypatch.context() as m:
                m.setattr(chain, "NEAR_TOP", ())
                whole = chain.chain_components(row, params)
            assert [(w, dict(zip(i.tolist(), v.tolist()))) for w, i, v in fast] == \
                   [(w, dict(zip(i.tolist(), v.tolist()))) for w, i, v in whole]
            for u in (0.01, 0.37, 0.93):
                with monkeypatch.context() as m:
                    m.setattr(chain, "NEAR_TOP", ())
                    expected = chain.chain_draw(row, params, u)
                assert chain.chain_draw(row, params, u) == expected
    assert near_used.count(True) >= 15 and near_used.count(False) >= 3  # both paths ran
