"""What auto keeps across runs (issue 36): costs that a busy machine cannot make stale, a suite
that never touches the user's store, and a user who can see and reset it."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from sdfp_edge import paths
from sdfp_edge.api import Model
from sdfp_edge.cli.main import main
from sdfp_edge.runtime import engine
from sdfp_edge.runtime.controller import HALF_LIFE_S, Candidate, Controller, CostModel
from sdfp_edge.runtime.cost_store import SCHEMA, CostStore

T1 = 0.010


def quiet_controller(curve: dict[int, float], repeats: int = 3) -> Controller:
    """A controller that measured `curve` (V(n)) on a quiet machine, t_verify(1) beside each size."""
    c = Controller()
    for _ in range(repeats):
        for n, v in curve.items():
            c.cost.observe_verify(1, T1)
            c.cost.observe_verify(n, v * T1)
    return c


def stored(t_token: float, ratios: dict[int, float], *, at: float | None = None, weight: float = 16.0,
           acceptance: dict | None = None) -> dict:
    """A state in the store's format: V(n) relative to t_token, all measured at `at`."""
    at = time.time() if at is None else at
    return {"cost": {"t_token": t_token, "V": {str(n): v for n, v in ratios.items()},
                     "weight": {str(n): weight for n in ratios}, "at": {str(n): at for n in ratios},
                     "c": {}, "batch_token": None, "floor": t_token, "floor_at": at},
            "saved_at": at, "acceptance": acceptance or {}}


# the issue's file: t_verify(1) 12.3 ms beside t_verify(2) 47.8 ms and t_verify(8) 127 ms
ISSUE = stored(0.0123, {2: 47.8 / 12.3, 8: 127 / 12.3})
# a dear curve that no check of its numbers can reject (a batch of n below 1.25 n single
# tokens), at every size a lookup draft can have: a draft never pays by it
DEAR = stored(0.0123, {n: 1.2 * n for n in range(2, 34)})
LONG_MATCH = Candidate("lookup", 12, "lookup:8+", cost_prior=0.0, trusted=True, prior=0.95)


# --- what is stored ------------------------------------------------------------------------
def test_only_a_quiet_machines_samples_are_stored_as_ratios() -> None:
    c = quiet_controller({4: 2.0})
    c.cost.observe_verify(2, 4.0 * T1)  # dearer than 2 single tokens: a busy moment
    doc = c.state()["cost"]
    assert doc["t_token"] == T1 and doc["V"] == {"4": pytest.approx(2.0)} and doc["floor"] == T1
    for _ in range(8):  # another process takes the cores: single tokens at 3x their minimum
        c.cost.observe_verify(1, 3 * T1)
    c.cost.observe_verify(8, 6 * T1)
    assert c.cost.contended()
    doc = c.state()["cost"]
    assert "8" not in doc["V"] and doc["t_token"] == T1 and "floor" not in doc  # nothing from the busy part


def test_stored_ratios_price_drafts_at_this_process_single_token_time() -> None:
    c = Controller()
    c.load_state(stored(T1, {4: 2.0}))
    assert c.cost.ready and c.cost.verify(4) == pytest.approx(2.0 * T1)
    for _ in range(30):  # this machine is slower today (another power mode): one token takes 2x
        c.cost.observe_verify(1, 2 * T1)
    assert c.cost.verify(4) == pytest.approx(2.0 * c.cost.verify(1))


def test_ratios_a_quiet_machine_cannot_produce_are_dropped_on_load() -> None:
    c = Controller()
    c.load_state(ISSUE)
    assert c.cost.ready and c.cost.stored == {}
    c.load_state(DEAR)
    assert c.cost.stored == {n: 1.2 * n for n in range(2, 34)}


def test_a_size_timed_here_replaces_stale_stored_ones() -> None:
    c = Controller()
    c.load_state(DEAR)
    one = c.cost.verify(1)
    c.cost.observe_verify(1, one)
    c.cost.observe_verify(2, 1.3 * one)  # cheaper than stored: taken at once
    assert c.cost.verify(2) == pytest.approx(1.3 * one)
    c.cost.observe_verify(12, 2.5 * one)  # a larger size cheaper than the stored V(8): V(8) is stale
    assert c.cost.verify(8) <= 2.5 * one
    assert 8 not in c.cost.relative()["V"]
    # the file keeps what this process measured quietly, without the sizes it contradicts
    kept = c.state()["cost"]["V"]
    assert kept["2"] == pytest.approx(1.3) and kept["12"] == pytest.approx(2.5)
    assert not any(str(n) in kept for n in range(3, 12))  # dearer than V(12): stale
    assert kept["16"] == pytest.approx(19.2) and kept["33"] == pytest.approx(39.6)  # not contradicted: kept, aging


