"""`sdfp-edge bench`: its statistics, its data loaders, its systems' processes, and real quick runs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner

from sdfp_edge.bench import data, llama_server, stats, systems
from sdfp_edge.bench.protocol import LoadConfig, Request, SystemSpec
from sdfp_edge.bench.runner import SCHEMA
from sdfp_edge.bench.stats import RunRecord
from sdfp_edge.bench.systems import BASE, Setup, last_k_layers, random_layers, uniform_layers
from sdfp_edge.cli.main import main
from sdfp_edge.errors import InvalidRequestError

SMOL_SKIP = "4,9,14,19,24"  # until the default GGUF carries a FIT list


# --- statistics ------------------------------------------------------------------------------------
def test_decode_window_leaves_out_the_first_cycle_and_its_burst() -> None:
    assert stats.decode_window(3, [1.0, 1.0, 1.0, 1.5, 2.0, 2.0]) == (3, 1.0)
    assert stats.decode_window(1, [0.5, 0.7, 0.9]) == (2, pytest.approx(0.4))
    assert stats.decode_window(0, []) == (0, 0.0)
    for bad in ((0, [0.1]), (3, [0.1, 0.2])):
        with pytest.raises(ValueError):
            stats.decode_window(*bad)


def test_first_divergence() -> None:
    assert stats.first_divergence([1, 2, 3], [1, 2, 3]) is None
    assert stats.first_divergence([1, 2, 3], [1, 5, 3]) == 1
    assert stats.first_divergence([1, 2], [1, 2, 3]) == 2


def test_paired_ratios_pair_by_prompt_and_skip_missing_or_zero_rates() -> None:
    rates = {"a": 30.0, "b": 10.0, "c": None, "d": 5.0, "e": 8.0}
    base = {"a": 20.0, "b": 20.0, "c": 10.0, "d": 0.0}
    assert stats.paired_ratios(rates, base) == {"a": 1.5, "b": 0.5}


def test_spread_median_min_max() -> None:
    s = stats.spread([3.0, 1.0, 4.0, 2.0])
    assert (s.median, s.min, s.max, s.n) == (2.5, 1.0, 4.0, 4)
    assert stats.spread([]) is None


def test_projected_speedup() -> None:
    assert stats.projected_speedup(1.0, 0.0, 0.7) == 1.0  # plain decoding
    assert stats.projected_speedup(2.5, 3.0, 0.0) == 2.5  # free drafts (prompt lookup)
    assert stats.projected_speedup(2.0, 2.0, 0.5) == pytest.approx(1.0)  # 2 tokens for 2 * 0.5 + 1


def test_effective_c_weights_by_steps() -> None:
    assert stats.effective_c({"layerskip": 3, "draft-model": 1}, {"layerskip": 0.8, "draft-model": 0.4}) == \
        pytest.approx((3 * 0.8 + 0.4) / 4)
    assert stats.effective_c({}, {}) == 0.0
    assert stats.effective_c({"layerskip": 2}, {}) is None


def _rec(pid: str, cat: str, system: str, rate: float, *, tokens: int = 11, verifies: int | None = 11,
         drafted: int = 0, accepted: int = 0, steps: int | None = 0, divergence: int | None = None,
         repeat: int = 0) -> RunRecord:
    return RunRecord(prompt_id=pid, category=cat, system=system, prompt_tokens=20, tokens=tokens,
                     decode_tokens=tokens - 1, decode_s=(tokens - 1) / rate, first_s=0.1,
                     total_s=0.1 + (tokens - 1) / rate, verifies=verifies, drafted=drafted, accepted=accepted,
                     draft_steps=steps, steps_by_drafter={"layerskip": steps} if steps else {},
                     divergence=divergence, repeat=repeat)


def test_summarize_pairs_each_prompt_with_each_reference() -> None:
    recs = [
        _rec("p1", "x", "base", 20.0), _rec("p2", "x", "base", 10.0), _rec("p3", "y", "base", 40.0),
        _rec("p1", "x", "off", 10.0), _rec("p2", "x", "off", 10.0), _rec("p3", "y", "off", 20.0),
        # the system is faster than base on p1, slower on p2 and p3; its pooled figures are chosen below
        _rec("p1", "x", "sys", 30.0, verifies=5, drafted=10, accepted=6, steps=10),
        _rec("p2", "x", "sys", 9.0, verifies=5, drafted=10, accepted=6, steps=10, divergence=3),
        _rec("p3", "y", "sys", 20.0, verifies=6, drafted=10, accepted=5, steps=12),
    ]
    rows = stats.summarize(recs, systems=["base", "off", "sys"], categories=["x", "y"],
                           costs={"sys": {"layerskip": 0.5}}, references=["base", "off"])
    by = {(r.system, r.category): r for r in rows}
    assert len(by) == 9 and ("sys", "all") in by
    assert by["base", "all"].vs["base"] is None and by["base", "all"].same_output is None
    assert by["off", "all"].vs["off"] is None and by["off", "all"].vs["base"] is not None
    # decode rates pair per prompt: 30/20, 9/10 in category x
    x = by["sys", "x"].vs["base"].decode
    assert (x.median, x.min, x.max, x.n) == (pytest.approx(1.2), 0.9, 1.5, 2)
    a = by["sys", "all"]
    assert a.vs["base"].decode.median == pytest.approx(0.9) and a.vs["base"].decode.min == 0.5
    assert a.vs["off"].decode.median == pytest.approx(1.0) and a.vs["off"].decode.max == pytest.approx(3.0)
    # end-to-end rates include the 0.1 s before the first token: 10 / (0.1 + 10/30) over 10 / (0.1 + 10/20)
    e2e = by["sys", "x"].vs["base"].end_to_end
    assert e2e.max == pytest.approx((11 / (0.1 + 10 / 30)) / (11 / (0.1 + 10 / 20)))
    assert a.tokens_per_second.median == 20.0 and a.prompts == 3 and a.runs == 3
    assert a.acceptance == pytest.approx(17 / 30)
    assert a.tokens_per_verify == pytest.approx(33 / 16)
    assert a.k_mean == pytest.approx(32 / 16)
    assert a.c == pytest.approx(0.5)
    assert a.projected == pytest.approx((33 / 16) / (2.0 * 0.5 + 1))
    assert a.same_output == pytest.approx(2 / 3)
    assert by["off", "all"].acceptance is None  # nothing drafted
    # sampled runs: comparing ids with the base means nothing
    rows = stats.summarize(recs, systems=["sys"], categories=["x"], costs={}, references=["base"], compare_ids=False)
    assert all(r.same_output is None for r in rows) and all(r.projected is None for r in rows)


def test_summarize_pairs_repeats_and_leaves_unknown_counters_unknown() -> None:
    recs = [_rec("p", "x", "base", 10.0, repeat=0), _rec("p", "x", "base", 20.0, repeat=1),
            _rec("p", "x", "srv", 20.0, repeat=0, verifies=None, steps=None),
            _rec("p", "x", "srv", 20.0, repeat=1, verifies=None, steps=None)]
    (row,) = [r for r in stats.summarize(recs, systems=["srv"], categories=["x"], costs={}, references=["base"])
              if r.category == "all"]
    assert sorted((row.vs["base"].decode.min, row.vs["base"].decode.max)) == [1.0, 2.0]  # paired per round
    assert row.prompts == 1 and row.runs == 2
    assert row.tokens_per_verify is None and row.k_mean is None and row.projected is None


def _synthetic(effect: float, noise: float, *, prompts: int = 8, repeats: int = 3, seed: int = 1) -> dict:
    """{(prompt, repeat): ratio}: a per-prompt effect times log-normal noise."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return {(f"p{i}", r): effect * float(np.exp(rng.normal(0, noise))) for i in range(prompts) for r in range(repeats)}


