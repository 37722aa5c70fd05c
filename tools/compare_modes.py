#!/usr/bin/env python3
"""Paired end-to-end tokens/s of sdfp-edge's modes and of the peers against plain llama.cpp, per prompt.

Figures: docs/results.md, 'auto against plain decoding, per prompt': the per-prompt ratios to `off`
with the A/A control (tables in models/bench/compare-modes/).

    .venv/bin/python tools/compare_modes.py --model smollm2-135m --repeats 5
    .venv/bin/python tools/compare_modes.py --modes llama-cpp,off,auto,llama-server,llama-server-ngram-simple

Each mode and each peer runs in its own process with your environment as it is (the
bench's machinery, sdfp_edge/bench/runner.py); every prompt is run by every system,
--repeats times, the order rotated from round to round, one process computing at a time.
The ratio to plain llama.cpp (`llama-cpp`, llama-cpp-python's `Llama`) is taken per prompt
and round, end-to-end (the first round carries each process's warm-up), and its median
per prompt is reported with min-max; `x off` is the same against our own plain decoding.
`off-again` is a second `off` process, the A/A control: it shows how far identical work
moves on this machine. The llama-server systems need `python tools/build_llama_server.py`
once (or --build-peers). The full side-by-side benchmark on MT-Bench and HumanEval is
`sdfp-edge bench`.
"""

from __future__ import annotations

import argparse
import inspect
import statistics
import sys
import textwrap
from typing import Any

from sdfp_edge.bench import report, runner
from sdfp_edge.bench.data import Prompt
from sdfp_edge.bench.systems import BASE, KNOWN, OFF
from sdfp_edge.errors import SdfpError

PROMPTS = {
    "copy-list": "Copy this list exactly, one item per line: apples, pears, plums, cherries, grapes, "
                 "lemons, limes, oranges, peaches, apricots.",
    "rename-var": "Rename the variable `x` to `total` in this function and show the whole function:\n"
                  "def accumulate(values):\n    x = 0\n    for v in values:\n        if v > 0:\n"
                  "            x = x + v\n        else:\n            x = x - v\n    return x\n",
    "extract": "From the text below, list every person's name and city as 'name - city'.\n"
               "Alice Martin moved from Lyon to Paris in 2019. Bob Chen lives in Toronto. "
               "Carla Diaz works in Madrid, and her brother Dan Diaz works in Seville.",
    "explain": "Explain in a short paragraph why the sky is blue.",
    "poem": "Write a short poem about the sea at night.",
    "code": "Write a Python function that returns the n-th Fibonacci number iteratively.",
    # a 40-line method whose edited copy is the answer (the text is this Python's stdlib source)
    "edit-function": "Rename the variable `chunk` to `piece` in this method and show the whole method:\n"
                     "```python\n" + textwrap.dedent(inspect.getsource(textwrap.TextWrapper._handle_long_word))
                     + "```",
}


def _x(spread: dict[str, Any] | None) -> str:
    return "–" if spread is None else f"{spread['median']:.3f}"


def _f(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}"


