"""Headless Debian Chromium, driven over the DevTools protocol on a pipe (no extra package).

`--remote-debugging-pipe` makes Chromium read commands from fd 3 and write replies to fd 4,
one JSON object per message, each ended by a NUL byte. `--dump-dom` cannot be used here: it
prints the page when it has loaded, before a streamed reply has arrived.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


class DevToolsError(RuntimeError):
    pass


class Chromium:
    """One browser showing one page; `evaluate` runs JavaScript in it and awaits its promise."""

    def __init__(self, url: str, *, extra_flags: Sequence[str] = ()) -> None:
        self.profile = tempfile.mkdtemp(prefix="sdfp-chromium-")
        to_child, self._out = os.pipe()
        self._in, from_child = os.pipe()

        def fds_3_and_4() -> None:  # in the child, before exec
            a, b = os.dup(to_child), os.dup(from_child)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen(
            [str(CHROMIUM), *FLAGS, f"--user-data-dir={self.profile}", "--remote-debugging-pipe",
             *extra_flags, url],
            preexec_fn=fds_3_and_4, close_fds=False, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_child)
        os.close(from_child)
        self._buf = b""
        self._next_id = 0
        try:
            targets = self._call("Target.getTargets", timeout=60)["targetInfos"]
            page = next(t for t in targets if t["type"] == "page")
            self._session = self._call("Target.attachToTarget", {"targetId": page["targetId"], "flatten": True},
                                       timeout=60)["sessionId"]
        except BaseException:
            self.close()
            raise

    def _call(self, method: str, params: dict[str, Any] | None = None, *, session: str | None = None,
              timeout: float) -> dict[str, Any]:
        self._next_id += 1
        msg: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._out, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self._buf:
                raw, self._buf = self._buf.split(b"\0", 1)
                reply = json.loads(raw)
                if reply.get("id") == self._next_id:
                    if "error" in reply:
                        raise DevToolsError(reply["error"].get("message", str(reply["error"])))
                    return reply["result"]
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no reply to {method} in {timeout} s")
            ready, _, _ = select.select([self._in], [], [], left)
            if ready:
                chunk = os.read(self._in, 1 << 16)
                if not chunk:
                    raise DevToolsError(f"Chromium exited (code {self.proc.poll()})")
                self._buf += chunk

    def evaluate(self, expression: str, *, timeout: float) -> Any:
        """The value of `expression` in the page (a promise is awaited); retried while the page loads."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                out = self._call("Runtime.evaluate", {"expression": expression, "awaitPromise": True,
                                                      "returnByValue": True},
                                 session=self._session, timeout=max(1.0, deadline - time.monotonic()))
            except DevToolsError:  # no execution context yet, or the first one was replaced
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
                continue
            if "exceptionDetails" in out:
                raise DevToolsError(f"the page threw: {out['exceptionDetails']}")
            return out["result"].get("value")

    def wait_for(self, name: str, *, timeout: float) -> Any:
        """The value of the page's global `name` once the page has set it (a promise is awaited)."""
        return self.evaluate(f"new Promise(done => {{ const poll = () => window.{name} === undefined ? "
                             f"setTimeout(poll, 50) : done(window.{name}); poll(); }})", timeout=timeout)

    def close(self) -> None:
        try:
            self._call("Browser.close", timeout=10)
        except (DevToolsError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._in, self._out):
            os.close(fd)
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