def test_bootstrap_calls_a_clear_effect_and_not_pure_noise() -> None:
    clear = stats.bootstrap_median(_synthetic(1.3, 0.03))
    assert clear is not None and clear.call == "faster" and 1.0 < clear.lo <= clear.median <= clear.hi < 1.4
    assert (clear.n, clear.prompts) == (24, 8)
    slow = stats.bootstrap_median(_synthetic(1 / 1.3, 0.03))
    assert slow.call == "slower" and slow.hi < 1.0
    for seed in range(5):  # pure noise of 15% per run: the interval must contain parity
        noise = stats.bootstrap_median(_synthetic(1.0, 0.15, seed=seed))
        assert noise.lo < 1.0 < noise.hi and noise.call == "parity within noise", noise
    # deterministic given the seed; another seed moves the interval a little, not the median
    data = _synthetic(1.05, 0.1)
    assert stats.bootstrap_median(data, seed=3) == stats.bootstrap_median(data, seed=3)
    other = stats.bootstrap_median(data, seed=4)
    assert other.median == stats.bootstrap_median(data, seed=3).median
    assert (other.lo, other.hi) != (stats.bootstrap_median(data, seed=3).lo, stats.bootstrap_median(data, seed=3).hi)
    assert stats.bootstrap_median({}) is None
    # one prompt, two repeats: the interval is just the two values, too few to call anything
    tiny = stats.bootstrap_median({("p", 0): 0.6, ("p", 1): 0.7})
    assert tiny.hi < 1.0 and tiny.call == "too few runs to call"
    assert stats.bootstrap_median(_synthetic(1.3, 0.03, prompts=2, repeats=2)).call == "too few runs to call"
    assert stats.bootstrap_median(_synthetic(1.3, 0.03, prompts=5, repeats=1)).call == "faster"


def test_bootstrap_resamples_prompts_not_only_runs() -> None:
    # two prompts far apart, many tight repeats each: treating the 40 runs as independent would
    # give a narrow interval; resampling the prompts must give one spanning both prompts
    ratios = {("a", r): 0.9 + 0.001 * r for r in range(20)} | {("b", r): 1.2 + 0.001 * r for r in range(20)}
    iv = stats.bootstrap_median(ratios)
    assert iv.lo < 0.95 and iv.hi > 1.15 and iv.call == "parity within noise"
    # unequal repeats per prompt (a failed run) are drawn as they are, never padded in
    uneven = {("a", 0): 1.5, ("b", 0): 1.6, ("b", 1): 1.7, ("c", 2): 1.4}
    iv = stats.bootstrap_median(uneven)
    assert 1.4 <= iv.lo <= iv.hi <= 1.7 and iv.n == 4 and iv.prompts == 3


def test_summary_and_pairwise_comparison_carry_intervals() -> None:
    recs = []
    for i in range(6):
        for rep in range(3):
            wobble = 1 + 0.01 * ((i + rep) % 3)
            recs += [_rec(f"p{i}", "x", "base", 10.0 * wobble, repeat=rep),
                     _rec(f"p{i}", "x", "fast", 14.0 * wobble, repeat=rep),
                     _rec(f"p{i}", "x", "same", 10.0 * wobble * (1.1 if rep % 2 else 0.9), repeat=rep)]
    rows = stats.summarize(recs, systems=["base", "fast", "same"], categories=["x"], costs={}, references=["base"])
    by = {(r.system, r.category): r for r in rows}
    fast = by["fast", "all"].vs["base"].end_to_end_interval
    assert fast.call == "faster" and fast.lo > 1.2
    assert by["same", "x"].vs["base"].decode_interval.call == "parity within noise"
    d = by["fast", "all"].as_dict()
    assert d["vs"]["base"]["end_to_end_interval"]["call"] == "faster" and d["vs"]["base"]["end_to_end"]["n"] == 18
    assert stats.best_of(["same", "fast"], rows, base="base") == "fast"
    assert stats.best_of(["other"], rows, base="base") is None
    (x, total) = stats.compare(recs, "fast", "same", categories=["x"])
    assert (x.category, total.category) == ("x", "all") and total.end_to_end.call == "faster"
    assert total.decode.median == pytest.approx(1.4, rel=0.12)
    assert stats.compare(recs, "fast", "missing", categories=["x"]) == []


# --- layer lists of the draft-quality baselines ----------------------------------------------------
def test_baseline_layer_lists() -> None:
    assert uniform_layers(30, 5) == [2, 8, 14, 20, 26]
    assert last_k_layers(30, 5) == [24, 25, 26, 27, 28]
    r = random_layers(30, 5, seed=0)
    assert r == random_layers(30, 5, seed=0) and r == sorted(set(r)) and len(r) == 5
    assert r != random_layers(30, 5, seed=1)
    for n, k in [(30, 5), (24, 4), (28, 8), (18, 3)]:
        for layers in (uniform_layers(n, k), last_k_layers(n, k), random_layers(n, k, 3)):
            assert len(set(layers)) == k and min(layers) >= 0 and max(layers) <= n - 2


# --- data -----------------------------------------------------------------------------------------------
def test_mtbench_has_80_first_turns_in_8_categories() -> None:
    prompts = data.load_mtbench()
    assert len(prompts) == 80
    assert Counter(p.category for p in prompts) == {c: 10 for c in data.MTBENCH_CATEGORIES}
    assert len({p.id for p in prompts}) == 80
    assert all(p.text.strip() for p in prompts)
    assert data.data_file(data.SOURCES["mtbench"]).exists()  # kept in the cache


def test_humaneval_has_164_problems() -> None:
    prompts = data.load_humaneval()
    assert len(prompts) == 164
    assert {p.category for p in prompts} == {"humaneval"}
    assert [p.id for p in prompts] == [f"HumanEval/{i}" for i in range(164)]
    assert all(re.search(r"\ndef \w+\(", p.text) and p.text.endswith("```") for p in prompts)