def table(result: dict[str, Any]) -> list[str]:
    """One row per (prompt, system) from the result document, then each system's spread over prompts."""
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in result["runs"]:
        runs.setdefault((r["prompt_id"], r["system"]), []).append(r)
    lines = [f"| prompt | system | tokens | tok/s | x {BASE} (median) | x {BASE} (each run) | x off | accepted | "
             f"tokens/verify | same ids as {BASE} |", "|---|---|---|---|---|---|---|---|---|---|"]
    per_system: dict[str, list[float]] = {}
    base_runs = {(r["prompt_id"], r["repeat"]): r for r in result["runs"] if r["system"] == BASE}
    order = {s["name"]: i for i, s in enumerate(result["systems"])}
    prompts = result["config"]["categories"]  # one category per prompt here
    rows = sorted((r for r in result["summary"] if r["category"] != "all"),
                  key=lambda r: (prompts.index(r["category"]), order[r["system"]]))
    for row in rows:
        name, prompt = row["system"], row["category"]
        mine = runs[(prompt, name)]
        each = [r["end_to_end_rate"] / base_runs[(prompt, r["repeat"])]["end_to_end_rate"] for r in mine]
        vs_base, vs_off = row["vs"].get(BASE), row["vs"].get(OFF)
        if vs_base:
            per_system.setdefault(name, []).append(vs_base["end_to_end"]["median"])
        tps = row["end_to_end_tokens_per_second"]
        lines.append(
            f"| {prompt} | {name} | {mine[-1]['tokens']} | {tps['median']:.1f} | "
            f"{'1 (reference)' if name == BASE else _x(vs_base and vs_base['end_to_end'])} | "
            f"{', '.join(f'{x:.3f}' for x in each)} | {'1' if name == OFF else _x(vs_off and vs_off['end_to_end'])} | "
            f"{_f(row['acceptance'])} | {_f(row['tokens_per_verify'])} | "
            f"{'–' if row['same_output'] is None else row['same_output'] == 1.0} |")
    lines.append("")
    for name, xs in per_system.items():
        lines.append(f"{name}: median x{statistics.median(xs):.3f}, min x{min(xs):.3f}, max x{max(xs):.3f} "
                     f"over {len(xs)} prompts (end-to-end, against {BASE})")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--skip-layers", default=None, help="comma-separated; default: the GGUF's sdfp metadata")
    ap.add_argument("--draft-model", default=None, help="for the draft-model and llama-server-draft systems")
    ap.add_argument("--modes", default="llama-cpp,off,off-again,auto,lookup",
                    help=f"systems to run (llama-cpp and off are always added); any of {', '.join(KNOWN)}")
    ap.add_argument("--prompts", default=",".join(PROMPTS), help="comma-separated names of the prompts to run")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3, help="rounds over every (prompt, system); the median ratio is reported")
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--draft-max", type=int, default=4)
    ap.add_argument("--build-peers", action="store_true", help="build llama-server first if it is not cached")
    ap.add_argument("--out", default=None, help="write bench.json, bench.md and bench.png of the run here")
    args = ap.parse_args()

    unknown = [p for p in args.prompts.split(",") if p not in PROMPTS]
    if unknown:
        sys.exit(f"error: unknown prompt(s) {', '.join(unknown)}; choose from {', '.join(PROMPTS)}")
    prompts = [Prompt(id=name, category=name, text=PROMPTS[name]) for name in args.prompts.split(",")]
    cfg = runner.BenchConfig(
        model=args.model, threads=args.threads, n_ctx=2048, seed=args.seed, max_tokens=args.max_tokens,
        temperature=args.temperature, repeats=args.repeats, systems=args.modes.split(","),
        skip_layers=[int(x) for x in args.skip_layers.split(",")] if args.skip_layers else None,
        draft_model=args.draft_model, k_max=args.draft_max, build_peers=args.build_peers, data=[],
        command=" ".join(["tools/compare_modes.py", *sys.argv[1:]]),
    )
    try:
        result = runner.run(prompts, cfg)
    except SdfpError as e:
        sys.exit(f"error: {e}")
    m, mach = result["model"], result["machine"]
    print(f"# {result['created']} {mach['cpu']}, model {m['model']}, threads {mach['threads']}, "
          f"{args.repeats} repeats, {result['elapsed_s']:.0f} s; `{cfg.command}`")
    print("\n".join(table(result)))
    cm = result["cost_models"].get("auto") or {}
    if cm.get("V"):
        v = {n: round(x, 2) for n, x in cm["V"].items()}
        c = {d: round(x, 2) for d, x in cm.get("c", {}).items()}
        print(f"auto's cost model: one token {cm.get('t_token_ms', 0):.1f} ms, V(n) {v}, c {c}")
    if args.out:
        paths = report.write(result, args.out)
        print("wrote " + ", ".join(str(p) for p in paths.values()), file=sys.stderr)


if __name__ == "__main__":
    main()
