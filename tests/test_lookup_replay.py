"""tools/lookup_replay.py: the noise-free replay that says what prompt lookup could buy (no model)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parents[1] / "tools" / "lookup_replay.py"
_spec = importlib.util.spec_from_file_location("lookup_replay", TOOL)
assert _spec is not None and _spec.loader is not None
replay = importlib.util.module_from_spec(_spec)
sys.modules["lookup_replay"] = replay
_spec.loader.exec_module(replay)

# V(n) of Qwen 1.5B on the EPYC VM (models/bench/verify-cost/), a few sizes
CURVE = replay.Curve([{"n": n, "V": v} for n, v in
                      [(1, 1.0), (2, 1.58), (4, 3.0), (8, 7.25), (16, 9.51), (32, 18.21), (64, 34.0)]])
PROMPT = list(range(100, 160))  # 60 distinct tokens


def replayer(known: bool = False) -> replay.Replayer:
    return replay.Replayer(CURVE, n_vocab=1000, lookup_max=32, prefill_per_token=0.5, known=known)


def speeds(prompt: list[int], answer: list[int]) -> dict[str, float]:
    spent, emitted = replayer().run(prompt, answer)
    assert emitted == answer  # the engine, fed the answer's logits, emits the answer
    props = replay.proposals(prompt, answer, 32)
    oracle = replay.replay_oracle([k for _, k, _ in props], CURVE)
    any_occurrence = replay.replay_oracle(replay.kept_any_occurrence(prompt, answer, 32), CURVE)
    calibrated = replay.replay_calibrated(props, replay.kept_counts([props]), CURVE)
    return {"auto": len(answer) / spent, "oracle": len(answer) / oracle, "calibrated": len(answer) / calibrated,
            "oracle, any occurrence": len(answer) / any_occurrence,
            "ngram-simple": len(answer) / replay.replay_ngram_simple(prompt, answer, CURVE),
            "ngram-mod": len(answer) / replay.NgramMod().replay(prompt, answer, CURVE)}


def test_the_curve_interpolates_between_and_extends_beyond_its_sizes() -> None:
    assert CURVE(4) == 3.0 and CURVE(3) == pytest.approx(2.29)
    assert CURVE(128) == pytest.approx(34.0 + 64 * (34.0 - 18.21) / 32)


def test_an_answer_with_nothing_to_copy_runs_at_plain_speed_for_every_policy() -> None:
    s = speeds(PROMPT, list(range(300, 340)))
    assert s == {"auto": 1.0, "oracle": 1.0, "calibrated": 1.0, "oracle, any occurrence": 1.0, "ngram-simple": 1.0,
                 "ngram-mod": 1.0}


def test_a_copy_pays_and_no_policy_beats_the_oracle() -> None:
    copy = speeds(PROMPT, PROMPT[:50])
    # 50 copied tokens: one 32-token and one 16-token draft would emit them for V(33) + V(17)
    assert copy["oracle"] >= 50 / (CURVE(33) + CURVE(17) + CURVE(1))
    assert 1.0 < copy["auto"] <= copy["oracle"] and copy["ngram-simple"] > 1.0
    assert 1.0 < copy["calibrated"] <= copy["oracle"]
    # ngram-mod drafts chains of 48+ lookups: the table's 24-grams reach the prompt's end, and
    # with the answer's first tokens added, wrap round to its start (up to 64 tokens, beyond
    # lookup's cap of 32, so the oracle does not bound it)
    assert copy["ngram-mod"] > 1.0
    # a copy that strays twice: drafts fail, and the oracle knows where
    strays = speeds(PROMPT, [*PROMPT[:20], 400, *PROMPT[21:40], 401, *PROMPT[41:55]])
    assert strays["auto"] <= strays["oracle"] < copy["oracle"]
    assert strays["calibrated"] <= strays["oracle"] <= strays["oracle, any occurrence"]


def test_any_occurrence_finds_the_copy_that_the_latest_occurrence_misses() -> None:
    # the prompt holds the function twice, first as it is answered, then with its second line
    # changed: the drafter copies from the latest occurrence of the matched n-gram (the changed
    # copy), the bound from whichever occurrence keeps most
    first, changed = [1, 2, 3, 4, 5, 6, 7, 8], [1, 2, 9, 4, 5, 6, 7, 8]
    prompt, answer = [*first, 50, *changed, 60, 1], [2, 3, 4, 5, 6, 7, 8]
    latest = [k for _, k, _ in replay.proposals(prompt, answer, 32)]
    best = replay.kept_any_occurrence(prompt, answer, 32)
    # after "1" the latest copy offers "2 9 ...", of which the answer keeps "2"; after "1 2", "9 ..."
    assert latest == [1, 0, 4, 3, 2, 1, 0]
    # the first copy keeps all but the answer's last token (that one comes from the verify)
    assert best == [6, 5, 4, 3, 2, 1, 0]
    # where verifying a batch costs little, one draft of the whole copy beats two from the latest
    flat = replay.Curve([{"n": 1, "V": 1.0}, {"n": 64, "V": 2.0}])
    assert replay.replay_oracle(best, flat) == pytest.approx(flat(7))
    assert replay.replay_oracle(latest, flat) == pytest.approx(flat(2) + flat(5))


def test_calibrated_drafts_what_the_statistics_say_pays_and_stops_where_they_do_not() -> None:
    answer = PROMPT[:40]  # a copy: nothing to look up at its first token, then the prompt's continuation
    props = replay.proposals(PROMPT, answer, 32)
    counts = replay.kept_counts([props])
    first = props[1]  # a 1-token match, its kept drafts as counted
    assert first[0] and counts[first[2]][first[1]] >= 1
    # where the statistics say every draft is kept, the policy drafts the best ratio of the
    # curve: the whole 32-token proposal at position 1, then 3 of the 5 left (4 / V(4) beats
    # 6 / V(6) on this curve), then the last one
    sure = {f: [0] * 32 + [1] for f in counts}
    assert replay.replay_calibrated(props, sure, CURVE) == pytest.approx(CURVE(1) + CURVE(33) + CURVE(4) + CURVE(2))
    # where they say none is, it decodes plainly
    never = {f: [1] for f in counts}
    assert replay.replay_calibrated(props, never, CURVE) == pytest.approx(len(answer) * CURVE(1))


def test_ngram_mod_drafts_long_chains_and_keeps_its_table_across_requests() -> None:
    long_prompt = list(range(100, 300))  # 200 distinct tokens
    copy = long_prompt[40:140]  # the answer copies 100 of them
    mod = replay.NgramMod()
    spent = mod.replay(long_prompt, copy, CURVE)
    assert spent < len(copy) * CURVE(1)  # a chain of 48+ lookups, drafted and kept
    # an answer with nothing in the prompt: plain the first time, drafted when the same server
    # sees it again (the table is shared across requests, as llama-server's is)
    free = list(range(400, 500))
    server = replay.NgramMod()
    assert server.replay(long_prompt, free, CURVE) == pytest.approx(len(free) * CURVE(1))
    assert server.replay(long_prompt, free, CURVE) < len(free) * CURVE(1)
    assert replay.NgramMod().replay(long_prompt, free, CURVE) == pytest.approx(len(free) * CURVE(1))


def test_what_a_process_learned_carries_to_its_next_answer() -> None:
    copy = [*PROMPT[:30], *range(300, 310), *PROMPT[30:50]]
    process = replayer()
    first, _ = process.run(PROMPT, copy)
    second, emitted = process.run(PROMPT, copy)  # V(n) and acceptance already measured
    assert emitted == copy and second < first
    warm, _ = replayer(known=True).run(PROMPT, copy)  # the curve known, acceptance not
    assert warm < first


def test_the_command_line_writes_its_table(tmp_path: Path) -> None:
    answers = tmp_path / "answers.json"
    answers.write_text(json.dumps({"model": "m.gguf", "answers": [
        {"id": "copy", "category": "c", "prompt": PROMPT, "answer": PROMPT[:41]},
        {"id": "free", "category": "f", "prompt": PROMPT, "answer": list(range(300, 341))}]}))
    cost = tmp_path / "v.json"
    cost.write_text(json.dumps({"rows": [{"n": n, "V": CURVE(n)} for n in (1, 2, 4, 8, 16, 32, 64)]}))
    out = tmp_path / "r.md"
    replay.main(["--answers", str(answers), "--verify-cost", str(cost), "--out", str(out)])
    text = out.read_text()
    assert "| f | 1 | " + " | ".join(["1.00 (1.00-1.00)"] * 8) + " |" in text
    assert "| f | " + " | ".join(["1.000"] * 7) + " |" in text
    assert "| copy | c | 41 |" in text


def test_set_replays_with_a_policy_constant_changed_and_restores_it(tmp_path: Path) -> None:
    answers = tmp_path / "answers.json"
    answers.write_text(json.dumps({"model": "m.gguf", "answers": [
        {"id": "copy", "category": "c", "prompt": PROMPT, "answer": PROMPT[:41]}]}))
    cost = tmp_path / "v.json"
    cost.write_text(json.dumps({"rows": [{"n": n, "V": CURVE(n)} for n in (1, 2, 4, 8, 16, 32, 64)]}))

    def auto(*extra: str) -> float:
        """The copy's rate for `auto` (one process) in the per-answer table."""
        out = tmp_path / "r.md"
        replay.main(["--answers", str(answers), "--verify-cost", str(cost), "--out", str(out), *extra])
        row = next(line for line in out.read_text().splitlines() if line.startswith("| copy | c |"))
        return float(row.split("|")[5])

    controller = sys.modules["sdfp_edge.runtime.controller"]
    weight = controller.PRIOR_WEIGHT
    # estimates that follow the evidence at once: after the copy's first accepted drafts auto
    # expects the next ones to be accepted too, and drafts more of the copy sooner
    assert auto("--set", "PRIOR_WEIGHT=0.01") > auto() + 0.1
    assert controller.PRIOR_WEIGHT == weight  # restored after the replay
    with pytest.raises(SystemExit, match="NAME one of DECAY"):
        replay.main(["--answers", str(answers), "--verify-cost", str(cost), "--set", "LOOKUP_MAX=48"])
    with pytest.raises(SystemExit, match="takes int values"):
        replay.main(["--answers", str(answers), "--verify-cost", str(cost), "--set", "TRUSTED_MATCH=4.5"])