def test_humaneval_edit_shows_each_solved_problem_back_for_one_rename() -> None:
    edits = data.load_humaneval_edit()
    problems = {json.loads(line)["task_id"]: json.loads(line) for line in data._humaneval_lines()}
    assert [p.id for p in edits] == [f"HumanEval/{i}/edit" for i in range(164)]
    assert {p.category for p in edits} == {data.EDIT_CATEGORY}
    for p in edits:
        src = problems[p.id.removesuffix("/edit")]
        name = src["entry_point"]
        assert f"rename the function `{name}` to `{name}_v2`" in p.text
        # the whole solved problem is in the prompt, so the answer can copy it
        assert (src["prompt"] + src["canonical_solution"]).strip("\n") in p.text
        assert p.text.endswith("\n```") and f"def {name}(" in p.text
    assert data.load(["humaneval-edit"], limit=3, seed=0) == data.select(edits, limit=3, seed=0)


def test_multiturn_chats_edit_the_last_answer_from_both_data_sets() -> None:
    chats = data.load_chats()
    assert chats == data.load_chats() and {p.category for p in chats} == {data.CHAT_CATEGORY}
    text = [p for p in chats if p.stratum == "text"]
    code = [p for p in chats if p.stratum == "code"]
    questions = {f"chat/mtbench/{json.loads(line)['question_id']}": json.loads(line)["turns"]
                 for line in data.data_file(data.SOURCES["mtbench"]).read_text().splitlines() if line.strip()}
    assert [p.id for p in text] == [f"chat/mtbench/{i}" for i in (81, 83, 84, 85, 86, 89, 90, 131, 132, 133, 144)]
    for p in text:  # MT-Bench's own two turns, the second reworking the first answer
        assert [p.text, *p.turns] == questions[p.id]
        assert re.search(r"(previous|earlier) (response|answer|reply)", p.turns[0], re.I)
    problems = {json.loads(line)["task_id"]: json.loads(line) for line in data._humaneval_lines()}
    assert len(code) == 164
    for p in code:
        src = problems[p.id.removeprefix("chat/")]
        assert (src["prompt"] + src["canonical_solution"]).strip("\n") in p.text and len(p.turns) == 2
        assert f"`{src['entry_point']}` to `{src['entry_point']}_v2`" in p.turns[0]
    msgs = code[0].chat(["A1", "A2"])
    assert [m["role"] for m in msgs] == ["user", "assistant", "user", "assistant", "user"]
    assert [m["content"] for m in msgs[1::2]] == ["A1", "A2"] and msgs[4]["content"] == code[0].turns[1]
    with pytest.raises(ValueError):
        code[0].chat(["A1", "A2", "A3"])
    # a selection holds both kinds, is deterministic and nested, and leaves other categories' choices alone
    five = data.load(["multiturn"], limit=5, seed=0)
    assert len(five) == 5 and {p.stratum for p in five} == {"code", "text"}
    assert five == data.load(["multiturn"], limit=5, seed=0)
    assert set(data.load(["multiturn"], limit=3, seed=0)) <= set(five)
    assert "multiturn" in data.DEFAULT_DATA
    assert data.select(data.load_humaneval(), limit=3, seed=0) == [
        p for p in data.load(["humaneval", "multiturn"], limit=3, seed=0) if p.category == "humaneval"]


def test_selection_is_per_category_deterministic_and_nested() -> None:
    prompts = data.load_mtbench() + data.load_humaneval()
    three = data.select(prompts, limit=3, seed=0)
    assert Counter(p.category for p in three) == {c: 3 for c in [*data.MTBENCH_CATEGORIES, "humaneval"]}
    assert three == data.select(prompts, limit=3, seed=0)
    one = data.select(prompts, limit=1, seed=0)
    assert set(one) <= set(three)
    assert data.select(prompts, limit=3, seed=1) != three
    assert data.select(prompts, limit=500, seed=0) == prompts
    with pytest.raises(InvalidRequestError):
        data.select(prompts, limit=0, seed=0)


def test_load_filters_categories_and_interleaves() -> None:
    got = data.load(["mtbench", "humaneval"], categories=["math", "humaneval"], limit=2, seed=0)
    assert [p.category for p in got] == ["math", "humaneval", "math", "humaneval"]
    with pytest.raises(InvalidRequestError, match="unknown category"):
        data.load(["mtbench"], categories=["humaneval"])
    with pytest.raises(InvalidRequestError, match="unknown data set"):
        data.load(["mmlu"])


def test_cli_rejects_unknown_systems_and_data_before_loading_a_model() -> None:
    r = CliRunner().invoke(main, ["bench", "--systems", "off,turbo", "--model", "/nonexistent.gguf"])
    assert r.exit_code == 2 and "turbo" in r.output
    r = CliRunner().invoke(main, ["bench", "--data", "mmlu", "--model", "/nonexistent.gguf"])
    assert r.exit_code == 2 and "unknown data set" in r.output
    for bad in ("auto", "auto:turbo", ":off"):
        r = CliRunner().invoke(main, ["bench", "--compare", bad, "--model", "/nonexistent.gguf"])
        assert r.exit_code == 2 and "--compare" in r.output and "A:B" in r.output, (bad, r.output)


def test_cli_refuses_a_result_of_another_schema(tmp_path: Path) -> None:
    old = tmp_path / "bench.json"
    old.write_text(json.dumps({"schema": "sdfp-edge-bench/1", "summary": []}))
    r = CliRunner().invoke(main, ["bench", "--from-json", str(old), "--out", str(tmp_path / "out")])
    assert r.exit_code == 2 and "sdfp-edge-bench/1" in r.output and SCHEMA in r.output
    assert not (tmp_path / "out" / "bench.md").exists()


def test_a_schema_2_record_still_renders_as_it_was_committed() -> None:
    from sdfp_edge.bench import report

    run = Path(__file__).resolve().parents[1] / "models" / "bench" / "qwen2.5-coder-1.5b"
    result = json.loads((run / "bench.json").read_text())
    assert result["schema"] == "sdfp-edge-bench/2"
    assert report.markdown(result) == (run / "bench.md").read_text()  # min-max, no intervals


