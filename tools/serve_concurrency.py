#!/usr/bin/env python3
"""Concurrent streaming clients against `sdfp-edge serve --parallel N` and llama.cpp's `llama-server -np N`.

Produces the table of docs/serving.md ("Several clients at once"): for each server (each in
its own process, started and stopped here, one at a time) and each number M of concurrent
clients, M threads each send REQUESTS streaming chat requests one after the other (MT-Bench
first turns and HumanEval prompts, alternating, from sdfp_edge/bench/data.py, greedy,
--max-tokens each) and the script reports

    tok/s      all completion tokens / the wall time of the M clients' run
    TTFT       time to the first content chunk: median, 95th percentile (ms)
    ITL        per request (last chunk - first chunk) / (tokens - 1): median, p95 (ms)
    gap p95    95th percentile of the time between two content chunks (what a reader sees)

and, with --mixed, a load where one client asks for 512 tokens while the others ask for 16
each, three times: whether every short request ended before the long one; with --long-prompt,
one client streams 256 tokens while another pastes about 600 tokens of code: the stream's
longest stall and the pasted prompt's time to first token. `--parallel 4w` runs
`serve --parallel 4 --whole-prefill` (prompts prefilled whole between two steps), `--parallel 4:off`
runs `serve --parallel 4 --mode off` (no drafts: where a difference from auto comes from).

Every request of a server's run has a prompt no earlier request of that run had (the warm-up
included): llama-server keeps the prompts it saw in host memory (--cache-ram, 8 GiB by default)
and its slots' KV, so prompts repeated from one M to the next measure its prompt cache, not
concurrency (--prompt-reuse repeat gives the old behaviour, the same prompts for every M). With --repeats R
the whole sequence of servers runs R times (the order rotated each repeat) and the table gives,
per cell, the median over repeats (tok/s with its min-max).

Run it alone on the machine (timings):
    flock -x /tmp/sdfp-cpu.lock python tools/serve_concurrency.py --parallel 1,4 --clients 1,2,4,8 \\
        --llama-server auto --np 4 --mixed --repeats 3 --out models/bench/serve/smollm2.json

`--llama-server auto` takes the binary tools/build_llama_server.py built (skipped if none).
`--baseline-src DIR` adds each sdfp-edge server run from another checkout (a `git worktree` of
an earlier commit), labelled with its commit: a change's A/B in one interleaved run.
Standard library + httpx (the server extra's test client).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from sdfp_edge import models  # noqa: E402
from sdfp_edge.bench.data import interleave, load_humaneval, load_mtbench  # noqa: E402
from sdfp_edge.paths import env_without_stored_costs  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def started(cmd: list[str], port: int, log: Path) -> Iterator[str]:
    """The server running. Each sdfp-edge server learns its costs from scratch, as on a first run,
    and leaves the user's cost cache as it was: what an earlier run learned must not change this
    one, nor this one the next."""
    url = f"http://127.0.0.1:{port}"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env_without_stored_costs())
    try:
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"{cmd[0]} exited early; see {log}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"{cmd[0]}: no /health after 300 s; see {log}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def stream_one(url: str, prompt: str, max_tokens: int, on_chunk: Any = None) -> dict[str, Any]:
    body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    times: list[float] = []
    tokens = None
    with httpx.Client(timeout=600) as c, c.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            data = json.loads(line[6:])
            if data.get("usage"):
                tokens = data["usage"]["completion_tokens"]
            choices = data.get("choices") or []
            if choices and (choices[0].get("delta") or {}).get("content"):
                times.append(time.perf_counter())
                if on_chunk is not None:
                    on_chunk()
    end = time.perf_counter()
    n = tokens if tokens is not None else len(times)
    return {"t_send": t0, "t_end": end, "ttft": times[0] - t0 if times else None, "tokens": n, "chunks": len(times),
            "itl": (times[-1] - times[0]) / (n - 1) if len(times) > 1 and n > 1 else None,
            "gaps": [b - a for a, b in zip(times, times[1:])]}


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))] if xs else float("nan")


def run_clients(url: str, prompts: list[str], m: int, per_client: int, max_tokens: int) -> dict[str, Any]:
    results: list[dict[str, Any]] = []
    lock = threading.Lock()
    barrier = threading.Barrier(m)

    def client(i: int) -> None:
        barrier.wait()
        for j in range(per_client):
            r = stream_one(url, prompts[(i * per_client + j) % len(prompts)], max_tokens)
            with lock:
                results.append(r)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(m)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ttft = [r["ttft"] for r in results if r["ttft"] is not None]
    itl = [r["itl"] for r in results if r["itl"] is not None]
    gaps = [g for r in results for g in r["gaps"]]
    tokens = sum(r["tokens"] for r in results)
    return {"clients": m, "requests": len(results), "tokens": tokens, "seconds": round(wall, 2),
            "tokens_per_second": round(tokens / wall, 2),
            "ttft_ms": {"median": round(1e3 * statistics.median(ttft), 1), "p95": round(1e3 * pct(ttft, 0.95), 1)},
            "itl_ms": {"median": round(1e3 * statistics.median(itl), 1), "p95": round(1e3 * pct(itl, 0.95), 1)},
            "chunk_gap_ms": {"median": round(1e3 * statistics.median(gaps), 1), "p95": round(1e3 * pct(gaps, 0.95), 1)}}


def run_mixed(url: str, prompts: list[str], m: int) -> dict[str, Any]:
    """One client asks for 512 tokens; m - 1 others, started once it streams, ask for 16, three times each."""
    out: dict[str, Any] = {}
    long_started = threading.Event()

    def long() -> None:
        out["long"] = stream_one(url, "Write a long story about a lighthouse keeper.", 512)

    def short(i: int) -> None:
        long_started.wait()
        out[f"short{i}"] = [stream_one(url, prompts[(3 * i + j) % len(prompts)], 16) for j in range(3)]

    threads = [threading.Thread(target=long)] + [threading.Thread(target=short, args=(i,)) for i in range(m - 1)]
    for t in threads:
        t.start()
    time.sleep(0.5)  # the long one is admitted first
    long_started.set()
    for t in threads:
        t.join()
    shorts = [r for i in range(m - 1) for r in out[f"short{i}"]]
    return {"clients": m, "long_tokens": out["long"]["tokens"], "long_seconds": round(out["long"]["t_end"] - out["long"]["t_send"], 2),
            "short_seconds_max": round(max(r["t_end"] - r["t_send"] for r in shorts), 2),
            "shorts_before_long": sum(r["t_end"] < out["long"]["t_end"] for r in shorts), "shorts": len(shorts)}


def run_long_prompt(url: str, long_prompt: str) -> dict[str, Any]:
    """One client streams 256 tokens; once it streams, another sends a long prompt (about 600
    tokens of code) for 16 tokens: how long the first stream stalls while that prompt is prefilled."""
    out: dict[str, Any] = {}
    streaming = threading.Event()

    def reader() -> None:
        out["stream"] = stream_one(url, "Write a long story about a lighthouse keeper.", 256, on_chunk=streaming.set)

    def paster() -> None:
        streaming.wait()
        time.sleep(0.3)
        out["long_prompt"] = stream_one(url, long_prompt, 16)

    threads = [threading.Thread(target=reader), threading.Thread(target=paster)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    gaps = out["stream"]["gaps"]
    return {"stream_gap_max_ms": round(1e3 * max(gaps), 1), "stream_gap_p95_ms": round(1e3 * pct(gaps, 0.95), 1),
            "stream_seconds": round(out["stream"]["t_end"] - out["stream"]["t_send"], 2),
            "long_prompt_ttft_ms": round(1e3 * out["long_prompt"]["ttft"], 1) if out["long_prompt"]["ttft"] else None}


def measure(name: str, cmd: list[str], port: int, log: Path, prompts: list[str], clients: list[int],
            per_client: int, max_tokens: int, mixed: bool, fresh: bool, long_prompt: str | None) -> dict[str, Any]:
    print(f"== {name}: {' '.join(cmd)}", file=sys.stderr)
    with started(cmd, port, log) as url:
        feed = iter(prompts) if fresh else None

        def take(n: int) -> list[str]:  # the next n unused prompts, or (repeat) always the first ones
            out = [next(feed) for _ in range(n)] if feed is not None else prompts
            assert len(out) >= n, "too few prompts"
            return out

        stream_one(url, take(1)[0], 16)  # warm-up: first-call graph building
        rows = []
        for m in clients:
            row = run_clients(url, take(m * per_client), m, per_client, max_tokens)
            print(f"   M={m}: {row}", file=sys.stderr)
            rows.append(row)
        mix = run_mixed(url, take(9), 4) if mixed else None
        if mix:
            print(f"   mixed: {mix}", file=sys.stderr)
        paste = run_long_prompt(url, long_prompt) if long_prompt else None
        if paste:
            print(f"   long prompt: {paste}", file=sys.stderr)
    return {"system": name, "command": cmd, "rows": rows, "mixed": mix, "long_prompt": paste}


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def markdown(record: dict[str, Any]) -> str:
    """The results as docs/serving.md's tables: per server and M, the median over repeats."""
    cells: dict[tuple[str, int], list[dict[str, Any]]] = {}
    mixes: dict[str, list[dict[str, Any]]] = {}
    for run in record["runs"]:
        for r in run["rows"]:
            cells.setdefault((run["system"], r["clients"]), []).append(r)
        if run.get("mixed"):
            mixes.setdefault(run["system"], []).append(run["mixed"])
    repeats = max(len(v) for v in cells.values()) if cells else 0
    lines = [f"| server | clients | tok/s, median (min-max) of {repeats} | TTFT median / p95 (ms) | "
             "inter-token median / p95 (ms) | chunk gap p95 (ms) |",
             "|---|---:|---:|---:|---:|---:|"]
    for (system, m), rows in cells.items():
        tps = [r["tokens_per_second"] for r in rows]
        def med(key: str, q: str) -> float:
            return _median([r[key][q] for r in rows])
        lines.append(f"| {system} | {m} | {_median(tps):.1f} ({min(tps):.1f}-{max(tps):.1f}) | "
                     f"{med('ttft_ms', 'median'):.0f} / {med('ttft_ms', 'p95'):.0f} | "
                     f"{med('itl_ms', 'median'):.1f} / {med('itl_ms', 'p95'):.1f} | {med('chunk_gap_ms', 'p95'):.0f} |")
    if mixes:
        lines += ["", "| server | long request (tokens, median s) | short requests ended before it (all repeats) | "
                  "slowest short (median s) |", "|---|---:|---:|---:|"]
        for name, ms in mixes.items():
            lines.append(f"| {name} | {ms[0]['long_tokens']}, {_median([m['long_seconds'] for m in ms]):.1f} | "
                         f"{sum(m['shorts_before_long'] for m in ms)} of {sum(m['shorts'] for m in ms)} | "
                         f"{_median([m['short_seconds_max'] for m in ms]):.1f} |")
    pastes: dict[str, list[dict[str, Any]]] = {}
    for run in record["runs"]:
        if run.get("long_prompt"):
            pastes.setdefault(run["system"], []).append(run["long_prompt"])
    if pastes:
        lines += ["", "| server | longest stall of the stream (ms, median; max) | its gap p95 (ms) | "
                  "the long prompt's first token (ms) |", "|---|---:|---:|---:|"]
        for name, ps in pastes.items():
            gaps = [x["stream_gap_max_ms"] for x in ps]
            lines.append(f"| {name} | {_median(gaps):.0f}; {max(gaps):.0f} | "
                         f"{_median([x['stream_gap_p95_ms'] for x in ps]):.0f} | "
                         f"{_median([x['long_prompt_ttft_ms'] for x in ps if x['long_prompt_ttft_ms']]):.0f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m", help="catalogue name or GGUF path")
    ap.add_argument("--parallel", default="1,4", help="sdfp-edge serve --parallel values (4w: with --whole-prefill; 4:off: with --mode off)")
    ap.add_argument("--clients", default="1,2,4,8", help="numbers of concurrent clients")
    ap.add_argument("--per-client", type=int, default=2, help="requests each client sends, one after another")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--prompts", type=int, default=16,
                    help="with --prompt-reuse repeat: prompts used (MT-Bench first turns and HumanEval, alternating)")
    ap.add_argument("--prompt-reuse", choices=("fresh", "repeat"), default="fresh",
                    help="fresh: no prompt twice in a server's run; repeat: every M sends the same prompts")
    ap.add_argument("--repeats", type=int, default=1, help="run the whole sequence of servers this many times")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--slot-ctx", type=int, default=1024, help="context per slot (n_ctx = N x this)")
    ap.add_argument("--llama-server", default=None, help="binary, or 'auto' (tools/build_llama_server.py's)")
    ap.add_argument("--np", default="4", help="llama-server -np values")
    ap.add_argument("--mixed", action="store_true", help="also the 512-vs-16-token mixed load (4 clients)")
    ap.add_argument("--long-prompt", action="store_true",
                    help="also: a stream of 256 tokens while another client sends about 600 tokens of code")
    ap.add_argument("--baseline-src", type=Path, default=None,
                    help="also run each --parallel server from this checkout of sdfp-edge (PYTHONPATH), e.g. a "
                         "`git worktree` of an earlier commit: an A/B of a change in one run")
    ap.add_argument("--out", type=Path, default=None, help="write the results here (JSON)")
    ap.add_argument("--table", type=Path, default=None, help="print the Markdown table of a results file and exit")
    a = ap.parse_args()
    if a.table:
        print(markdown(json.loads(a.table.read_text())))
        return
    model = models.resolve_model(a.model)
    chat, code = interleave(load_mtbench()), load_humaneval()  # one per MT-Bench category first
    prompts = [p.text for pair in zip(chat, code) for p in pair]
    if a.prompt_reuse == "repeat":
        prompts = prompts[: a.prompts]
    clients = [int(x) for x in a.clients.split(",")]
    long_prompt = None
    if a.long_prompt:  # HumanEval problems, joined to about 2,000 characters of code (600-700 tokens)
        parts = ["Summarize what each of these functions does, one line each.\n"]
        for p in code[100:]:
            if sum(map(len, parts)) > 2000:
                break
            parts.append(p.text)
        long_prompt = "\n".join(parts)
    logs = Path(os.environ.get("TMPDIR", "/tmp")) / "serve_concurrency"
    logs.mkdir(exist_ok=True)
    servers: list[tuple[str, list[str], Path]] = []
    sdfp = [str(Path(sys.executable).with_name("sdfp-edge"))]
    for spec in a.parallel.split(","):  # "4": --parallel 4; "4w": + --whole-prefill; "4:off": + --mode off
        base, _, mode = spec.partition(":")
        n, whole = int(base.rstrip("w")), base.endswith("w")
        flags = (["--whole-prefill"] if whole else []) + (["--mode", mode] if mode else [])
        cmd = sdfp + ["serve", "--model", str(model), "--threads", str(a.threads), "-c", str(a.slot_ctx * n),
                      "--parallel", str(n), "--port", "{port}", *flags]
        tag = spec.replace(":", "-")  # log file names
        servers.append((" ".join(["sdfp-edge --parallel", str(n), *flags]), cmd, logs / f"sdfp-{tag}.log"))
        if a.baseline_src:
            src = a.baseline_src.resolve()
            if not (src / "sdfp_edge" / "__init__.py").is_file():
                raise SystemExit(f"--baseline-src {src}: no sdfp_edge package there")
            rev = subprocess.run(["git", "-C", str(src), "rev-parse", "--short", "HEAD"], capture_output=True,
                                 text=True).stdout.strip() or src.name
            servers.append((" ".join(["sdfp-edge --parallel", str(n), *flags, f"@{rev}"]),
                            ["env", f"PYTHONPATH={src}", *cmd], logs / f"sdfp-{tag}-{rev}.log"))
    binary = a.llama_server
    if binary == "auto":
        out = subprocess.run([sys.executable, str(ROOT / "tools" / "build_llama_server.py"), "--print-path"],
                             capture_output=True, text=True)
        binary = out.stdout.strip().splitlines()[-1] if out.returncode == 0 else None
        if binary is None:
            print("llama-server is not built: skipped", file=sys.stderr)
    if binary:
        for n in (int(x) for x in a.np.split(",")):
            cmd = [binary, "-m", str(model), "-t", str(a.threads), "-c", str(a.slot_ctx * n), "-np", str(n),
                   "--port", "{port}", "--host", "127.0.0.1"]
            servers.append((f"llama-server -np {n}", cmd, logs / f"llama-{n}.log"))
    runs = []
    for rep in range(a.repeats):
        k = rep % len(servers)
        for name, cmd, log in servers[k:] + servers[:k]:  # rotated: no server always first
            port = free_port()
            run = measure(name, [x.replace("{port}", str(port)) for x in cmd], port, log, prompts, clients,
                          a.per_client, a.max_tokens, a.mixed, a.prompt_reuse == "fresh", long_prompt)
            runs.append({**run, "repeat": rep})
    record = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.processor() or platform.platform()}",
              "model": model.name, "max_tokens": a.max_tokens, "per_client": a.per_client, "repeats": a.repeats,
              "prompt_reuse": a.prompt_reuse,
              "command": " ".join(sys.argv), "runs": runs}
    text = json.dumps(record, indent=1)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = a.out.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(a.out)
    print(text)
    print(markdown(record))


if __name__ == "__main__":
    main()
