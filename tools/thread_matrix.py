#!/usr/bin/env python3
"""Which threading setting should sdfp-edge run llama.cpp with? Measure, don't guess.

Figures: docs/threads-and-memory.md: the thread tables (records in models/bench/threads/).

Plain llama-cpp-python `Llama` greedy generation, each run in a fresh process, under every
option x condition, order rotated per repeat. Each run reports decoding (ms/token) and the
prompt's prefill (ms/token of the prompt): a prefill's operations are large, and a thread
that finishes its share early waits at every barrier, so a setting can suit one and not
the other (--prompt-tokens makes the prompt long enough to show it):

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
    .venv/bin/python tools/thread_matrix.py --model qwen2.5-coder-1.5b -n 32 --prompt-tokens 396 \\
        --repeats 3 --spins 3000,30000 --out models/bench/threads/qwen2.5-coder-1.5b-zen4-prefill.json

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

from sdfp_edge.bench.stats import MIN_CALL_RUNS, TOO_FEW, bootstrap_median

OMP_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")

# one greedy generation, timed inside the process: load, prefill (first token), decode
MEASURE = r"""
import json, sys, time
t0 = time.perf_counter()
import llama_cpp
path, n, threads, loop = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "loop"
prompt_tokens = int(sys.argv[5])
llm = llama_cpp.Llama(model_path=path, n_ctx=max(1024, prompt_tokens + n + 64), n_threads=threads,
                      n_threads_batch=threads, n_batch=max(512, prompt_tokens), verbose=False)
t_load = time.perf_counter() - t0
prompt = llm.tokenize(b"Write a short story about a lighthouse keeper who finds a message in a bottle.")
if prompt_tokens:  # the story's request repeated to length, one batch: the cost is the shape
    prompt = (prompt * (prompt_tokens // len(prompt) + 1))[:prompt_tokens]
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
                  "prompt_tokens": len(prompt), "prefill_ms": (times[0] - t1) / len(prompt) * 1e3,
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


def run_once(python: str, env: dict[str, str], model: str, n: int, threads: int, condition: str,
             prompt_tokens: int) -> dict:
    side: subprocess.Popen | None = None
    if condition == "busy-core":
        side = subprocess.Popen([sys.executable, "-c", "while True: pass"], env=env)
    elif condition == "two-models":
        side = subprocess.Popen([python, "-c", MEASURE, model, str(n), str(threads), "loop", "0"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(3.0)  # let it load and start decoding
    try:
        out = subprocess.run([python, "-c", MEASURE, model, str(n), str(threads), "once", str(prompt_tokens)],
                             env=env, capture_output=True, text=True, check=True, timeout=900)
        return json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        if side is not None:
            side.kill()
            side.wait()


def summarize(runs: list[dict], conditions: list[str], names: list[str], key: str) -> dict:
    """condition -> option -> median, min and max of `key`; its speed relative to unset in the
    same repeat (unset's ms / the option's), median with a bootstrap 95% interval over the
    repeats (bench/stats.py; a difference is called only where the interval excludes 1.0)."""
    table: dict[str, dict[str, dict]] = {}
    for cond in conditions:
        ref = {x["repeat"]: x[key] for x in runs if x["condition"] == cond and x["option"] == "unset"}
        for name in names:
            mine = {x["repeat"]: x[key] for x in runs if x["condition"] == cond and x["option"] == name}
            ms = list(mine.values())
            iv = bootstrap_median({(r, 0): ref[r] / v for r, v in mine.items() if r in ref})
            table.setdefault(cond, {})[name] = {"median_ms": statistics.median(ms), "min_ms": min(ms),
                                                "max_ms": max(ms), "vs_unset": iv.median, "vs_unset_lo": iv.lo,
                                                "vs_unset_hi": iv.hi, "call": iv.call}
    return table


def print_table(table: dict, names: list[str]) -> None:
    print("| condition | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for cond, row in table.items():
        cells = [f"{t['median_ms']:.1f} ({t['min_ms']:.0f}-{t['max_ms']:.0f}) x{t['vs_unset']:.2f}"
                 + (f" [{t['vs_unset_lo']:.2f}, {t['vs_unset_hi']:.2f}]" if t["call"] != TOO_FEW else "")
                 for t in row.values()]
        print(f"| {cond} | " + " | ".join(cells) + " |")


def report(runs: list[dict], conditions: list[str], names: list[str]) -> tuple[dict, dict]:
    """Print and return the decoding and prefill tables (records before --prompt-tokens: no prefill)."""
    tables = (summarize(runs, conditions, names, "decode_ms"),
              summarize(runs, conditions, names, "prefill_ms") if "prefill_ms" in runs[0] else {})
    repeats = len({x["repeat"] for x in runs})
    for what, t in zip(("decoding", f"prefill of {runs[0].get('prompt_tokens')} tokens"), tables):
        if not t:
            continue
        print(f"\n{what}: ms/token, median of {repeats} (min-max); speed relative to unset (plain llama.cpp)"
              f" in the same repeat, median [95% interval, from {MIN_CALL_RUNS} repeats]")
        print_table(t, names)
    return tables


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="qwen2.5-coder-1.5b", help="GGUF path or catalogue name")
    ap.add_argument("-n", type=int, default=64, help="tokens per generation")
    ap.add_argument("--prompt-tokens", type=int, default=0,
                    help="a prompt of this many tokens, prefilled in one batch (default: the 18-token request)")
    ap.add_argument("-t", "--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--spins", default="10000,100000", help="GOMP_SPINCOUNT values to try")
    ap.add_argument("--conditions", default="idle,busy-core,two-models")
    ap.add_argument("--noomp-python", default=None, help="a Python whose llama_cpp is a -DGGML_OPENMP=OFF build")
    ap.add_argument("--out", type=Path, default=None, help="write the result document (JSON) here")
    ap.add_argument("--table", type=Path, default=None, help="print the tables of a result document and exit")
    args = ap.parse_args()
    if args.table:
        doc = json.loads(args.table.read_text())
        runs = doc["runs"]
        report(runs, list(dict.fromkeys(x["condition"] for x in runs)),
               list(dict.fromkeys(x["option"] for x in runs)))
        return

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
                res = run_once(python, {**base, **extra}, model, args.n, args.threads, cond, args.prompt_tokens)
                res.update(option=name, condition=cond, repeat=r)
                runs.append(res)
                print(f"{cond:>10} {name:>12}: {res['decode_ms']:7.1f} ms/token, "
                      f"prefill {res['prefill_ms']:6.1f} ms/token, "
                      f"{res['total_s']:5.1f} s end to end", file=sys.stderr)

    table, prefill = report(runs, conditions, names)
    if args.out:
        doc = {"created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
               "command": " ".join(sys.argv), "machine": platform.platform(), "cpus": os.cpu_count(),
               "model": model, "tokens": args.n, "threads": args.threads, "table": table,
               "prefill_table": prefill, "runs": runs}
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=1) + "\n")
        os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