def test_the_report_says_how_each_systems_threads_waited() -> None:
    """sdfp-edge bounds libgomp's spin and a plain llama.cpp process does not: on an idle machine that alone
    parted `off` from llama.cpp by 2% (docs/threads-and-memory.md), so a record says who waited how."""
    from sdfp_edge.bench import report

    run = Path(__file__).resolve().parents[1] / "models" / "bench" / "smollm2-135m-mtbench-zen5-2026-12-07"
    result = json.loads((run / "bench.json").read_text())
    assert not [line for line in report.markdown(result).splitlines() if "GOMP_SPINCOUNT" in line]  # kept no value
    spins = {"off": "3000", "auto": "3000"}
    for s in result["systems"]:
        s["GOMP_SPINCOUNT"] = spins.get(s["name"])
    lines = [line for line in report.markdown(result).splitlines() if "GOMP_SPINCOUNT" in line]
    assert len(lines) == 1, lines
    assert lines[0].startswith("- GOMP_SPINCOUNT, as each process saw it: unset (libgomp's default) for "
                               "`llama-cpp`, `llama-server-ngram-simple`, `llama-server-ngram-mod`; 3000 for "
                               "`off`, `auto` (")


def test_a_worker_reports_the_spin_its_llama_cpp_loaded_with(tmp_path: Path) -> None:
    """libgomp reads GOMP_SPINCOUNT once, when llama.cpp loads: sdfp-edge's backend sets its bound first, a plain
    llama-cpp-python import leaves the default, and build_info reports what each process loaded with."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    first = {"sdfp": "from sdfp_edge.runtime.backend import GOMP_SPINCOUNT, _import_llama_cpp; "
                     "_import_llama_cpp(GOMP_SPINCOUNT)",
             "plain": "import llama_cpp"}
    seen = {}
    for name, load in first.items():
        code = f"{load}\nfrom sdfp_edge.bench.worker import build_info\nprint(build_info()['GOMP_SPINCOUNT'])"
        out = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, check=True, capture_output=True,
                             text=True, timeout=120)
        seen[name] = out.stdout.strip().splitlines()[-1]
    from sdfp_edge.runtime.backend import GOMP_SPINCOUNT

    assert seen == {"sdfp": GOMP_SPINCOUNT, "plain": "None"}


def test_the_spin_is_bounded_only_where_a_layers_work_per_thread_is_large(
        smollm2: Path, qwen05: Path, tmp_path: Path) -> None:
    """A backend bounds libgomp's spin for Qwen2.5-Coder-0.5B on 2 threads (7.5M weights a layer per
    thread, where the bound was measured to help under contention) and leaves llama.cpp's default for
    SmolLM2 (1.8M, where it lost) and for the 0.5B on 4 threads; a setting of the user's wins, and
    nothing is set once llama.cpp is loaded (libgomp has read its settings by then)."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}

    def spin_seen(model: Path, threads: int, *, before: str = "", extra: dict[str, str] | None = None) -> str:
        code = (f"{before}\nfrom sdfp_edge.runtime.backend import LlamaBackend\n"
                f"LlamaBackend({str(model)!r}, n_ctx=128, n_threads={threads})\n"
                "from sdfp_edge.bench.worker import build_info\nprint(build_info()['GOMP_SPINCOUNT'])")
        out = subprocess.run([sys.executable, "-c", code], env={**env, **(extra or {})}, cwd=tmp_path, check=True,
                             capture_output=True, text=True, timeout=180)
        return out.stdout.strip().splitlines()[-1]

    from sdfp_edge.runtime.backend import GOMP_SPINCOUNT

    assert spin_seen(qwen05, 2) == GOMP_SPINCOUNT
    assert spin_seen(smollm2, 2) == "None"
    assert spin_seen(qwen05, 4) == "None"
    assert spin_seen(qwen05, 2, extra={"GOMP_SPINCOUNT": "12345"}) == "12345"
    assert spin_seen(qwen05, 2, before="import llama_cpp") == "None"


# --- the systems and how each is started -------------------------------------------------------------
def _setup(**kw: object) -> Setup:
    base = dict(fit=(23, 25, 26), fit_source="GGUF metadata (fit)", fit_from_cli=False, n_layer=30,
                draft_model=Path("/m/draft.gguf"), server=Path("/bin/llama-server"), server_missing="", seed=0)
    return Setup(**{**base, **kw})  # type: ignore[arg-type]


def test_every_system_is_available_with_a_skip_list_a_draft_model_and_the_server() -> None:
    notes: list[str] = []
    names = systems.choose(None, _setup(), notes)
    assert names == list(systems.SYSTEMS) and notes == []
    assert names[0] == BASE and "off" in names and systems.A_A_CONTROL not in names  # the control only on request
    specs = {n: systems.spec_for(n, _setup()) for n in names}
    assert {s.runner for s in specs.values()} == {"sdfp", "llama-cpp-python", "llama-server"}
    assert specs["llama-cpp"].options == {"lookup": False} and specs["llama-cpp-lookup"].options == {"lookup": True}
    assert specs["llama-server"].options == {}
    assert specs["llama-server-ngram-mod"].options == {"spec_type": "ngram-mod"}
    assert specs["llama-server-draft"].options == {"spec_type": "draft-simple", "draft_model": "/m/draft.gguf"}
    assert specs["auto"].options == {"mode": "auto", "skip_layers": None, "draft_model": None}  # one model
    assert specs["off"].options["draft_model"] is None  # plain decoding loads no draft model
    assert specs["layerskip-lastk"].options == {"mode": "layerskip", "skip_layers": [26, 27, 28]}
    cli = systems.spec_for("layerskip", _setup(fit_from_cli=True))
    assert cli.options["skip_layers"] == [23, 25, 26]


def test_missing_pieces_leave_systems_out_with_the_reason() -> None:
    notes: list[str] = []
    hint = "llama-server is not built: run `python tools/build_llama_server.py`"
    names = systems.choose(None, _setup(fit=(), draft_model=None, server=None, server_missing=hint), notes)
    assert names == ["llama-cpp", "llama-cpp-lookup", "off", "auto", "lookup"]
    assert any("llama-server-ngram-simple left out: " + hint in n for n in notes)
    assert any("layerskip left out: no skip list" in n for n in notes)
    assert any("draft-model left out: no --draft-model" in n for n in notes)
    with pytest.raises(ValueError, match="llama-server .*build_llama_server"):
        systems.choose(["llama-server"], _setup(server=None, server_missing=hint), [])
    with pytest.raises(ValueError, match="unknown system"):
        systems.choose(["turbo"], _setup(), [])
    notes = []
    assert systems.choose(["auto", "off-again"], _setup(), notes) == ["llama-cpp", "off", "auto", "off-again"]
    assert len(notes) == 2  # both references added, and said so


def test_start_order_puts_sdfp_first_and_plain_llama_cpp_last() -> None:
    # a process started later can decode faster (systems.start_order): the order must never favour sdfp-edge
    names = [*systems.SYSTEMS, systems.A_A_CONTROL]
    order = systems.start_order(names)
    assert sorted(order) == sorted(names)
    assert order[0] == "off" and order[-1] == BASE
    kinds = [systems.spec_for(n, _setup()).kind for n in order]
    first_peer = min(i for i, k in enumerate(kinds) if k in ("peer", "server"))
    assert all(k in ("sdfp", "baseline") for k in kinds[:first_peer])
    assert all(k in ("peer", "server") for k in kinds[first_peer:])
    assert systems.start_order(["llama-cpp", "llama-server-ngram-simple", "auto", "off"]) == \
        ["off", "auto", "llama-server-ngram-simple", "llama-cpp"]


