"""llama.cpp's own `llama-server` as a bench system: the peer a llama.cpp user would pick.

The binary is built once from the unpatched llama.cpp of the pinned llama-cpp-python sdist
(tools/build_llama_server.py, which caches it). Each configuration runs in its own server
process, started with the user's environment as it is, on a free loopback port:

    llama-server -m MODEL -c N_CTX -t T -tb T -np 1 [-ngl N] [--spec-type TYPE] [-md DRAFT ...]

Each prompt goes to the native `/completion` endpoint as token ids (the same ids every
system gets), streamed with `return_tokens`, so the ids and each token's arrival time are
recorded by this client (HTTP and JSON included: a server's users pay them too);
`cache_prompt` is off, so the whole prompt is prefilled as for the other systems (its
host-memory prompt cache, `--cache-ram`, stays at its default). Sampling is temperature
only (no penalties, no top-k/top-p/min-p), as for every system. The server's final
`timings` give its draft counters: each verify emits its accepted drafts plus one token,
so verifies = predicted - accepted. n-gram drafts cost no model evaluation; a draft
model's steps are not reported (left unknown).
"""

from __future__ import annotations

import http.client
import json
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

from sdfp_edge.bench.processes import WorkerError, log_tail
from sdfp_edge.bench.protocol import LoadConfig, Request, SystemSpec, Trace
from sdfp_edge.errors import SdfpError

# llama.cpp's self-speculative n-gram drafts (common/speculative.cpp of the pinned source)
NGRAM_SPEC_TYPES = ("ngram-simple", "ngram-map-k", "ngram-mod", "ngram-cache")
BUILD_TOOL = Path(__file__).resolve().parents[2] / "tools" / "build_llama_server.py"
SOURCE = "the unpatched llama.cpp vendored in the pinned llama-cpp-python sdist (tools/build_llama_server.py)"
BUILD_HINT = "run `python tools/build_llama_server.py` once (4-5 minutes on 2 cores), or pass --build-peers"
HEALTH_TIMEOUT_S = 600.0


def find_binary() -> tuple[Path | None, str]:
    """The cached llama-server for this machine and CMAKE_ARGS, or None and why not."""
    if not BUILD_TOOL.is_file():
        return None, f"{BUILD_TOOL} is missing (it ships with the source checkout)"
    proc = subprocess.run([sys.executable, str(BUILD_TOOL), "--print-path"], capture_output=True, text=True,
                          check=False)
    if proc.returncode == 0:
        return Path(proc.stdout.strip()), ""
    return None, f"llama-server is not built: {BUILD_HINT}"


def build_binary() -> Path:
    """Build (or take from the cache) llama-server; the build's output goes to stderr."""
    if not BUILD_TOOL.is_file():
        raise SdfpError(f"cannot build llama-server: {BUILD_TOOL} is missing (it ships with the source checkout)")
    proc = subprocess.run([sys.executable, str(BUILD_TOOL)], stdout=subprocess.PIPE, text=True, check=False)
    if proc.returncode != 0:
        raise SdfpError(f"tools/build_llama_server.py failed (exit code {proc.returncode}); see its output above")
    return Path(proc.stdout.strip().splitlines()[-1])


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_argv(binary: Path, spec: SystemSpec, load: LoadConfig, port: int) -> list[str]:
    """The command line: the bench's shared settings, then the system's speculative options."""
    argv = [str(binary), "-m", load.model, "-c", str(load.n_ctx), "-t", str(load.threads), "-tb", str(load.threads),
            "-np", "1", "--host", "127.0.0.1", "--port", str(port), "--no-webui"]
    if load.n_gpu_layers is not None:
        argv += ["-ngl", "all" if load.n_gpu_layers < 0 else str(load.n_gpu_layers)]
    spec_type = spec.options.get("spec_type")
    if spec_type:
        argv += ["--spec-type", spec_type]
    draft = spec.options.get("draft_model")
    if draft:
        argv += ["-md", str(draft), "--spec-draft-n-max", str(load.k_max), "-td", str(load.threads),
                 "-tbd", str(load.threads)]
        if load.n_gpu_layers is not None:
            argv += ["-ngld", "all" if load.n_gpu_layers < 0 else str(load.n_gpu_layers)]
    return argv


