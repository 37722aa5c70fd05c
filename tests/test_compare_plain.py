"""`generate --compare-plain` (what `make demo` runs): both decodes, their figures, and their texts."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from sdfp_edge.cli.generate import comparison_lines, median_run
from server_process import sdfp_edge_command

# the demo's kind of prompt: the answer copies most of the prompt, so lookup drafts are accepted
PROMPT = ("Correct the spelling in this paragraph and write it out again: Our team meets every Monday "
          "morning to dicsuss the week ahead.")


def stats(tokens: int, tps: float, drafted: int = 0, accepted: int = 0, runs: int = 3) -> dict:
    return {"tokens": tokens, "tokens_per_second": tps, "drafted": drafted, "accepted": accepted, "runs": runs}


def test_lines_say_speed_ratio_share_from_drafts_and_sameness() -> None:
    plain, auto = comparison_lines(stats(40, 20.0), stats(40, 30.0, 30, 20), "auto", same=True)
    assert plain == "plain: 20.0 tok/s, 40 tokens (median of 3 alternating runs each)"
    assert auto == ("auto:  30.0 tok/s (1.50x plain), 40 tokens, 50% of the answer from accepted drafts "
                    "(20 of 30 drafted tokens accepted; same text as plain)")
    _, other = comparison_lines(stats(40, 20.0), stats(41, 10.0, 8, 0), "lookup", same=False)
    assert "(0.50x plain)" in other and "0% of the answer" in other and "NOT the same text as plain" in other
    _, empty = comparison_lines(stats(0, 0.0), stats(0, 0.0), "auto", same=True)  # nothing generated
    assert "x plain" not in empty and "0% of the answer" in empty


def test_median_run_takes_the_middle_speed_with_its_own_counts() -> None:
    runs = [stats(40, 30.0, 10, 5), stats(40, 10.0, 12, 6), stats(40, 20.0, 14, 7)]
    mid = median_run(runs)
    assert mid["tokens_per_second"] == 20.0 and mid["drafted"] == 14 and mid["runs"] == 3


def run(smollm2: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SDFP_EDGE_CACHE": str(tmp_path)}  # cost files go to a temporary cache
    return subprocess.run([*sdfp_edge_command(), "generate", "-m", str(smollm2), "--chat", "--temperature", "0",
                           "-n", "48", "-t", "2", "--compare-plain", "-p", PROMPT, *args],
                          capture_output=True, text=True, timeout=600, env=env)


@pytest.mark.slow
def test_compare_plain_prints_both_runs_and_their_figures(smollm2: Path, tmp_path: Path) -> None:
    r = run(smollm2, tmp_path, "--mode", "lookup", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    plain, spec = out["plain"], out["lookup"]
    assert len(plain["runs"]) == len(spec["runs"]) == 3  # alternating rounds
    assert all(s["mode"] == "off" and s["drafted"] == 0 for s in plain["runs"])
    assert all(s["mode"] == "lookup" and s["accepted"] > 0 for s in spec["runs"])  # the answer copies the prompt
    assert out["same_text"] is True and plain["text"] == spec["text"] and "discuss" in plain["text"]

    r = run(smollm2, tmp_path, "--mode", "lookup")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("team meets every Monday") == 2, r.stdout  # both answers are shown
    assert re.search(r"^plain: +[\d.]+ tok/s, \d+ tokens \(median of 3 alternating runs each\)$", r.stderr, re.M), r.stderr
    m = re.search(r"^lookup: +[\d.]+ tok/s \([\d.]+x plain\), (\d+) tokens, (\d+)% of the answer from accepted "
                  r"drafts \((\d+) of (\d+) drafted tokens accepted; same text as plain\)$", r.stderr, re.M)
    assert m, r.stderr
    tokens, share, accepted = int(m[1]), int(m[2]), int(m[3])
    assert accepted > 0 and share == round(100 * accepted / tokens)


def test_compare_plain_refuses_batch_mode(tmp_path: Path) -> None:
    r = subprocess.run([*sdfp_edge_command(), "generate", "--compare-plain", "--input", str(tmp_path / "in.jsonl"),
                        "--output", str(tmp_path / "out.jsonl")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--compare-plain" in r.stderr and "Traceback" not in r.stderr