class _FakeProcess:
    """A system process that answers at once, or fails on the prompts it is told to."""

    def __init__(self, name: str, fails_on: tuple[int, ...] = ()) -> None:
        self.spec = SystemSpec(name, "peer", "llama-cpp-python", "fake")
        self.fails_on, self.load_s, self.info = fails_on, 0.1, {}
        self.log: list[list[int]] = []  # the ids of every request it got

    def run(self, req: Request):
        from sdfp_edge.bench.processes import WorkerError
        from sdfp_edge.bench.protocol import Trace

        self.log.append(list(req.ids))
        if req.ids[0] in self.fails_on:
            raise WorkerError(f"system {self.spec.name}: ValueError: broken\nmore")
        # an answer that depends on what was asked: the next turn's messages show which answer was fed
        return Trace(request=1, tokens=[req.ids[0], 2, 3], times=[0.1, 0.2, 0.3], first_cycle=1, verifies=3)

    def close(self) -> None:
        pass


def test_a_failed_request_is_recorded_and_the_run_goes_on() -> None:
    from sdfp_edge.bench.data import Prompt
    from sdfp_edge.bench.runner import BenchConfig, _rounds

    prompts = [Prompt(f"p{i}", "writing", "x") for i in range(3)]
    procs = [_FakeProcess(BASE, fails_on=(2,)), _FakeProcess("off"), _FakeProcess("llama-cpp-lookup", fails_on=(0,))]
    failures: list[dict] = []
    records, _ = _rounds(prompts, procs, {f"p{i}": [i] for i in range(3)}, BenchConfig(), False, failures)
    assert [(f["system"], f["prompt_id"]) for f in failures] == [("llama-cpp-lookup", "p0"), (BASE, "p2")]
    assert failures[0]["error"].startswith("system llama-cpp-lookup: ValueError: broken")
    # p0 without the failed system; p1 whole; p2 left out for all: it has no reference to pair with
    assert sorted((r.prompt_id, r.system) for r in records) == [
        ("p0", "llama-cpp"), ("p0", "off"), ("p1", "llama-cpp"), ("p1", "llama-cpp-lookup"), ("p1", "off")]


class _FakeChat:
    """The coordinator's chat template: one id per distinct conversation (10, 11, ...)."""

    def __init__(self) -> None:
        self.seen: list[list[dict[str, str]]] = []

    def tokenize_chat(self, messages: list[dict[str, str]]) -> list[int]:
        self.seen.append(messages)
        return [10 + len(self.seen) - 1]

    def detokenize(self, ids: list[int]) -> str:
        return "answer " + " ".join(map(str, ids))


def test_a_chat_sends_every_system_the_same_turns_with_the_base_answer_fed_in() -> None:
    from sdfp_edge.bench.data import Prompt
    from sdfp_edge.bench.runner import BenchConfig, _rounds, round_orders

    prompts = [Prompt("c0", "multi-turn", "paste", turns=("edit 1", "edit 2")), Prompt("p1", "writing", "x")]
    names = [BASE, "off", "auto", "llama-server-ngram-simple"]
    procs = [_FakeProcess(n) for n in names]
    procs[3].spec = SystemSpec(names[3], "server", "llama-server", "fake")
    chat, failures, transcripts = _FakeChat(), [], []
    orders = round_orders(names, 2, seed=7)
    assert orders == round_orders(names, 2, seed=7) and orders[0] != orders[1]  # seeded, one per repeat
    assert all(sorted(o) == sorted(names) for o in orders)
    records, _ = _rounds(prompts, procs, {"c0": [1], "p1": [2]}, BenchConfig(repeats=2), False, failures, chat=chat,
                         orders=orders, transcripts=transcripts)
    assert failures == []
    for proc in procs:  # every system, the server included, got the same ids in the same sequence
        assert proc.log == procs[0].log
    # per repeat: turn 1 on the first ids, turns 2 and 3 on conversations holding the base's answers
    assert procs[0].log == [[1], [10], [11], [2], [1], [12], [13], [2]]
    assert chat.seen[0] == [{"role": "user", "content": "paste"}, {"role": "assistant", "content": "answer 1 2 3"},
                            {"role": "user", "content": "edit 1"}]
    assert chat.seen[1][-2:] == [{"role": "assistant", "content": "answer 10 2 3"}, {"role": "user", "content": "edit 2"}]
    assert [t["answers"] for t in transcripts] == [["answer 1 2 3", "answer 10 2 3", "answer 11 2 3"],
                                                   ["answer 1 2 3", "answer 12 2 3", "answer 13 2 3"]]
    # one record per chat, system and repeat, its turns summed; the first prompt of a repeat runs in its order
    chats = [r for r in records if r.prompt_id == "c0"]
    assert len(chats) == 2 * len(names) and all(r.turns == 3 and r.tokens == 9 for r in chats)
    assert all(r.verifies == 9 and r.total_s == pytest.approx(0.9) and r.decode_tokens == 6 for r in chats)
    assert all(len(r.system_stats["turns"]) == 3 for r in chats)
    for rep, order in enumerate(orders):
        assert {r.system: r.position for r in chats if r.repeat == rep} == {n: i for i, n in enumerate(order)}
        # the next prompt starts one place further on
        assert {r.system: r.position for r in records if r.prompt_id == "p1" and r.repeat == rep} == \
            {n: (i - 1) % len(names) for i, n in enumerate(order)}


def test_a_chat_a_system_fails_midway_is_left_out_for_that_system_only() -> None:
    from sdfp_edge.bench.data import Prompt
    from sdfp_edge.bench.runner import BenchConfig, _rounds

    prompts = [Prompt("c0", "multi-turn", "paste", turns=("edit 1", "edit 2"))]
    procs = [_FakeProcess(BASE), _FakeProcess("off"), _FakeProcess("auto", fails_on=(10,))]
    failures: list[dict] = []
    records, _ = _rounds(prompts, procs, {"c0": [1]}, BenchConfig(), False, failures, chat=_FakeChat())
    assert [(f["system"], f["turn"]) for f in failures] == [("auto", 2)]
    assert sorted(r.system for r in records) == [BASE, "off"]
    assert procs[2].log == [[1], [10]]  # not asked the third turn
    # the base failing a turn drops the chat for everyone
    procs = [_FakeProcess(BASE, fails_on=(11,)), _FakeProcess("off")]
    failures = []
    records, _ = _rounds(prompts, procs, {"c0": [1]}, BenchConfig(), False, failures, chat=_FakeChat())
    assert records == [] and [f["system"] for f in failures] == [BASE]


