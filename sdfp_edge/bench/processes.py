"""The coordinator's handle on a system process: start it, send it requests, stop it.

A `WorkerProcess` runs `python -m sdfp_edge.bench.worker` with the user's environment as it
is (nothing added, nothing removed) and talks protocol.py over its stdin / stdout. Its
stderr goes to a log file, whose tail is shown if the worker fails. llama_server.py gives
llama.cpp's own server the same interface (`SystemProcess`).
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import IO, Any, Protocol

from sdfp_edge.bench.protocol import LoadConfig, Request, SystemSpec, Trace
from sdfp_edge.errors import SdfpError


class SystemProcess(Protocol):
    spec: SystemSpec
    load_s: float  # start -> ready to answer (model loaded, server healthy)
    info: dict[str, Any]

    def run(self, req: Request) -> Trace: ...
    def close(self) -> None: ...


def log_tail(path: Path, n: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-n:].strip()
    except OSError:
        return ""


class WorkerError(SdfpError):
    """A system's process failed; the message names the system and quotes its log."""


class WorkerProcess:
    """One `sdfp_edge.bench.worker` process, ready once the constructor returns."""

    def __init__(self, spec: SystemSpec, load: LoadConfig, log_dir: Path) -> None:
        self.spec = spec
        self.log_path = log_dir / f"{spec.name}.log"
        self._log: IO[bytes] = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sdfp_edge.bench.worker"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True, encoding="utf-8",
        )  # env: inherited untouched
        try:
            ready = self._ask({"spec": asdict(spec), "load": asdict(load)})["ready"]
        except BaseException:
            self.close()
            raise
        self.load_s: float = ready["load_s"]
        self.info: dict[str, Any] = ready["info"]

    def _ask(self, msg: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write(json.dumps(msg) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        except (BrokenPipeError, OSError):
            line = ""
        if not line:
            code = self.proc.wait()
            raise WorkerError(f"system {self.spec.name}: its process exited (code {code}); its log ends:\n"
                              f"{log_tail(self.log_path)}")
        answer: dict[str, Any] = json.loads(line)
        if "error" in answer:
            raise WorkerError(f"system {self.spec.name}: {answer['type']}: {answer['error']}")
        return answer

    def tokenize_chat(self, messages: list[dict[str, str]]) -> list[int]:
        return list(self._ask({"op": "tokenize_chat", "messages": messages})["ids"])

    def detokenize(self, ids: list[int]) -> str:
        return str(self._ask({"op": "detokenize", "ids": list(ids)})["text"])

    def run(self, req: Request) -> Trace:
        return Trace.from_json(self._ask({"op": "generate", "request": asdict(req)})["trace"])

    def close(self) -> None:
        """End of input: the worker frees its model and exits."""
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()
