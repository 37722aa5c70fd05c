#!/usr/bin/env python3
"""Tokens per second of many prompts: sdfp-edge's batch mode against plain llama.cpp.

Figures: docs/batch.md: the throughput table against plain llama.cpp and `llama-server -np N`,
the sweep over N and the README's 'up to 1.31x' (records in models/bench/batch/).

The same chat prompts (MT-Bench first turns and HumanEval, sdfp_edge/bench/data.py),
greedy, `-n` tokens each, every system in a fresh process, model load excluded:

  sdfp-batch   `sdfp-edge generate --input --output --parallel N` (parallel.py), mode auto
  plain        llama-cpp-python `Llama`, one prompt at a time (what a script would do)
  server-npN   llama.cpp's own `llama-server -np N` (tools/build_llama_server.py builds it
               into ~/.cache/sdfp-edge/llama-server/<key>/), fed by N concurrent clients;
               skipped with a note when no binary is found

Tokens are the completion tokens each system reports; tokens/s = their sum / the wall
time from the first request to the last answer. "same" counts the prompts whose text is
identical to plain's (greedy; llama.cpp is not batch-invariant on every model, see
/work/shared/notes/measurements.md).

    .venv/bin/python tools/batch_throughput.py --model qwen2.5-coder-1.5b --limit 4 -n 128 \\
        --parallel 4 --out models/bench/batch-qwen1.5b.json
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime as dt
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from sdfp_edge.bench import data
from sdfp_edge.models import resolve_model
from sdfp_edge.paths import cache_dir, env_without_stored_costs

SDFP_WORKER = r"""
import json, sys
from pathlib import Path
from sdfp_edge.cli import batch
model, src, out, n, parallel, threads, ctx = sys.argv[1:8]
stats = batch.run(model, int(threads), int(ctx), None, False, Path(src), Path(out), int(parallel), "auto",
                  batch.Defaults(int(n), {"temperature": 0.0}, 0, ()))
texts = {}
for line in Path(out).read_text().splitlines():
    a = json.loads(line)
    texts[a["id"]] = a.get("text")
print(json.dumps({**stats, "texts": [texts.get(i + 1) for i in range(len(texts))]}))
"""

PLAIN_WORKER = r"""
import json, sys, time
import llama_cpp
path, src, n, threads, ctx = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
llm = llama_cpp.Llama(model_path=path, n_ctx=ctx, n_threads=threads, n_threads_batch=threads, verbose=False)
lines = [json.loads(l) for l in open(src)]
t0 = time.perf_counter()
tokens, texts = 0, []
for l in lines:
    r = llm.create_chat_completion(l["messages"], max_tokens=n, temperature=0.0, repeat_penalty=1.0)
    tokens += r["usage"]["completion_tokens"]
    texts.append(r["choices"][0]["message"]["content"])
