"""`generate --compare-plain` (what `make demo` runs): both decodes, their figures, and their texts."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from sdfp_edge.cli.generate import comparison_lines
from server_process import sdfp_edge_command

# the demo's kind of prompt: the answer copies most of the prompt, so lookup drafts are accepted
PROMPT = ("Correct the spelling in this paragraph and write it out again: Our team meets every Monday "
          "morning to dicsuss the week ahead.")


def stats(tokens: int, tps: float, drafted: int = 0, accepted: int = 0) -> dict:
    return {"tokens": tokens, "tokens_per_second": tps, "drafted": drafted, "accepted": accepted}


def test_lines_say_speed_ratio_share_from_drafts_and_sameness() -> None:
    plain, auto = comparison_lines(("same", stats(40, 20.0)), ("same", stats(40, 30.0, 30, 20)), "auto")
    assert plain == "plain: 20.0 tok/s, 40 tokens"
    assert auto == ("auto:  30.0 tok/s (1.50x plain), 40 tokens, 50% of the answer from accepted drafts "
                    "(20 of 30 drafted tokens accepted; same text as plain)")
    _, other = comparison_lines(("a", stats(40, 20.0)), ("b", stats(41, 10.0, 8, 0)), "lookup")
    assert "(0.50x plain)" in other and "0% of the answer" in other and "NOT the same text as plain" in other
    _, empty = comparison_lines(("", stats(0, 0.0)), ("", stats(0, 0.0)), "auto")  # nothing generated
    assert "x plain" not in empty and "0% of the answer" in empty


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
    assert plain["stats"]["mode"] == "off" and plain["stats"]["drafted"] == 0
    assert spec["stats"]["mode"] == "lookup" and spec["stats"]["accepted"] > 0  # the answer copies the prompt
    assert out["same_text"] is True and plain["text"] == spec["text"] and "discuss" in plain["text"]

    r = run(smollm2, tmp_path, "--mode", "lookup")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("team meets every Monday") == 2, r.stdout  # both answers are shown
    assert re.search(r"^plain: +[\d.]+ tok/s, \d+ tokens$", r.stderr, re.M), r.stderr
    m = re.search(r"^lookup: +[\d.]+ tok/s \([\d.]+x plain\), (\d+) tokens, (\d+)% of the answer from accepted "
                  r"drafts \((\d+) of (\d+) drafted tokens accepted; same text as plain\)$", r.stderr, re.M)
    assert m, r.stderr
    tokens, share, accepted = int(m[1]), int(m[2]), int(m[3])
    assert accepted > 0 and share == round(100 * accepted / tokens)


def test_compare_plain_refuses_batch_mode(tmp_path: Path) -> None:
    r = subprocess.run([*sdfp_edge_command(), "generate", "--compare-plain", "--input", str(tmp_path / "in.jsonl"),
                        "--output", str(tmp_path / "out.jsonl")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--compare-plain" in r.stderr and "Traceback" not in r.stderr
