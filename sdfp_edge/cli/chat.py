"""`sdfp-edge chat`: an interactive chat in the terminal, streaming tokens as they are accepted.

Every turn sends the whole conversation through the model's chat template; the backend
keeps the longest common prefix of the KV cache between requests, so earlier turns are not
evaluated again (`/stats` shows how many prompt tokens were reused). Ctrl-C during a reply
stops that reply and keeps the session (what was shown stays in the conversation); Ctrl-C
or Ctrl-D at the prompt ends the session.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

import click

from sdfp_edge.cli.options import model_options, not_utf8_note, user_errors
from sdfp_edge.cli.generate import (check_sampling, open_model, sampling_line, sampling_options, speculation_options,
                                    summary_line)
from sdfp_edge.runtime.engine import MODES
from sdfp_edge.errors import ContextOverflowError, SdfpError
from sdfp_edge.runtime.sampler_chain import describe

PROMPT = ">>> "
HELP = """commands:
  /stats          statistics of the last reply and of the session, and its sampling settings
  /mode [MODE]    show or set the speculation mode ({modes})
  /reset          forget the conversation (the system prompt stays)
  /help           this text
  /exit           quit (also Ctrl-D, or Ctrl-C at the prompt)
Ctrl-C during a reply stops the reply."""


@contextlib.contextmanager
def sigint_as_flag() -> Iterator[threading.Event]:
    """While inside, Ctrl-C sets the returned flag instead of raising KeyboardInterrupt.

    The reply loop checks the flag between chunks, so an interrupt never lands inside
    llama.cpp calls or the engine's bookkeeping: closing the stream is what stops it.
    """
    flag = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = signal.signal(signal.SIGINT, lambda signum, frame: flag.set())
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


class ChatSession:
    """The conversation and the commands; `handle(line)` returns False when the session ends."""

    def __init__(self, model: Any, *, system: str | None, max_tokens: int, sampling: dict[str, Any]) -> None:
        self.m = model
        self.system = system
        self.max_tokens = max_tokens
        self.sampling = sampling
        self.history: list[dict[str, str]] = []
        self.turns = 0
        self.generated = 0  # tokens over the session

    def messages(self) -> list[dict[str, str]]:
        return ([{"role": "system", "content": self.system}] if self.system else []) + self.history

    def handle(self, line: str) -> bool:
        line = line.strip()
        if not line:
            return True
        if not line.startswith("/"):
            self.reply(line)
            return True
        cmd, _, arg = line.partition(" ")
        arg = arg.strip()
        if cmd in ("/exit", "/quit", "/bye"):
            return False
        if cmd == "/reset":
            self.history.clear()
            click.echo("(conversation cleared)")
        elif cmd == "/stats":
            click.echo(self.stats_text())
        elif cmd == "/mode":
            self.set_mode(arg)
        elif cmd in ("/help", "/?"):
            click.echo(HELP.format(modes="|".join(MODES)))
        else:
            click.echo(f"unknown command {cmd}; /help lists the commands")
        return True

    def set_mode(self, mode: str) -> None:
        decoder = self.m.decoder
        if mode:
            try:
                decoder.set_mode(mode)
            except SdfpError as e:
                click.echo(f"error: {e}")
                return
        available = [x for x in MODES if x in ("auto", "off") or x in decoder.drafters]
        click.echo(f"mode: {decoder.mode} (available: {', '.join(available)})")

    def reply(self, text: str) -> None:
        """One turn: stream the reply, then a one-line summary."""
        if note := not_utf8_note("this message", text):
            click.echo(note, err=True)
        self.history.append({"role": "user", "content": text})
        parts: list[str] = []
        with sigint_as_flag() as interrupted:  # from here on, even during the prefill
            try:
                chunks = self.m.stream_tokens(self.m.tokenize_chat(self.messages()),
                                              max_tokens=self.max_tokens, **self.sampling)
            except ContextOverflowError:
                self.history.pop()
                click.echo("error: the conversation no longer fits in the context; /reset to start over "
                           "(or a larger --ctx-size)")
                return
            except SdfpError as e:
                self.history.pop()
                click.echo(f"error: {e}")
                return
            try:
                for chunk in chunks:
                    click.echo(chunk.text, nl=False)
                    parts.append(chunk.text)
                    if interrupted.is_set():
                        break
            finally:
                chunks.close()  # stops generation; the KV cache keeps what was shown
        click.echo()
        if interrupted.is_set():
            click.echo("[interrupted]", err=True)
        if parts:  # an interrupted reply stays as far as it was shown: the next turn builds on it
            self.history.append({"role": "assistant", "content": "".join(parts)})
        else:
            self.history.pop()
        stats = self.m.last_stats
        self.turns += 1
        self.generated += stats.get("tokens", 0)
        click.echo(summary_line(stats), err=True)

    def stats_text(self) -> str:
        s = self.m.last_stats
        b = self.m.backend
        session = (f"session: {self.turns} turns, {len(self.history)} messages, {self.generated} tokens generated, "
                   f"KV cache {b.n_past}/{b.n_ctx} tokens, mode {self.m.decoder.mode}")
        if not s:
            return "no reply yet\n" + session
        drafters = ", ".join(f"{name} {d['accepted']}/{d['drafted']}" for name, d in s["per_drafter"].items())
        return "\n".join([
            f"last reply: {s['tokens']} tokens, {s['tokens_per_second']:.1f} tok/s, "
            f"finish {s['finish_reason'] or 'interrupted'}",
            f"prompt: {s['prompt_tokens']} tokens, {s['reused_prompt_tokens']} reused from the KV cache, "
            f"prefill {s['time_prefill_s']:.2f} s",
            f"speculation: mode {s['mode']}, drafted {s['drafted']}, accepted {s['accepted']} "
            f"({s['acceptance_rate']:.0%}), {s['tokens_per_verify']:.2f} tokens/verify"
            + (f" (accepted/drafted: {drafters})" if drafters else ""),
            sampling_line(s.get("sampling", {})),
            session,
        ])


def read_line() -> str | None:
    """One line from the user; None at EOF or Ctrl-C (the session ends)."""
    try:
        return input(PROMPT)
    except (EOFError, KeyboardInterrupt):
        click.echo()
        return None


@click.command()
@model_options
@click.option("--system", default=None, help="System prompt.")
@sampling_options
@speculation_options
@user_errors
def chat(model: str | None, threads: int | None, ctx_size: int, n_gpu_layers: int | None, seed: int,
         verbose: bool, system: str | None, max_tokens: int, sampling: dict[str, Any], stop: tuple[str, ...],
         mode: str, draft_model: str | None, skip_layers: str | None,
         draft_max: int, draft_p_min: float) -> None:
    """Chat with the model in the terminal (multi-turn, streaming, speculative)."""
    try:
        import readline  # noqa: F401 - line editing and history for input()
    except ImportError:
        pass
    check_sampling(max_tokens, sampling, seed)
    if note := not_utf8_note("--system", system):
        click.echo(note, err=True)
    with open_model(model, threads, ctx_size, n_gpu_layers, verbose, mode, draft_model, skip_layers,
                    draft_max, draft_p_min) as m:
        session = ChatSession(m, system=system, max_tokens=max_tokens,
                              sampling={**sampling, "seed": seed, "stop": list(stop)})
        m.tokenize_chat([{"role": "user", "content": "hi"}])  # no chat template: fail now, not at turn one
        click.echo(f"chatting with {m.path.name} (mode {m.decoder.mode}); /help for commands, "
                   "/exit or Ctrl-D to quit", err=True)
        values, sources = m.resolve_sampling(sampling)  # said once: a new user sees what samples
        click.echo(sampling_line({"summary": describe(values), "source": sources}), err=True)
        while (line := read_line()) is not None:
            try:
                if not session.handle(line):
                    break
            except KeyboardInterrupt:  # Ctrl-C during a command (a reply handles its own)
                click.echo()
