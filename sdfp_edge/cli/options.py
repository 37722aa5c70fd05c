"""What every command shares: the model options llama.cpp users expect, one-line user errors, tolerant stdio."""

from __future__ import annotations

import functools
import io
import sys
from collections.abc import Callable
from typing import Any

import click

from sdfp_edge import hub
from sdfp_edge.runtime.backend import MAX_THREADS
from sdfp_edge.errors import SdfpError


_HF_REPO = "sdfp_hf_repo"  # where -hf leaves its value for -m (ctx.meta)


def _model_value(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """-m's value, or -hf's (never both)."""
    hf = ctx.meta.get(_HF_REPO)
    if hf is not None and value is not None:
        raise click.UsageError("give -m or -hf, not both")
    return hf if value is None else value


def _hf_repo_value(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    """-hf owner/repo[:QUANT]: always the Hub, as llama.cpp's -hf (handed to -m as hf.co/owner/repo)."""
    if value is None:
        return
    if hub.parse_ref(value) is None:
        raise click.BadParameter(f"{value!r} is not owner/repo[:QUANT]", ctx=ctx, param=param)
    if ctx.params.get("model") is not None:
        raise click.UsageError("give -m or -hf, not both")
    ref = value if hub.is_explicit(value) else "hf.co/" + value
    ctx.meta[_HF_REPO] = ref
    if "model" in ctx.params:  # -m was processed first (given after -hf, or not given)
        ctx.params["model"] = ref


def model_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """The options llama.cpp users expect on every command that loads a model."""
    options = [
        click.option("-m", "--model", default=None, metavar="PATH|NAME|OWNER/REPO[:QUANT]", callback=_model_value,
                     help="GGUF file, a name from `sdfp-edge models list`, or a Hugging Face repository "
                          "(downloaded once; its Q4_K_M unless :QUANT says) (default: the default model)."),
        click.option("-hf", "--hf-repo", default=None, metavar="OWNER/REPO[:QUANT]", callback=_hf_repo_value,
                     expose_value=False, help="A Hugging Face repository, as llama.cpp's -hf (same as -m)."),
        click.option("-t", "--threads", type=click.IntRange(1, MAX_THREADS), default=None,
                     help="CPU threads (default: all available cores)."),
        click.option("-c", "--ctx-size", type=click.IntRange(min=0), default=4096, show_default=True,
                     help="Context size in tokens (0: the model's training context)."),
        click.option("-ngl", "--n-gpu-layers", type=int, default=None,
                     help="Layers to offload to the GPU (default: all when a GPU backend is built, else 0)."),
        click.option("-s", "--seed", type=int, default=0, show_default=True, help="Random seed for sampling."),
        click.option("-v", "--verbose", is_flag=True, help="Show llama.cpp's own log."),
    ]
    for opt in reversed(options):
        f = opt(f)
    return f


def user_errors(f: Callable[..., Any]) -> Callable[..., Any]:
    """Turn SdfpError into a one-line message and exit code 2."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return f(*args, **kwargs)
        except SdfpError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(2)

    return wrapper


def not_utf8_note(what: str, text: str | None) -> str | None:
    """A note naming the bytes of `text` that were not UTF-8 (Python's surrogate escapes), or None."""
    bad = [ord(c) - 0xDC00 for c in text or "" if "\udc80" <= c <= "\udcff"]
    if not bad:
        return None
    shown = " ".join(f"{b:02x}" for b in bad[:8]) + (" ..." if len(bad) > 8 else "")
    return (f"note: {what} is not valid UTF-8 (bytes {shown}); it goes to the tokenizer as given, "
            "which reads each such byte as U+FFFD, as llama.cpp does")


def tolerant_stdio() -> None:
    """Read stdin's bytes as they are and never fail to print: no UnicodeError from the terminal.

    In a UTF-8 locale Python's stdin and stdout are strict: a pasted Latin-1 byte would stop
    `chat` with a traceback, and so would echoing it. stdin keeps such bytes as surrogate
    escapes (like the arguments); stdout writes "?" for what its encoding cannot show.
    """
    for stream, errors in ((sys.stdin, "surrogateescape"), (sys.stdout, "replace")):
        if isinstance(stream, io.TextIOWrapper) and stream.errors == "strict":
            stream.reconfigure(errors=errors)