def test_compare_pairs_must_name_systems_that_run() -> None:
    from sdfp_edge.bench.runner import _pairs

    assert _pairs([("auto", "off")], ["llama-cpp", "off", "auto"]) == [("auto", "off")]
    assert _pairs(None, ["llama-cpp", "off"]) == []
    with pytest.raises(InvalidRequestError, match="llama-server-ngram-mod"):
        _pairs([("auto", "llama-server-ngram-mod")], ["llama-cpp", "off", "auto"])


def test_llama_server_command_line() -> None:
    load = LoadConfig(model="/m/t.gguf", n_ctx=2048, threads=2, n_gpu_layers=None, k_max=4, threshold=0.8)
    plain = llama_server.server_argv(Path("/b/llama-server"), systems.spec_for("llama-server", _setup()), load, 8081)
    assert plain[:9] == ["/b/llama-server", "-m", "/m/t.gguf", "-c", "2048", "-t", "2", "-tb", "2"]
    assert "--spec-type" not in plain and "-ngl" not in plain and plain[plain.index("--port") + 1] == "8081"
    assert plain[plain.index("--host") + 1] == "127.0.0.1" and plain[plain.index("-np") + 1] == "1"
    ngram = llama_server.server_argv(Path("/b/s"), systems.spec_for("llama-server-ngram-cache", _setup()), load, 1)
    assert ngram[ngram.index("--spec-type") + 1] == "ngram-cache" and "-md" not in ngram
    gpu = LoadConfig(**{**load.__dict__, "n_gpu_layers": -1})
    draft = llama_server.server_argv(Path("/b/s"), systems.spec_for("llama-server-draft", _setup()), gpu, 1)
    assert draft[draft.index("--spec-type") + 1] == "draft-simple" and draft[draft.index("-md") + 1] == "/m/draft.gguf"
    assert draft[draft.index("--spec-draft-n-max") + 1] == "4"
    assert draft[draft.index("-ngl") + 1] == "all" and draft[draft.index("-ngld") + 1] == "all"


# --- real processes --------------------------------------------------------------------------------
def _load(model: Path) -> LoadConfig:
    return LoadConfig(model=str(model), n_ctx=512, threads=2, n_gpu_layers=0, k_max=4, threshold=0.8)


@pytest.mark.slow
def test_worker_answers_over_its_pipe_and_reports_errors(smollm2: Path, tmp_path: Path) -> None:
    from sdfp_edge.bench.processes import WorkerError, WorkerProcess

    w = WorkerProcess(SystemSpec("off", "sdfp", "sdfp", "test", {"mode": "off"}), _load(smollm2), tmp_path)
    try:
        assert w.load_s > 0 and w.info["backend"]["n_ctx"] == 512 and "CPU" in w.info["build"]["llama_cpp_system_info"]
        ids = w.tokenize_chat([{"role": "user", "content": "Count to five."}])
        assert len(ids) > 5
        req = Request(ids=ids, max_tokens=6, temperature=0.0, seed=0)
        a, b = w.run(req), w.run(req)
        assert (a.request, b.request) == (1, 2)  # nothing ran before the first recorded request
        assert a.tokens == b.tokens and 1 <= len(a.tokens) <= 6 and a.first_cycle == 1
        assert a.times == sorted(a.times) and len(a.times) == len(a.tokens) and a.verifies == len(a.tokens)
        assert a.system_stats["tokens"] == len(a.tokens)
        with pytest.raises(WorkerError, match="system off: .*context"):
            w.run(Request(ids=[1] * 600, max_tokens=4, temperature=0.0, seed=0))
        assert w.run(req).tokens == a.tokens  # a failed request leaves the worker serving
    finally:
        w.close()
    assert w.proc.returncode == 0
    with pytest.raises(WorkerError, match="system broken: .*"):
        WorkerProcess(SystemSpec("broken", "sdfp", "sdfp", "test", {"mode": "layerskip", "skip_layers": [29]}),
                      _load(smollm2), tmp_path)


def test_a_bench_worker_keeps_its_costs_where_the_bench_says(smollm2: Path, tmp_path: Path) -> None:
    """The bench's sdfp systems use a store of the bench's own (runner.run passes its temporary
    directory): neither the user's stored costs nor the suite's are read or written."""
    from dataclasses import replace

    from sdfp_edge.bench.processes import WorkerProcess
    from sdfp_edge.paths import cost_dir

    before = sorted(cost_dir().glob("*.json")) if cost_dir().exists() else []
    own = tmp_path / "bench-costs"
    w = WorkerProcess(SystemSpec("auto", "sdfp", "sdfp", "test", {"mode": "auto"}),
                      replace(_load(smollm2), cost_dir=str(own)), tmp_path)
    try:
        ids = w.tokenize_chat([{"role": "user", "content": "Count to five."}])
        assert w.run(Request(ids=ids, max_tokens=6, temperature=0.0, seed=0)).tokens
    finally:
        w.close()
    assert len(list(own.glob("*.json"))) == 1
    assert (sorted(cost_dir().glob("*.json")) if cost_dir().exists() else []) == before


def test_the_lookup_peer_runs_past_n_batch_tokens_of_context(smollm2: Path) -> None:
    """llama-cpp-python 0.3.36 sizes a draft model's score array by logits_all: without it a
    context past n_batch (512) fails, so the peer passes logits_all=True (worker.py)."""
    from sdfp_edge.bench.worker import LlamaCppSystem

    spec = systems.spec_for("llama-cpp-lookup", _setup())
    peer = LlamaCppSystem(spec, LoadConfig(model=str(smollm2), n_ctx=1024, threads=2, n_gpu_layers=0, k_max=4,
                                           threshold=0.8))
    try:
        trace = peer.run(Request(ids=[1] + [28, 1322, 253, 216] * 130, max_tokens=24, temperature=0.0, seed=0))
    finally:
        peer.close()
    assert len(trace.tokens) == 24 and trace.drafted > 0  # a repeating prompt: the lookup drafts