def test_stored_evidence_is_weighted_by_age() -> None:
    t0 = 1.8e9
    old = stored(T1, {2: 1.30}, at=t0, acceptance={"lookup:2+": {"reached": [8.0], "accepted": [6.0]}})
    c = Controller()
    c.load_state(old, now=t0 + HALF_LIFE_S)
    assert c.acceptance["lookup:2+"].reached == [pytest.approx(4.0)]  # half the weight after a half-life
    # a fresh quiet ratio close to the stored one is averaged with it by weight: old 16 x 2^-1 = 8
    for _ in range(8):
        c.cost.observe_verify(1, T1)
        c.cost.observe_verify(2, 1.20 * T1)
    merged = c.cost.state(now=t0 + HALF_LIFE_S)
    assert merged["V"]["2"] == pytest.approx((8 * 1.30 + 8 * 1.20) / 16)
    # one that disagrees by more than DISAGREE replaces it; evidence 20 half-lives old is gone
    c.cost.quiet[2] = [2.2]
    assert c.cost.state(now=t0 + HALF_LIFE_S)["V"]["2"] == pytest.approx(2.2)
    again = Controller()
    again.load_state(old, now=t0 + 20 * HALF_LIFE_S)
    assert again.cost.ready and again.cost.stored == {}


# --- re-measurement ------------------------------------------------------------------------
def test_a_draft_the_stored_curve_prices_out_is_re_measured_once() -> None:
    c = Controller()
    c.load_state(DEAR)
    assert c.choose([LONG_MATCH]).drafter is None  # the stored curve alone: never drafts
    d = c.choose([LONG_MATCH], explore=True)
    assert d.drafter == "lookup" and d.explore and d.k >= 4
    # the verify of that size is timed: on a quiet machine it is what a fresh process expects
    c.cost.observe_verify(d.k + 1, (1 + 0.2 * d.k) * c.cost.verify(1))
    again = c.choose([LONG_MATCH], explore=True)
    assert not (again.explore and again.k == d.k)  # that size is timed now: no second look at it
    after = c.choose([LONG_MATCH])
    assert after.drafter == "lookup" and not after.explore


def test_a_quiet_stored_state_is_not_re_measured() -> None:
    c = Controller()
    c.load_state(stored(T1, {2: 1.2, 4: 1.5, 8: 2.0, 13: 3.0}))
    d = c.choose([LONG_MATCH], explore=True)
    assert d.drafter == "lookup" and not d.explore  # it drafts from the first cycle, as stored


# --- the user's store ----------------------------------------------------------------------
def test_the_suite_keeps_its_own_cost_store_and_still_finds_the_cache() -> None:
    assert paths.cost_dir() == Path(os.environ["SDFP_EDGE_COST_DIR"])
    assert paths.cost_dir() != paths.cache_dir() / "costs"  # not the user's
    from sdfp_edge import models

    assert models.models_dir() == paths.cache_dir() / "models"  # models are still found there


def test_no_stored_costs_reads_and_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = CostStore({"x": 1}, tmp_path)
    store.save({"cost": {}})
    monkeypatch.setenv("SDFP_EDGE_NO_STORED_COSTS", "1")
    assert store.load() is None
    store.path.unlink()
    store.save({"cost": {}})
    assert not store.path.exists()
    monkeypatch.delenv("SDFP_EDGE_NO_STORED_COSTS")
    result = CliRunner().invoke(main, ["--no-stored-costs", "costs", "list"])
    assert result.exit_code == 0 and os.environ.get("SDFP_EDGE_NO_STORED_COSTS") == "1"


