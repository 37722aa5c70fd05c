"""Offline generation from a JSONL file: answers per line, errors per line, resumable."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

import sdfp_edge
from sdfp_edge.runtime import batchio
from sdfp_edge.cli.main import main
from sdfp_edge.errors import InvalidRequestError

PROMPTS = ["Once upon a time", "def fib(n):", "The capital of France is", "Water boils at",
           "My favourite colour is", "import numpy as np\n", "In 1492,", "The recipe needs"]


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def read_answers(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# --- the file formats (no model) -----------------------------------------------------------------
@pytest.mark.parametrize("text, kind, words", [
    ("not json", "invalid_json", "not JSON"),
    ("[1, 2]", "invalid_request", "not a JSON object"),
    ('{"prompt": ""}', "invalid_request", "non-empty string"),
    ('{"messages": [], "prompt": "x"}', "invalid_request", "exactly one"),
    ('{}', "invalid_request", "exactly one"),
    ('{"prompt": "x", "stop": [""]}', "invalid_request", "'stop'"),
    ('{"prompt": "x", "max_tokens": 1.5}', "invalid_request", "'max_tokens' must be an integer"),
    ('{"prompt": "x", "temperature": "hot"}', "invalid_request", "'temperature' must be a number"),
    ('{"prompt": "x", "max_token": 5}', "invalid_request", "unknown field(s) max_token"),
    ('{"prompt": "x", "id": true}', "invalid_request", "'id' must be"),
])
def test_a_bad_line_becomes_an_error_naming_the_line(text: str, kind: str, words: str) -> None:
    line = batchio.parse_line(7, text)
    assert line is not None and line.error is not None
    assert line.error["type"] == kind and words in line.error["message"]
    assert line.error["message"].startswith("line 7: ")


def test_ids_default_to_line_numbers_and_must_be_unique(tmp_path: Path) -> None:
    p = write_lines(tmp_path / "in.jsonl", ['{"prompt": "a"}', "", '{"prompt": "b", "id": "x"}'])
    assert [ln.id for ln in batchio.read_input(p)] == [1, "x"]
    write_lines(p, ['{"prompt": "a"}', '{"prompt": "b", "id": 1}'])
    with pytest.raises(InvalidRequestError, match="line 2 has id 1, already used on line 1"):
        batchio.read_input(p)


def test_resume_drops_a_partial_last_line_and_refuses_a_foreign_file(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    assert batchio.answered_ids(out) == set()
    with batchio.AnswerWriter(out) as w:
        w.write(batchio.answer("a", "x", "length", 3, 2))
        w.write({"id": 2, "error": {"message": "m", "type": "t"}})
    with open(out, "ab") as f:
        f.write(b'{"id": "b", "text": "half')  # a run killed mid-write
    assert batchio.answered_ids(out) == {"a", 2}
    assert out.read_text().endswith("}\n") and len(out.read_text().splitlines()) == 2
    write_lines(out, ["hello"])
    with pytest.raises(InvalidRequestError, match="line 1 is not an answer"):
        batchio.answered_ids(out)


# --- the command (SmolLM2) -------------------------------------------------------------------------
def run_cli(args: list[str]):
    return CliRunner().invoke(main, ["generate", *args])


def test_every_line_gets_one_answer_or_error_and_the_input_is_untouched(smollm2: Path, tmp_path: Path) -> None:
    lines = ['{"id": "a", "prompt": "Once upon a time", "max_tokens": 6}',
             '{"messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 5}',
             "not json",
             '{"prompt": "The capital of France is", "stop": "."}',
             '{"prompt": "x", "temperature": -1}',
             '{"prompt": "' + "word " * 80 + '"}',
             '{"messages": [{"role": "wizard", "content": "hi"}]}']
    src = write_lines(tmp_path / "in.jsonl", lines)
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    out = tmp_path / "out.jsonl"
    r = run_cli(["-m", str(smollm2), "-c", "64", "-n", "8", "--parallel", "2", "--temperature", "0",
                 "--input", str(src), "--output", str(out)])
    assert r.exit_code == 0, r.output
    got = {a["id"]: a for a in read_answers(out)}
    assert sorted(map(str, got)) == sorted(["a", "2", "3", "4", "5", "6", "7"])
    assert got["a"]["finish_reason"] == "length" and got["a"]["usage"]["completion_tokens"] == 6
    assert got["a"]["usage"]["total_tokens"] == got["a"]["usage"]["prompt_tokens"] + 6
    assert got[2]["text"] and "error" not in got[2]
    assert got[4]["finish_reason"] == "stop" and "." not in got[4]["text"]
    assert got[3]["error"]["type"] == "invalid_json"
    assert "temperature" in got[5]["error"]["message"]
    assert got[6]["error"]["type"] == "context_length_exceeded"
    assert "role" in got[7]["error"]["message"]
    assert hashlib.sha256(src.read_bytes()).hexdigest() == digest
    again = run_cli(["-m", str(smollm2), "-c", "64", "--input", str(src), "--output", str(out)])
    assert again.exit_code == 0 and "nothing to do" in again.output
    assert len(read_answers(out)) == len(lines)


@pytest.mark.parametrize("args, words", [
    (["--mode", "layerskip"], "not available with --input"),
    (["--output", "IN"], "must not be the input file"),
    (["--output", "/nonexistent-dir/out.jsonl"], "does not exist"),
])
def test_refusals_before_loading(tmp_path: Path, args: list[str], words: str) -> None:
    src = write_lines(tmp_path / "in.jsonl", ['{"prompt": "x"}'])
    args = [str(src) if a == "IN" else a for a in args]
    if "--output" not in args:
        args += ["--output", str(tmp_path / "out.jsonl")]
    r = run_cli(["--input", str(src), *args])
    assert r.exit_code == 2 and words in r.output and r.output.startswith("error: ")
    assert src.read_text() == '{"prompt": "x"}\n'


@pytest.mark.slow
def test_a_killed_run_resumes_with_every_answer_once_and_unchanged(smollm2: Path, tmp_path: Path) -> None:
    src = write_lines(tmp_path / "in.jsonl", [json.dumps({"prompt": p}) for p in PROMPTS])
    common = ["-m", str(smollm2), "-c", "128", "-n", "48", "--parallel", "2", "-t", "2", "--temperature", "0",
              "--input", str(src)]
    whole = tmp_path / "whole.jsonl"
    assert run_cli([*common, "--output", str(whole)]).exit_code == 0

    out = tmp_path / "out.jsonl"
    cmd = [sys.executable, "-c", "from sdfp_edge.cli.main import main; main()", "generate", *common,
           "--output", str(out)]
    env = {**os.environ, "PYTHONPATH": str(Path(sdfp_edge.__file__).parents[1])}  # this checkout's code
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if out.exists() and len(out.read_bytes().splitlines()) >= 2:
                break
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    killed_with = len(read_answers(out))
    assert 2 <= killed_with < len(PROMPTS), "the run must be killed midway"
    with open(out, "ab") as f:
        f.write(b'{"id": 99, "text": "a half-written li')  # what a kill inside write() could leave

    r = run_cli([*common, "--output", str(out)])
    assert r.exit_code == 0, r.output
    assert f"resuming: {killed_with} of {len(PROMPTS)}" in r.output
    answers = read_answers(out)
    assert sorted(a["id"] for a in answers) == list(range(1, len(PROMPTS) + 1))  # each id exactly once
    assert {a["id"]: a for a in answers} == {a["id"]: a for a in read_answers(whole)}
