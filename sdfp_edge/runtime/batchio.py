"""The JSONL files of offline generation: prompts in, one answer per line out, resumable.

Input, one JSON object per line (blank lines are ignored):

    {"id": "q1", "prompt": "Once upon a time", "max_tokens": 64}
    {"messages": [{"role": "user", "content": "Hi"}], "temperature": 0.7, "seed": 3, "stop": ["\\n\\n"]}

`id` (a string or an integer) defaults to the line number (1-based). Output, one line per
input line, in the order the answers finish:

    {"id": "q1", "text": "...", "finish_reason": "length", "usage": {"prompt_tokens": 5, ...}}
    {"id": 7, "error": {"message": "line 7: ...", "type": "invalid_request"}}

Each answer is written with one write() on a file opened for appending, then flushed and
fsynced, so a killed process leaves at most one partial last line. A rerun with the same
output file drops that partial line and skips every id already present: answers and
errors alike (an error is a property of its line, not of the run).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdfp_edge.errors import InvalidRequestError

SAMPLING_FIELDS = ("temperature", "top_k", "top_p", "min_p", "typical_p", "top_n_sigma", "xtc_probability",
                   "xtc_threshold", "mirostat", "mirostat_tau", "mirostat_eta", "samplers", "repeat_penalty",
                   "presence_penalty", "frequency_penalty", "repeat_last_n", "dry_multiplier", "dry_base",
                   "dry_allowed_length", "dry_penalty_last_n", "dry_sequence_breakers", "logit_bias")
FIELDS = {"id", "prompt", "messages", "max_tokens", "seed", "stop", *SAMPLING_FIELDS}

Id = str | int


@dataclass
class Line:
    """One input line: its request fields, or why it cannot run."""

    number: int  # 1-based
    id: Id
    fields: dict[str, Any] = field(default_factory=dict)
    error: dict[str, str] | None = None  # {"message", "type"}


def error_object(message: str, kind: str) -> dict[str, str]:
    return {"message": message, "type": kind}


def _check_fields(obj: dict[str, Any]) -> str | None:
    """Why the line's fields are malformed (the model-dependent checks come later), or None."""
    unknown = sorted(set(obj) - FIELDS)
    if unknown:
        return f"unknown field(s) {', '.join(unknown)} (known: {', '.join(sorted(FIELDS))})"
    if ("prompt" in obj) == ("messages" in obj):
        return "give exactly one of 'prompt' (a string) or 'messages' (a list of {role, content})"
    if "prompt" in obj and (not isinstance(obj["prompt"], str) or not obj["prompt"]):
        return "'prompt' must be a non-empty string"
    stop = obj.get("stop", [])
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
        return "'stop' must be a non-empty string or a list of them"
    for name in ("max_tokens", "top_k", "seed"):
        v = obj.get(name, 0)
        if not isinstance(v, int) or isinstance(v, bool):
            return f"'{name}' must be an integer, got {v!r}"
    for name in ("temperature", "top_p", "min_p"):
        v = obj.get(name, 0.0)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
            return f"'{name}' must be a number, got {v!r}"
    return None


def parse_line(number: int, text: str) -> Line | None:
    """A line of the input file; None for a blank line."""
    if not text.strip():
        return None
    try:
        obj = json.loads(text)
    except ValueError as e:
        return Line(number, number, error=error_object(f"line {number}: not JSON ({e})", "invalid_json"))
    if not isinstance(obj, dict):
        return Line(number, number, error=error_object(f"line {number}: not a JSON object", "invalid_request"))
    line_id = obj.get("id", number)
    if isinstance(line_id, bool) or not isinstance(line_id, (str, int)):
        return Line(number, number,
                    error=error_object(f"line {number}: 'id' must be a string or an integer", "invalid_request"))
    why = _check_fields(obj)
    if why is not None:
        return Line(number, line_id, error=error_object(f"line {number}: {why}", "invalid_request"))
    return Line(number, line_id, fields=obj)


def read_input(path: Path) -> list[Line]:
    """Every non-blank line of the input; ids must be unique (they are the resume key)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = [ln for n, text in enumerate(f, 1) if (ln := parse_line(n, text)) is not None]
    except OSError as e:
        raise InvalidRequestError(f"cannot read {path}: {e.strerror or e}") from None
    first: dict[Id, int] = {}
    for ln in lines:
        if ln.id in first:
            raise InvalidRequestError(
                f"{path}: line {ln.number} has id {ln.id!r}, already used on line {first[ln.id]}; "
                "ids must be unique (a line's default id is its line number)")
        first[ln.id] = ln.number
    return lines


def answered_ids(path: Path) -> set[Id]:
    """Ids already in an output file, after dropping a partial last line (a killed run)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return set()
    except OSError as e:
        raise InvalidRequestError(f"cannot read {path}: {e.strerror or e}") from None
    end = data.rfind(b"\n") + 1
    if end < len(data):
        with open(path, "r+b") as f:
            f.truncate(end)
            f.flush()
            os.fsync(f.fileno())
    done: set[Id] = set()
    for n, raw in enumerate(data[:end].splitlines(), 1):
        try:
            obj = json.loads(raw)
            done.add(obj["id"])
        except (ValueError, KeyError, TypeError):
            raise InvalidRequestError(
                f"{path}: line {n} is not an answer of this tool; give another --output, "
                "or remove the file to start over") from None
    return done


class AnswerWriter:
    """Appends whole lines: one write() each, flushed and fsynced before the next."""

    def __init__(self, path: Path) -> None:
        try:
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as e:
            raise InvalidRequestError(f"cannot write {path}: {e.strerror or e}") from None

    def write(self, obj: dict[str, Any]) -> None:
        data = (json.dumps(obj, ensure_ascii=False) + "\n").encode("utf-8")
        view = memoryview(data)
        while view:  # a regular file takes it in one write; loop only for safety
            view = view[os.write(self._fd, view):]
        os.fsync(self._fd)

    def close(self) -> None:
        os.close(self._fd)

    def __enter__(self) -> AnswerWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def answer(line_id: Id, text: str, finish_reason: str, prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    return {"id": line_id, "text": text, "finish_reason": finish_reason,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens}}


def failed(line: Line, message: str | None = None, kind: str = "invalid_request") -> dict[str, Any]:
    err = line.error if message is None else error_object(f"line {line.number}: {message}", kind)
    return {"id": line.id, "error": err}


def todo(lines: list[Line], done: set[Id]) -> Iterator[Line]:
    return (ln for ln in lines if ln.id not in done)
