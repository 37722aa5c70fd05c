"""Random options and byte-string prompts through the CLI: it answers (0) or says why not (2).

Drives `sdfp-edge generate` and `chat` in process (click's CliRunner) on SmolLM2. Sizes that
would really allocate are kept small (threads 1-2, contexts up to 4096 tokens, a few new
tokens, long prompts past any context); out-of-range values are absurd ones, which must be
refused before anything runs.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sdfp_edge.cli.main import main
from sdfp_edge.runtime.engine import MODES

MAX_EXAMPLES = 48  # generate; chat gets a quarter of it
COUNT: Counter[str] = Counter()


def ints(lo: int, hi: int) -> st.SearchStrategy[str]:
    return st.integers(lo, hi).map(str)


junk = st.text(max_size=6)
# option: (values that are in range, values that are not); sizes that would really allocate
# stay small, and out-of-range ones are absurd: they must be refused before anything runs
OPTIONS: dict[str, tuple[st.SearchStrategy[str], st.SearchStrategy[str]]] = {
    "--threads": (ints(1, 2), ints(-3, 0) | ints(513, 2**40) | junk),
    "--ctx-size": (ints(0, 4096) | ints(1, 64), ints(-2**40, -1) | ints(10**8, 2**70) | junk),
    "--n-gpu-layers": (ints(-2**40, 2**40), ints(2**70, 2**80) | junk),
    "--max-tokens": (ints(1, 6), ints(-3, 0) | ints(2**20 + 1, 2**64) | junk),
    "--temperature": (st.floats(0, 2).map(str), st.sampled_from(["nan", "inf", "-inf", "-0.5"]) | junk),
    "--top-p": (st.floats(0.01, 1).map(str), st.sampled_from(["0", "nan", "1.5"]) | junk),
    "--seed": (ints(0, 2**63 - 1), ints(-2**64, -1) | ints(2**63, 2**70) | junk),
    "--mode": (st.sampled_from(MODES), st.text(max_size=8)),
    "--skip-layers": (st.lists(st.integers(-2, 31), max_size=6).map(lambda xs: ",".join(map(str, xs))),
                      st.text(max_size=10)),
    "--draft-max": (ints(1, 16), ints(-1, 0) | ints(17, 99) | junk),
}


@st.composite
def options(draw: st.DrawFn) -> dict[str, str]:
    """Some options with in-range values, and half the time one value out of range."""
    names = draw(st.lists(st.sampled_from(sorted(OPTIONS)), unique=True))
    opts = {n: draw(OPTIONS[n][0]) for n in names}
    opts.setdefault("--max-tokens", draw(OPTIONS["--max-tokens"][0]))  # never the default 256
    bad = draw(st.none() | st.sampled_from(sorted(OPTIONS)))
    if bad is not None:
        opts[bad] = draw(OPTIONS[bad][1])
    return opts


prompts = st.one_of(
    st.binary(max_size=48),
    st.binary(max_size=8).map(lambda b: b"Once upon a time\x00" + b),  # an embedded NUL
    st.integers(1, 60).map(lambda n: b"word " * n),  # past a tiny context
    st.integers(8200, 20000).map(lambda n: b"word " * n),  # past any context here (0: 8192), before prefill
)


def as_arg(raw: bytes) -> str:
    """What Python makes of bytes on the command line (argv is decoded with surrogateescape)."""
    return raw.decode("utf-8", errors="surrogateescape")


def check(result: Result, outcome: str) -> None:
    COUNT["tried"] += 1
    assert "Traceback" not in result.output, result.output
    assert result.exit_code in (0, 2), (result.exit_code, result.output, result.exception)
    if result.exit_code == 2:
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith(("error: ", "Error: ")), result.stderr  # ours, or click's usage error
        COUNT["refused: " + re.sub(r"-?\d+", "N", last.split(":")[1].strip())[:36]] += 1
    else:
        COUNT[outcome] += 1


@pytest.fixture(scope="module")
def runner() -> CliRunner:
    return CliRunner()


@settings(max_examples=MAX_EXAMPLES, deadline=60_000, suppress_health_check=[HealthCheck.too_slow])
@given(opts=options(), prompt=prompts, on_stdin=st.booleans(), chat=st.booleans())
def test_generate_exits_0_or_2(smollm2: Path, runner: CliRunner, opts: dict[str, str], prompt: bytes,
                               on_stdin: bool, chat: bool) -> None:
    args = ["generate", "-m", str(smollm2), "--json", *(f"{k}={v}" for k, v in opts.items())]
    if chat:
        args.append("--chat")
    if not on_stdin:
        args.append(f"--prompt={as_arg(prompt)}")
    r = runner.invoke(main, args, input=prompt if on_stdin else None)
    check(r, "generated")
    if r.exit_code == 0:
        out = json.loads(r.stdout)
        n = int(opts.get("--max-tokens", "256"))
        assert isinstance(out["text"], str) and len(out["tokens"]) <= n


@settings(max_examples=MAX_EXAMPLES // 4, deadline=60_000, suppress_health_check=[HealthCheck.too_slow])
@given(lines=st.lists(st.binary(max_size=24).filter(lambda b: b"\n" not in b and b"\r" not in b), max_size=2),
       opts=options())
def test_chat_exits_0_or_2(smollm2: Path, runner: CliRunner, lines: list[bytes], opts: dict[str, str]) -> None:
    opts = {**opts, "--max-tokens": "3"}  # a short reply per line
    args = ["chat", "-m", str(smollm2), *(f"{k}={v}" for k, v in opts.items())]
    r = runner.invoke(main, args, input=b"\n".join([*lines, b"/stats", b"/exit"]) + b"\n")
    check(r, "chatted")


def test_fuzzing_ran() -> None:
    """How many inputs were tried and what became of them (pytest -s shows it)."""
    print("\nCLI fuzz:", dict(sorted(COUNT.items(), key=lambda kv: -kv[1])))
    assert COUNT["tried"] >= MAX_EXAMPLES + MAX_EXAMPLES // 4