class LlamaServerProcess:
    """One llama-server configuration, healthy once the constructor returns."""

    def __init__(self, spec: SystemSpec, load: LoadConfig, binary: Path, log_dir: Path) -> None:
        self.spec = spec
        self.port = free_port()
        self.argv = server_argv(binary, spec, load, self.port)
        self.log_path = log_dir / f"{spec.name}.log"
        self._log: IO[bytes] = open(self.log_path, "wb")
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT)  # env: inherited untouched
        try:
            self._wait_healthy()
            props = self._get("/props")
        except BaseException:
            self.close()
            raise
        self.load_s = time.perf_counter() - t0
        self.info: dict[str, Any] = {"command": shlex.join(self.argv), "build_info": props.get("build_info")}
        self.served = 0

    def _fail(self, why: str) -> WorkerError:
        return WorkerError(f"system {self.spec.name}: {why}; its log ends:\n{log_tail(self.log_path)}")

    def _get(self, path: str) -> dict[str, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            body = resp.read()
        finally:
            conn.close()
        if resp.status != 200:
            raise self._fail(f"GET {path} answered {resp.status}")
        out: dict[str, Any] = json.loads(body)
        return out

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + HEALTH_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise self._fail(f"llama-server exited (code {self.proc.returncode}) before it was ready")
            try:
                self._get("/health")
                return
            except (OSError, http.client.HTTPException, WorkerError):
                time.sleep(0.05)  # not listening yet, or 503 while the model loads
        raise self._fail(f"llama-server was not healthy after {HEALTH_TIMEOUT_S:.0f} s")

    def run(self, req: Request) -> Trace:
        body = {
            "prompt": req.ids, "n_predict": req.max_tokens, "temperature": req.temperature, "seed": req.seed,
            # the same distribution as the other systems: temperature only, no penalties or truncation
            "top_k": 0, "top_p": 1.0, "min_p": 0.0, "typical_p": 1.0, "repeat_penalty": 1.0,
            "stream": True, "return_tokens": True, "cache_prompt": False,
        }
        self.served += 1
        trace = Trace(request=self.served)
        final: dict[str, Any] = {}
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=HEALTH_TIMEOUT_S)
        try:
            t0 = time.perf_counter()
            conn.request("POST", "/completion", json.dumps(body), {"Content-Type": "application/json"})
            resp = conn.getresponse()
            if resp.status != 200:
                raise self._fail(f"/completion answered {resp.status}: {resp.read()[:500]!r}")
            for line in resp:
                if not line.startswith(b"data: "):
                    continue
                now = time.perf_counter() - t0
                event = json.loads(line[6:])
                if "error" in event:
                    raise self._fail(f"/completion failed: {event['error']}")
                for tok in event.get("tokens") or []:
                    trace.tokens.append(int(tok))
                    trace.times.append(now)
                if event.get("stop"):
                    final = event
                    break
        except (OSError, http.client.HTTPException) as e:
            raise self._fail(f"/completion: {e}") from e
        finally:
            conn.close()
        timings = final.get("timings", {})
        accepted = int(timings.get("draft_n_accepted", 0))
        trace.first_cycle = min(1, len(trace.tokens))  # the prefill samples the first token alone
        trace.verifies = int(timings.get("predicted_n", len(trace.tokens))) - accepted
        trace.drafted, trace.accepted = int(timings.get("draft_n", 0)), accepted
        trace.draft_steps = None if self.spec.options.get("draft_model") else 0
        trace.system_stats = {"timings": timings, "stop_type": final.get("stop_type"),
                              "tokens_predicted": final.get("tokens_predicted")}
        return trace

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