@pytest.mark.slow
def test_bench_each_system_in_its_own_process(smollm2: Path, tmp_path: Path) -> None:
    """A tiny real run, from a coordinator process that must never load llama.cpp itself."""
    from sdfp_edge.metadata import read_skip_metadata

    fit_in_gguf = read_skip_metadata(smollm2) is not None
    out = tmp_path / "bench"
    argv = ["bench", "--limit", "1", "--categories", "humaneval,writing", "-n", "8", "--draft-model", str(smollm2),
            "--systems", "llama-cpp,llama-cpp-lookup,off,auto,lookup,layerskip,draft-model,layerskip-lastk",
            "--out", str(out), "--no-progress", "--no-cost-cache"]  # a cold start, whatever ran before
    if not fit_in_gguf:
        argv += ["--skip-layers", SMOL_SKIP]
    script = ("import sys; from sdfp_edge.cli.main import main\n"
              "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n    code = e.code\n"
              "print('LLAMA_CPP_IMPORTED', 'llama_cpp' in sys.modules, file=sys.stderr); sys.exit(code)")
    proc = subprocess.run([sys.executable, "-c", script, *argv], check=False, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "LLAMA_CPP_IMPORTED False" in proc.stderr  # the coordinator only starts processes

    res = json.loads((out / "bench.json").read_text())
    assert res["schema"] == SCHEMA and res["base"] == BASE and res["references"] == [BASE, "off"]
    for key in ("created", "command", "elapsed_s", "machine", "build", "model", "draft_model", "config", "data",
                "systems", "skip_lists", "cost_models", "notes", "runs", "summary"):
        assert key in res, key
    # every worker ran in the user's environment: the tests' own OpenMP setting reached them
    assert res["build"]["OMP_WAIT_POLICY"] == os.environ.get("OMP_WAIT_POLICY")
    # ... and a spin count set by the user's environment (here none, with PASSIVE) reached each of them as it was
    assert {s["name"]: s["GOMP_SPINCOUNT"] for s in res["systems"]} == dict.fromkeys(
        [s["name"] for s in res["systems"]], os.environ.get("GOMP_SPINCOUNT"))
    assert res["model"]["weight_format"] == "Q4_1" and res["model"]["n_layer"] == 30
    assert re.fullmatch(r"[0-9a-f]{64}", res["model"]["sha256"])
    assert res["config"]["max_tokens"] == 8 and res["config"]["repeats"] == 1
    names = [s["name"] for s in res["systems"]]
    assert names == ["llama-cpp", "llama-cpp-lookup", "off", "auto", "layerskip", "lookup", "draft-model",
                     "layerskip-lastk"]
    assert all(s["load_s"] > 0 for s in res["systems"])
    started = [s["name"] for s in sorted(res["systems"], key=lambda s: s["started"])]
    assert started == systems.start_order(names) and started[-1] == BASE
    assert len(res["skip_lists"]["layerskip-lastk"]["layers"]) == len(res["skip_lists"]["layerskip"]["layers"])

    runs = res["runs"]
    assert len(runs) == 2 * len(names)  # two prompts x every system, nothing else
    for r in runs:
        assert 1 <= r["tokens"] <= 8 and r["end_to_end_rate"] > 0 and r["verifies"] >= 1, r
        # each process's first request is recorded as it came: the first prompt's run
        assert r["first_request"] == (r["prompt_id"] == runs[0]["prompt_id"]), r
    first_round = {r["system"]: r for r in runs if r["prompt_id"] == runs[0]["prompt_id"]}
    assert first_round["off"]["divergence"] is None  # the same tokens as plain llama.cpp (SmolLM2 is batch-invariant)
    rows = {r["system"]: r for r in res["summary"] if r["category"] == "all"}
    assert set(rows) == set(names)
    for name, r in rows.items():
        assert r["end_to_end_tokens_per_second"]["median"] > 0, name
        assert (r["vs"][BASE] is None) == (name == BASE) and (r["vs"]["off"] is None) == (name == "off"), name
        if name != BASE:
            assert r["vs"][BASE]["end_to_end"]["n"] == 2, name
    assert rows["llama-cpp"]["tokens_per_verify"] == 1.0  # one eval per token: the counter counts evals
    for name in ("layerskip", "layerskip-lastk", "draft-model"):
        assert rows[name]["k_mean"] > 0 and rows[name]["c"] > 0, name  # forced drafts ran and were timed
    assert rows["draft-model"]["acceptance"] > 0.9  # the model drafting for itself agrees with itself
    for name in ("auto", "layerskip", "lookup", "draft-model"):
        assert res["cost_models"][name]["V"]["1"] == 1.0, name

    md = (out / "bench.md").read_text()
    assert all(f"| {n} |" in md for n in names) and f"x {BASE} end-to-end" in md and "x off end-to-end" in md
    png = (out / "bench.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    # the report is a function of bench.json alone: regenerating it gives the same markdown
    again = tmp_path / "again"
    r = CliRunner().invoke(main, ["bench", "--from-json", str(out / "bench.json"), "--out", str(again)])
    assert r.exit_code == 0, r.output
    assert (again / "bench.md").read_text() == md and (again / "bench.png").exists()


@pytest.mark.slow
def test_bench_repeats_with_intervals_and_a_multi_turn_chat(smollm2: Path, tmp_path: Path, monkeypatch) -> None:
    """--repeats 2 on one chat and one single-turn prompt: seeded orders, every run kept, intervals."""
    data_files = data.data_dir()
    data.load_chats()  # the data files, fetched into the user's cache once
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "data").symlink_to(data_files)
    monkeypatch.setenv("SDFP_EDGE_CACHE", str(tmp_path / "cache"))  # cost files: not the user's cache
    out = tmp_path / "bench"
    argv = ["bench", "--model", str(smollm2), "--limit", "1", "--categories", "multi-turn,writing", "-n", "8",
            "--repeats", "2", "--systems", "llama-cpp,off,auto", "--compare", "auto:off", "--out", str(out), "--no-progress",
            "--no-cost-cache", "--seed", "3"]
    r = CliRunner().invoke(main, argv, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    res = json.loads((out / "bench.json").read_text())
    assert res["schema"] == SCHEMA and res["config"]["repeats"] == 2 and res["config"]["order_seed"] == 3
    names = ["llama-cpp", "off", "auto"]
    orders = res["config"]["orders"]
    assert len(orders) == 2 and all(sorted(o) == sorted(names) for o in orders)
    runs = res["runs"]
    assert len(runs) == 2 * 2 * 3  # repeats x prompts x systems: every repeat's raw figures kept
    first_id = res["data"]["prompts"][0]["id"]  # every repeat starts every process afresh
    assert all(r["first_request"] == (r["prompt_id"] == first_id) for r in runs)
    chat = [r for r in runs if r["category"] == "multi-turn"]
    assert {r["prompt_id"] for r in chat} == {"chat/HumanEval/" + r["prompt_id"].rsplit("/", 1)[1] for r in chat}
    shift = [p["id"] for p in res["data"]["prompts"]].index(chat[0]["prompt_id"])  # rotated once per prompt
    for rep in (0, 1):
        this = [r for r in chat if r["repeat"] == rep]
        assert {r["system"]: r["position"] for r in this} == {n: (i - shift) % 3 for i, n in enumerate(orders[rep])}
        turns = [[t["prompt_tokens"] for t in r["system_stats"]["turns"]] for r in this]
        assert all(t == turns[0] and len(t) == 3 for t in turns)  # every system, the same ids per turn
        first = this[0]["system_stats"]["turns"]
        for a, b in zip(first, first[1:]):  # the answer was fed into the next turn
            assert b["prompt_tokens"] >= a["prompt_tokens"] + a["tokens"] - 1
        assert all(r["turns"] == 3 and r["tokens"] == sum(t["tokens"] for t in r["system_stats"]["turns"])
                   for r in this)
    fed = res["data"]["chats"]
    assert [c["repeat"] for c in fed] == [0, 1] and all(len(c["answers"]) == 3 for c in fed)
    assert fed[0]["answers"] == fed[1]["answers"]  # greedy: the same conversation in both repeats
    assert {p["turns"] for p in res["data"]["prompts"]} == {1, 3}
    rows = {(r["system"], r["category"]): r for r in res["summary"]}
    for (system, cat), row in rows.items():
        if system == BASE:
            continue
        iv = row["vs"][BASE]["end_to_end_interval"]
        assert iv["lo"] <= iv["median"] <= iv["hi"] and iv["n"] == (4 if cat == "all" else 2), (system, cat)
        assert iv["call"] == "too few runs to call"  # at most 4 ratios: nothing is called
        assert iv["median"] == row["vs"][BASE]["end_to_end"]["median"]
    comps = {(c["a"], c["b"], c["category"]) for c in res["comparisons"]}
    assert comps == {("auto", "off", c) for c in ("multi-turn", "writing", "all")}
    md = (out / "bench.md").read_text()
    assert "Pairwise" in md and re.search(r"\| auto \| \d\.\d\dx \[\d\.\d\d, \d\.\d\d\]", md), md
    assert "--repeats 2" in res["command"] and "--compare auto:off" in res["command"]

    # one round of the record, re-summarized (bench --from-json --rounds): its runs only
    one_dir = tmp_path / "round1"
    r = CliRunner().invoke(main, ["bench", "--from-json", str(out / "bench.json"), "--rounds", "1",
                                  "--out", str(one_dir)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    one = json.loads((one_dir / "bench.json").read_text())
    assert {x["repeat"] for x in one["runs"]} == {1} and one["config"]["rounds_selected"] == [1]
    assert one["runs"] == [x for x in runs if x["repeat"] == 1]
    rows1 = {(x["system"], x["category"]): x for x in one["summary"]}
    assert rows1[("auto", "all")]["vs"][BASE]["end_to_end_interval"]["n"] == 2  # one round of two prompts
    assert {(c["a"], c["b"]) for c in one["comparisons"]} == {("auto", "off")}
    assert "round(s) 1 of the 2 run" in (one_dir / "bench.md").read_text()
    # a comparison not asked for when it ran (bench --from-json --compare): every round, one pair more
    both_dir = tmp_path / "off-vs-auto"
    r = CliRunner().invoke(main, ["bench", "--from-json", str(out / "bench.json"), "--compare", "off:auto",
                                  "--out", str(both_dir)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    both = json.loads((both_dir / "bench.json").read_text())
    assert both["runs"] == runs and both["summary"] == res["summary"]
    assert [c for c in both["comparisons"] if (c["a"], c["b"]) == ("auto", "off")] == res["comparisons"]
    off_auto = {c["category"] for c in both["comparisons"] if (c["a"], c["b"]) == ("off", "auto")}
    assert off_auto == {"multi-turn", "writing", "all"}
    assert "| off | auto | all |" in (both_dir / "bench.md").read_text()
    assert "compared as well: off against auto" in (both_dir / "bench.md").read_text()
    before = (out / "bench.json").read_text()
    for argv, why in ((["--rounds", "2", "--out", str(tmp_path / "x")], "not in the record"),
                      (["--compare", "auto:layerskip", "--out", str(tmp_path / "y")], "do not run"),
                      (["--compare", "auto", "--out", str(tmp_path / "z")], "give two systems"),
                      (["--compare", "off:auto", "--out", str(out)], "would overwrite"),
                      (["--rounds", "0", "--out", str(out)], "would overwrite")):
        r = CliRunner().invoke(main, ["bench", "--from-json", str(out / "bench.json"), *argv])
        assert r.exit_code == 2 and why in r.output, r.output
    assert (out / "bench.json").read_text() == before  # the input is never modified


SERVER, WHY_NO_SERVER = llama_server.find_binary()


@pytest.mark.slow
@pytest.mark.skipif(SERVER is None, reason=f"{WHY_NO_SERVER} (tools/build_llama_server.py caches it)")
def test_bench_llama_server_peers(smollm2: Path, tmp_path: Path) -> None:
    from sdfp_edge.bench import runner

    prompts = [data.Prompt("copy", "copy", "Repeat exactly: the cat sat on the mat, the cat sat on the mat."),
               data.Prompt("free", "free", "Write one sentence about rivers.")]
    cfg = runner.BenchConfig(model=str(smollm2), n_ctx=1024, threads=2, max_tokens=16, data=[], repeats=2,
                             systems=["llama-server", "llama-server-ngram-simple", "llama-server-draft"],
                             draft_model=str(smollm2))
    res = runner.run(prompts, cfg, progress=False, log=lambda m: None)
    assert res["build"]["llama_server"]["binary"] == str(SERVER)
    cmds = {s["name"]: s["command"] for s in res["systems"]}
    assert "--spec-type ngram-simple" in cmds["llama-server-ngram-simple"] and "-md" in cmds["llama-server-draft"]
    assert len(res["runs"]) == 2 * 2 * 5  # rounds x prompts x (3 servers + llama-cpp + off)
    runs = {(r["system"], r["prompt_id"]): r for r in res["runs"] if r["repeat"] == 0}
    for r in res["runs"]:
        name, pid = r["system"], r["prompt_id"]
        assert r["first_request"] == (pid == "copy"), r  # every repeat starts every process afresh
        timings = r["system_stats"].get("timings")
        if name.startswith("llama-server"):
            # every generated token was streamed back with its id, and the server's own count agrees;
            # the whole prompt was prefilled (no prefix reuse from the previous request)
            assert timings["predicted_n"] == r["tokens"] and timings["prompt_n"] == r["prompt_tokens"], r
            assert r["verifies"] == r["tokens"] - r["accepted"], r
        # greedy: llama.cpp's server and llama-cpp-python run the same kernels on the same ids
        assert r["divergence"] is None, (name, pid)
    rows = {r["system"]: r for r in res["summary"] if r["category"] == "all"}
    assert rows["llama-server"]["vs"][BASE]["end_to_end"]["n"] == 4  # paired per prompt and round
    assert runs["llama-server", "copy"]["drafted"] == 0
    assert runs["llama-server-draft", "copy"]["drafted"] > 0 and runs["llama-server-draft", "copy"]["draft_steps"] is None
    assert runs["llama-server-ngram-simple", "copy"]["draft_steps"] == 0
