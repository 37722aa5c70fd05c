#!/usr/bin/env python3
"""Which threading setting should sdfp-edge run llama.cpp with? Measure, don't guess.

Figures: docs/threads-and-memory.md: both thread tables (records in models/bench/threads/).

Plain llama-cpp-python `Llama` greedy generation, each run in a fresh process, under every
option x condition, order rotated per repeat:

  options     unset          llama.cpp's own default (libgomp spins ~300k iterations, then sleeps)
              PASSIVE        OMP_WAIT_POLICY=PASSIVE (what sdfp-edge once set for every process)
              spin=N         GOMP_SPINCOUNT=N (bounded spinning, then sleep)
              no-openmp      a runtime built with -DGGML_OPENMP=OFF (ggml's own thread pool),
                             given as --noomp-python (a Python whose llama_cpp is that build)
  conditions  idle           nothing else running
              busy-core      `python3 -c "while True: pass"` on the side (another program)
              two-models     a second process decoding the same model, same option, at once
                             (a chat and a server, a test and a server)

The reference is `unset` (plain llama.cpp as its users run it). OMP_WAIT_POLICY and
GOMP_SPINCOUNT are removed from the environment first; everything else is the caller's.

    .venv/bin/python tools/thread_matrix.py --model qwen2.5-coder-1.5b -n 32 --repeats 3 \\
        --noomp-python /tmp/venv-noomp/bin/python --out models/bench/threads/qwen.json

The no-OpenMP Python: `CMAKE_ARGS="-DGGML_OPENMP=OFF" .venv/bin/python tools/build_runtime.py`
(cached wheel, path printed), then `python3 -m venv /tmp/venv-noomp` and
`/tmp/venv-noomp/bin/pip install numpy typing-extensions diskcache jinja2` and
`/tmp/venv-noomp/bin/pip install --no-deps <that wheel>`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

OMP_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")

# one greedy generation, timed inside the process: load, prefill (first token), decode
MEASURE = r"""
import json, sys, time
t0 = time.perf_counter()
import llama_cpp
path, n, threads, loop = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "loop"
llm = llama_cpp.Llama(model_path=path, n_ctx=1024, n_threads=threads, n_threads_batch=threads, verbose=False)
t_load = time.perf_counter() - t0
prompt = llm.tokenize(b"Write a short story about a lighthouse keeper who finds a message in a bottle.")
while True:
    llm.reset()
    t1 = time.perf_counter()
    times = []
    for tok in llm.generate(prompt, temp=0.0, repeat_penalty=1.0):
        times.append(time.perf_counter())
        if len(times) >= n:
            break
    if not loop:
        break
decode_ms = (times[-1] - times[0]) / (len(times) - 1) * 1e3
print(json.dumps({"load_s": t_load, "first_token_s": times[0] - t1, "decode_ms": decode_ms,
                  "total_s": time.perf_counter() - t0}))
"""


def option_envs(spins: list[int], noomp_python: str | None) -> dict[str, tuple[str, dict[str, str]]]:
    """name -> (python, environment additions)."""
    out = {"unset": (sys.executable, {}), "PASSIVE": (sys.executable, {"OMP_WAIT_POLICY": "PASSIVE"})}
    for n in spins:
        out[f"spin={n}"] = (sys.executable, {"GOMP_SPINCOUNT": str(n)})
    if noomp_python:
        out["no-openmp"] = (noomp_python, {})
    return out


def run_once(python: str, env: dict[str, str], model: str, n: int, threads: int, condition: str) -> dict:
    side: subprocess.Popen | None = None
    if condition == "busy-core":
        side = subprocess.Popen([sys.executable, "-c", "while True: pass"], env=env)
    elif condition == "two-models":
        side = subprocess.Popen([python, "-c", MEASURE, model, str(n), str(threads), "loop"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(3.0)  # let it load and start decoding
    try:
        out = subprocess.run([python, "-c", MEASURE, model, str(n), str(threads), "once"], env=env,
                             capture_output=True, text=True, check=True, timeout=900)
        return json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        if side is not None:
            side.kill()
            side.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="qwen2.5-coder-1.5b", help="GGUF path or catalogue name")
    ap.add_argument("-n", type=int, default=64, help="tokens per generation")
    ap.add_argument("-t", "--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--spins", default="10000,100000", help="GOMP_SPINCOUNT values to try")
    ap.add_argument("--conditions", default="idle,busy-core,two-models")
    ap.add_argument("--noomp-python", default=None, help="a Python whose llama_cpp is a -DGGML_OPENMP=OFF build")
    ap.add_argument("--out", type=Path, default=None, help="write the result document (JSON) here")
    args = ap.parse_args()

    from sdfp_edge.models import resolve_model

    model = str(resolve_model(args.model))
    base = {k: v for k, v in os.environ.items() if k not in OMP_VARS}
    options = option_envs([int(s) for s in args.spins.split(",") if s], args.noomp_python)
    conditions = args.conditions.split(",")
    names = list(options)
    runs: list[dict] = []
    for r in range(args.repeats):
        for cond in conditions:
            order = names[r % len(names):] + names[: r % len(names)]
            for name in order:
                python, extra = options[name]
                res = run_once(python, {**base, **extra}, model, args.n, args.threads, cond)
                res.update(option=name, condition=cond, repeat=r)
                runs.append(res)
                print(f"{cond:>10} {name:>12}: {res['decode_ms']:7.1f} ms/token, "
                      f"{res['total_s']:5.1f} s end to end", file=sys.stderr)

    table: dict[str, dict[str, dict[str, float]]] = {}
    for cond in conditions:
        ref = statistics.median(x["decode_ms"] for x in runs if x["condition"] == cond and x["option"] == "unset")
        for name in names:
            ms = [x["decode_ms"] for x in runs if x["condition"] == cond and x["option"] == name]
            table.setdefault(cond, {})[name] = {"median_ms": statistics.median(ms), "min_ms": min(ms),
                                                "max_ms": max(ms), "vs_unset": ref / statistics.median(ms)}
    print(f"\nms/token, median of {args.repeats} (min-max); speed relative to unset (plain llama.cpp)")
    print("| condition | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for cond in conditions:
        cells = [f"{t['median_ms']:.1f} ({t['min_ms']:.0f}-{t['max_ms']:.0f}) x{t['vs_unset']:.2f}"
                 for t in table[cond].values()]
        print(f"| {cond} | " + " | ".join(cells) + " |")
    if args.out:
        doc = {"created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
               "command": " ".join(sys.argv), "machine": platform.platform(), "cpus": os.cpu_count(),
               "model": model, "tokens": args.n, "threads": args.threads, "table": table, "runs": runs}
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=1) + "\n")
        os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
