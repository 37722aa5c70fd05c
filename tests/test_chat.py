"""`sdfp-edge chat` driven in a real pseudo-terminal (pexpect), on SmolLM2-135M.

One chat process per test: two turns that reuse the KV cache, the commands, Ctrl-C during
a reply (the session survives), and every way out (/exit, Ctrl-D, Ctrl-C at the prompt).
"""

from __future__ import annotations

import os
import re
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

pexpect = pytest.importorskip("pexpect")

pytestmark = pytest.mark.slow

PROMPT = ">>> "
SUMMARY = re.compile(r"\[(\d+) tokens, [\d.]+ tok/s, mode (\S+), acceptance \d+% of \d+ drafted, "
                     r"[\d.]+ tokens/verify\]")
PROMPT_STATS = re.compile(r"prompt: (\d+) tokens, (\d+) reused from the KV cache")
TIMEOUT = 180  # model load and replies on 2 shared cores


def sdfp_edge_command() -> list[str]:
    script = Path(sys.executable).with_name("sdfp-edge")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from sdfp_edge.cli.main import main; main()"]


def default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture
def spawn_chat(smollm2: Path) -> Iterator[object]:
    children: list[object] = []

    def spawn(*args: str) -> object:
        cmd = sdfp_edge_command() + ["chat", "--model", str(smollm2), "--threads", "2", "-c", "1024",
                                     "--temperature", "0", *args]
        env = {**os.environ, "TERM": "dumb", "NO_COLOR": "1"}
        # a user's terminal delivers Ctrl-C; a shell's background job (`pytest ... &`) would
        # hand the child SIGINT ignored, and Python then raises no KeyboardInterrupt
        child = pexpect.spawn(cmd[0], cmd[1:], env=env, encoding="utf-8", timeout=TIMEOUT,
                              dimensions=(50, 200), preexec_fn=default_sigint)
        children.append(child)
        child.expect_exact(PROMPT)
        return child

    yield spawn
    for child in children:
        if child.isalive():
            child.terminate(force=True)


def turn(child: object, text: str) -> tuple[str, int]:
    """Send a user message; return the reply as shown and its token count from the summary."""
    child.sendline(text)
    child.expect_exact(text + "\r\n")  # the terminal's echo of the input line
    child.expect(SUMMARY)
    reply = child.before.strip()
    n = int(child.match.group(1))
    child.expect_exact(PROMPT)
    return reply, n


def prompt_stats(child: object) -> tuple[int, int]:
    """/stats: (prompt tokens, of which reused from the KV cache) of the last reply."""
    child.sendline("/stats")
    child.expect(PROMPT_STATS)
    total, reused = int(child.match.group(1)), int(child.match.group(2))
    child.expect_exact(PROMPT)
    return total, reused


def ends_with(child: object, status: int) -> None:
    child.expect(pexpect.EOF)
    child.close()
    assert child.signalstatus is None
    assert child.exitstatus == status


def test_two_turns_reuse_the_cache_then_exit(spawn_chat) -> None:
    c = spawn_chat("--max-tokens", "24")
    reply1, n1 = turn(c, "What is the capital of France?")
    assert reply1 and 0 < n1 <= 24
    first_prompt, reused1 = prompt_stats(c)
    assert reused1 == 0  # a fresh context

    reply2, n2 = turn(c, "And what is the capital of Germany?")
    assert reply2 and 0 < n2 <= 24
    second_prompt, reused2 = prompt_stats(c)
    # the whole first prompt (and most of the first reply) came from the KV cache
    assert second_prompt > first_prompt + n1 - 1
    assert first_prompt <= reused2 < second_prompt

    c.sendline("/mode lookup")
    c.expect(r"mode: lookup \(available: ([^)]*)\)")
    assert "auto" in c.match.group(1) and "off" in c.match.group(1)
    c.expect_exact(PROMPT)
    c.sendline("/mode warp-drive")
    c.expect_exact("error: unknown mode 'warp-drive'")
    c.expect_exact(PROMPT)

    _, n3 = turn(c, "Thanks!")
    assert 0 < n3 <= 24
    c.sendline("/stats")
    c.expect(r"speculation: mode lookup")
    c.expect(r"session: 3 turns, 6 messages")
    c.expect_exact(PROMPT)

    c.sendline("/reset")
    c.expect_exact("(conversation cleared)")
    c.expect_exact(PROMPT)
    c.sendline("/exit")
    ends_with(c, 0)


def test_ctrl_c_stops_the_reply_not_the_session(spawn_chat) -> None:
    c = spawn_chat("--max-tokens", "400")
    c.sendline("Write a long story about a dragon.")
    c.expect_exact("Write a long story about a dragon.\r\n")
    c.expect(r"\w+\W+\w+")  # the reply has started streaming
    c.sendintr()
    c.expect_exact("[interrupted]")
    c.expect(SUMMARY)
    assert int(c.match.group(1)) < 400
    c.expect_exact(PROMPT)
    interrupted_prompt, _ = prompt_stats(c)

    reply, n = turn(c, "What is 2+2?")  # the session goes on, after the partial reply
    assert reply and 0 < n <= 400
    total, reused = prompt_stats(c)
    assert reused >= interrupted_prompt  # the cache stayed consistent through the interrupt

    c.sendeof()  # Ctrl-D
    ends_with(c, 0)


def test_ctrl_c_at_the_prompt_exits_cleanly(spawn_chat) -> None:
    c = spawn_chat()
    c.sendline("/help")
    c.expect_exact("/reset")
    c.expect_exact(PROMPT)
    c.sendintr()
    ends_with(c, 0)
