"""`sdfp-edge bench`: its statistics, its data loaders, and one real quick run."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner

from sdfp_edge.bench import data, stats
from sdfp_edge.bench.runner import SCHEMA, SYSTEMS
from sdfp_edge.bench.stats import RunRecord
from sdfp_edge.bench.systems import last_k_layers, random_layers, uniform_layers
from sdfp_edge.cli import main
from sdfp_edge.errors import InvalidRequestError

SMOL_SKIP = "4,9,14,19,24"  # until the default GGUF carries a FIT list


# --- statistics ------------------------------------------------------------------------------------
def test_decode_window_leaves_out_the_first_cycle_and_its_burst() -> None:
    assert stats.decode_window([1, 1, 1, 2, 3, 3], [1.0, 1.0, 1.0, 1.5, 2.0, 2.0]) == (3, 1.0)
    assert stats.decode_window([1, 2, 3], [0.5, 0.7, 0.9]) == (2, pytest.approx(0.4))
    assert stats.decode_window([], []) == (0, 0.0)
    with pytest.raises(ValueError):
        stats.decode_window([1, 2], [0.1])


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


def _rec(pid: str, cat: str, system: str, rate: float, *, tokens: int = 11, verifies: int = 11, drafted: int = 0,
         accepted: int = 0, steps: int = 0, divergence: int | None = None) -> RunRecord:
    return RunRecord(prompt_id=pid, category=cat, system=system, prompt_tokens=20, tokens=tokens,
                     decode_tokens=tokens - 1, decode_s=(tokens - 1) / rate, first_s=0.1,
                     total_s=0.1 + (tokens - 1) / rate, verifies=verifies, drafted=drafted, accepted=accepted,
                     draft_steps=steps, steps_by_drafter={"layerskip": steps} if steps else {},
                     divergence=divergence)


def test_summarize_pairs_each_prompt_with_the_base() -> None:
    recs = [
        _rec("p1", "x", "off", 20.0), _rec("p2", "x", "off", 10.0), _rec("p3", "y", "off", 40.0),
        # the system is faster on p1, slower on p2 and p3; its pooled figures are chosen below
        _rec("p1", "x", "sys", 30.0, verifies=5, drafted=10, accepted=6, steps=10),
        _rec("p2", "x", "sys", 9.0, verifies=5, drafted=10, accepted=6, steps=10, divergence=3),
        _rec("p3", "y", "sys", 20.0, verifies=6, drafted=10, accepted=5, steps=12),
    ]
    rows = stats.summarize(recs, systems=["off", "sys"], categories=["x", "y"], costs={"sys": {"layerskip": 0.5}})
    by = {(r.system, r.category): r for r in rows}
    assert set(by) == {("off", "x"), ("off", "y"), ("off", "all"), ("sys", "x"), ("sys", "y"), ("sys", "all")}
    assert by["off", "all"].ratio is None and by["off", "all"].same_output is None
    x = by["sys", "x"].ratio
    assert (x.median, x.min, x.max, x.n) == (pytest.approx(1.2), 0.9, 1.5, 2)
    a = by["sys", "all"]
    assert a.ratio.median == pytest.approx(0.9) and a.ratio.min == 0.5 and a.ratio.max == 1.5
    assert a.tokens_per_second.median == 20.0
    assert a.acceptance == pytest.approx(17 / 30)
    assert a.tokens_per_verify == pytest.approx(33 / 16)
    assert a.k_mean == pytest.approx(32 / 16)
    assert a.c == pytest.approx(0.5)
    assert a.projected == pytest.approx((33 / 16) / (2.0 * 0.5 + 1))
    assert a.same_output == pytest.approx(2 / 3)
    assert by["sys", "y"].prompts == 1 and by["sys", "y"].ratio.median == 0.5
    assert by["off", "all"].acceptance is None  # nothing drafted
    # sampled runs: comparing ids with the base means nothing
    rows = stats.summarize(recs, systems=["sys"], categories=["x"], costs={}, compare_ids=False)
    assert all(r.same_output is None for r in rows) and all(r.projected is None for r in rows)


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


# --- a real quick run -------------------------------------------------------------------------------
@pytest.mark.slow
def test_bench_quick_one_category_every_system(smollm2: Path, tmp_path: Path) -> None:
    from sdfp_edge.metadata import read_skip_metadata

    fit_in_gguf = read_skip_metadata(smollm2) is not None
    out = tmp_path / "bench"
    cmd = [str(Path(sys.executable).parent / "sdfp-edge"), "bench", "--quick", "--limit", "1", "--categories", "humaneval",
           "--draft-model", str(smollm2), "--out", str(out), "--no-progress"]
    if not fit_in_gguf:
        cmd += ["--skip-layers", SMOL_SKIP]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]

    res = json.loads((out / "bench.json").read_text())
    assert res["schema"] == SCHEMA
    for key in ("created", "command", "elapsed_s", "machine", "build", "model", "draft_model", "config", "data",
                "base", "systems", "skip_lists", "cost_models", "notes", "runs", "summary"):
        assert key in res, key
    assert res["command"].startswith("sdfp-edge bench") and "--quick" in res["command"]
    m = res["machine"]
    assert m["cpu"] and m["threads"] >= 1 and len(m["load_average_start"]) == 3 and len(m["load_average_end"]) == 3
    assert "CPU" in res["build"]["llama_cpp_system_info"]
    assert res["model"]["weight_format"] == "Q4_1" and res["model"]["n_layer"] == 30
    assert re.fullmatch(r"[0-9a-f]{64}", res["model"]["sha256"])
    assert res["config"]["max_tokens"] == 64 and res["config"]["limit_per_category"] == 1
    assert res["config"]["greedy"] is True and res["config"]["categories"] == ["humaneval"]
    assert [p["category"] for p in res["data"]["prompts"]] == ["humaneval"]

    names = [s["name"] for s in res["systems"]]
    assert sorted(names) == sorted(SYSTEMS)  # every system ran, the draft model included
    fit = res["skip_lists"]["layerskip"]
    if fit_in_gguf:
        assert fit["source"].startswith("GGUF metadata")
    else:
        assert fit["layers"] == [int(x) for x in SMOL_SKIP.split(",")] and "--skip-layers" in fit["source"]
    for name in ("layerskip-random", "layerskip-uniform", "layerskip-lastk"):
        assert len(res["skip_lists"][name]["layers"]) == len(fit["layers"])

    assert len(res["runs"]) == len(SYSTEMS)  # one prompt x every system
    for r in res["runs"]:
        assert 2 <= r["tokens"] <= 64 and r["decode_rate"] > 0 and r["verifies"] >= 1, r
    rows = {r["system"]: r for r in res["summary"] if r["category"] == "all"}
    assert set(rows) == set(SYSTEMS)
    for name, r in rows.items():
        assert r["tokens_per_second"]["median"] > 0, name
        assert r["tokens_per_verify"] >= 1.0 and r["projected"] is not None, name
        assert (r["ratio"] is None) == (name == "off"), name
    assert rows["llama-cpp"]["tokens_per_verify"] == 1.0  # one eval per token: the counter counts evals
    for name in ("layerskip", "layerskip-random", "layerskip-uniform", "layerskip-lastk", "draft-model"):
        assert rows[name]["k_mean"] > 0 and rows[name]["c"] > 0, name  # forced drafts ran and were timed
    # the model drafting for itself agrees with itself (up to batch numerics)
    assert rows["draft-model"]["acceptance"] > 0.9
    for name in ("auto", "layerskip", "lookup", "draft-model"):
        cm = res["cost_models"][name]
        assert cm["V"]["1"] == 1.0 and "2" in cm["V"] and cm["t_token_ms"] > 0, name

    md = (out / "bench.md").read_text()
    assert all(f"| {n} |" in md for n in names) and "projection" in md
    png = (out / "bench.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000

    # the report is a function of bench.json alone: regenerating it gives the same markdown
    again = tmp_path / "again"
    r = CliRunner().invoke(main, ["bench", "--from-json", str(out / "bench.json"), "--out", str(again)])
    assert r.exit_code == 0, r.output
    assert (again / "bench.md").read_text() == md and (again / "bench.png").exists()