print(json.dumps({"tokens": tokens, "seconds": time.perf_counter() - t0, "texts": texts}))
"""


def run_worker(code: str, args: list[str]) -> dict[str, Any]:
    # stored costs neither read nor written: each run learns from scratch, the user's cache stays as it was
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=False,
                          env=env_without_stored_costs())
    if proc.returncode != 0:
        raise SystemExit(f"worker failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def find_llama_server() -> Path | None:
    root = cache_dir() / "llama-server"
    found = [p for p in root.glob("*/**/llama-server") if p.is_file() and os.access(p, os.X_OK)]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=3600) as r:
        return json.loads(r.read())


def run_server(binary: Path, model: Path, prompts: list[data.Prompt], n: int, parallel: int, threads: int,
               ctx: int) -> dict[str, Any]:
    port = free_port()
    cmd = [str(binary), "-m", str(model), "-np", str(parallel), "-c", str(ctx * parallel), "-t", str(threads),
           "--host", "127.0.0.1", "--port", str(port)]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                with urllib.request.urlopen(base + "/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"llama-server did not start: {' '.join(cmd)}")
            time.sleep(0.5)

        def ask(p: data.Prompt) -> dict[str, Any]:
            return post(base + "/v1/chat/completions", {"messages": p.messages, "max_tokens": n, "temperature": 0.0})

        t0 = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(parallel) as pool:
            replies = list(pool.map(ask, prompts))
        seconds = time.perf_counter() - t0
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    return {"tokens": sum(r["usage"]["completion_tokens"] for r in replies), "seconds": seconds,
            "texts": [r["choices"][0]["message"]["content"] for r in replies]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="GGUF path or catalogue name (default: the default model)")
    ap.add_argument("--data", default="mtbench,humaneval")
    ap.add_argument("--limit", type=int, default=8,
                    help="prompts per category (8 MT-Bench categories and HumanEval: 72 at the default)")
    ap.add_argument("--prompts", type=int, default=None, help="keep only the first N (a quick check)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("-n", "--max-tokens", type=int, default=128)
    ap.add_argument("--parallel", type=int, default=4)
    ap.add_argument("-t", "--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("-c", "--ctx-size", type=int, default=2048, help="per sequence")
    ap.add_argument("--skip", default="", help="comma-separated systems to leave out: sdfp-batch,plain,server")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = ap.parse_args()

    model = resolve_model(args.model)
    prompts = data.load(args.data.split(","), limit=args.limit, seed=args.seed)[: args.prompts]
    skip = set(filter(None, args.skip.split(",")))
    notes: list[str] = []
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "prompts.jsonl"
        src.write_text("".join(json.dumps({"messages": p.messages}) + "\n" for p in prompts))
        common = [str(args.max_tokens)]
        if "sdfp-batch" not in skip:
            results["sdfp-batch"] = run_worker(SDFP_WORKER, [str(model), str(src), str(Path(tmp) / "out.jsonl"),
                                                             *common, str(args.parallel), str(args.threads),
                                                             str(args.ctx_size)])
        if "plain" not in skip:
            results["plain"] = run_worker(PLAIN_WORKER, [str(model), str(src), *common, str(args.threads),
                                                         str(args.ctx_size)])
        if "server" not in skip:
            binary = find_llama_server()
            if binary is None:
                notes.append(f"server-np{args.parallel} skipped: no llama-server binary under "
                             f"{cache_dir() / 'llama-server'} (build it with tools/build_llama_server.py)")
            else:
                results[f"server-np{args.parallel}"] = run_server(binary, model, prompts, args.max_tokens,
                                                                  args.parallel, args.threads, args.ctx_size)

    plain = results.get("plain")
    rows = ["| system | prompts | tokens | seconds | tokens/s | vs plain | same text as plain |", "|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        tps = r["tokens"] / r["seconds"] if r["seconds"] > 0 else 0.0
        ratio = f"{tps / (plain['tokens'] / plain['seconds']):.2f}x" if plain and plain["seconds"] > 0 else "-"
        same = sum(a == b for a, b in zip(r["texts"], plain["texts"])) if plain else 0
        rows.append(f"| {name} | {len(prompts)} | {r['tokens']} | {r['seconds']:.2f} | {tps:.1f} | {ratio} | "
                    f"{same if plain else '-'} of {len(prompts)} |")
    table = "\n".join(rows)
    print(f"model {model.name}, {len(prompts)} prompts ({args.data}), -n {args.max_tokens}, "
          f"--parallel {args.parallel}, {args.threads} threads")
    print(table)
    for note in notes:
        print(f"note: {note}")
    if args.out is not None:
        doc = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "model": str(model),
               "prompts": [p.id for p in prompts], "args": {k: str(v) for k, v in vars(args).items()},
               "results": results, "notes": notes, "table": table}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp_out = args.out.with_suffix(".tmp")
        tmp_out.write_text(json.dumps(doc, indent=1))
        os.replace(tmp_out, args.out)


if __name__ == "__main__":
    main()