def test_costs_list_and_clear(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SDFP_EDGE_COST_DIR", str(tmp_path))
    runner = CliRunner()
    assert "no stored costs" in runner.invoke(main, ["costs", "list"]).output
    for name in ("alpha.gguf", "beta.gguf"):
        state = quiet_controller({2: 1.25, 8: 1.75})
        state.observe("lookup:2+", 3, 2)
        CostStore({"model": [f"/models/{name}", 1, 2], "cpu": "Test CPU", "n_threads": 2,
                   "n_gpu_layers": 0}).save(state.state())
    (tmp_path / "broken.json").write_text("{not json")
    (tmp_path / "old.json").write_text(json.dumps({"schema": "sdfp-edge-costs/2", "state": {},
                                                   "identity": {"model": ["/models/gamma.gguf", 1, 2]}}))
    out = runner.invoke(main, ["costs", "list"])
    assert out.exit_code == 0, out.output
    assert "alpha.gguf" in out.output and "beta.gguf" in out.output and "Test CPU" in out.output
    assert "V(2) 1.25, V(8) 1.75" in out.output and "lookup:2+ 100% of 1" in out.output
    assert "broken.json: unreadable" in out.output and "old.json: of an older version, for gamma.gguf" in out.output
    rows = json.loads(runner.invoke(main, ["costs", "list", "--json"]).output)
    assert sorted(r.get("model") or "" for r in rows) == ["", "alpha.gguf", "beta.gguf", "gamma.gguf"]
    assert "removed 1 cost file for gamma.gguf" in runner.invoke(main, ["costs", "clear", "-m", "gamma.gguf"]).output
    out = runner.invoke(main, ["costs", "clear", "--model", "alpha.gguf"])
    assert out.exit_code == 0 and "removed 1 cost file for alpha.gguf" in out.output
    left = json.loads(runner.invoke(main, ["costs", "list", "--json"]).output)
    assert sorted(r.get("model") or "" for r in left) == ["", "beta.gguf"]
    assert "removed 2 cost files" in runner.invoke(main, ["costs", "clear"]).output
    assert list(tmp_path.iterdir()) == []


# --- on the default model ------------------------------------------------------------------
HAIKU = [{"role": "user", "content": "Write a haiku about rain."}]  # its greedy answer repeats lines


def haiku(m: Model, mode: str = "auto") -> tuple[list[int], dict]:
    tokens = m.chat(HAIKU, max_tokens=256, temperature=0.0, mode=mode).tokens
    return tokens, m.last_stats


def stored_as(tmp_path: Path, smollm2: Path, state: dict) -> Path:
    """Write `state` where a Model of SmolLM2 in `tmp_path` finds it; returns the file."""
    with Model(smollm2, n_ctx=1024, n_threads=2, cost_dir=tmp_path) as m:
        store = m.decoder.cost_store
        assert store is not None
        store.save(state)
        return store.path


@pytest.mark.parametrize("state", [ISSUE, DEAR], ids=["issue-curve", "dear-plausible-curve"])
def test_a_contended_stored_curve_does_not_stop_auto_from_drafting(
        tmp_path: Path, smollm2: Path, state: dict) -> None:
    path = stored_as(tmp_path, smollm2, state)
    with Model(smollm2, n_ctx=1024, n_threads=2, cost_dir=tmp_path) as m:
        assert m.decoder.cost_source.startswith("persisted")
        tokens, s = haiku(m)
        assert s["drafted"] > 0 and s["accepted"] > 0, s["decisions"]
        assert tokens == haiku(m, "off")[0]  # greedy: the same text as plain decoding
    if state is DEAR:
        assert s["explored"] >= 1
    kept = json.loads(path.read_text())["state"]["cost"]["V"]
    assert all(v <= 1.25 * int(n) for n, v in kept.items())  # never a ratio a quiet machine cannot give


def test_the_dear_curve_would_stop_auto_without_re_measurement(
        tmp_path: Path, smollm2: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The rule above is what makes auto draft: without it, the same state keeps it plain."""
    stored_as(tmp_path, smollm2, DEAR)
    monkeypatch.setattr(engine, "EXPLORE_GAP", 10**9)
    with Model(smollm2, n_ctx=1024, n_threads=2, cost_dir=tmp_path) as m:
        m.decoder._since_explore = 0
        _, s = haiku(m)
    assert s["drafted"] == 0 and s["explored"] == 0


def test_a_quiet_stored_state_starts_warm(tmp_path: Path, smollm2: Path) -> None:
    with Model(smollm2, n_ctx=1024, n_threads=2, cost_dir=tmp_path) as m:
        assert m.decoder.cost_source == "learned in this process" and not m.decoder.controller.cost.ready
        haiku(m)
    doc = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert doc["schema"] == SCHEMA and doc["state"]["cost"]["V"]
    with Model(smollm2, n_ctx=1024, n_threads=2, cost_dir=tmp_path) as m:
        cost = m.decoder.controller.cost
        # ready before the first cycle: no plain cycle to measure t_verify(1) first
        assert m.decoder.cost_source.startswith("persisted") and cost.ready
        assert cost.t_verify[1] == doc["state"]["cost"]["t_token"]
        assert {str(n): v for n, v in cost.stored.items()} == {
            n: v for n, v in doc["state"]["cost"]["V"].items() if v <= 1.25 * int(n)}


def test_a_store_that_cannot_be_written_never_fails_a_generation(tmp_path: Path, smollm2: Path) -> None:
    blocked = tmp_path / "a-file"  # where the directory should be (a read-only disk; root ignores modes)
    blocked.write_text("")
    with Model(smollm2, n_ctx=1024, n_threads=2, cost_dir=blocked / "costs") as m:
        assert m.chat(HAIKU, max_tokens=8, temperature=0.0).tokens
    assert blocked.read_text() == ""
