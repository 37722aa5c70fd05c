#!/usr/bin/env python3
"""Paired tokens/s of speculative modes against plain decoding, on one model, in one process.

    .venv/bin/python tools/compare_modes.py --model smollm2-135m --skip-layers 4,9,14,19,24

Every prompt is run in every mode back to back, --repeats times with the order of the
modes rotated (greedy; the prompt's KV cache dropped before each run); the ratio to `off`
is taken per prompt and run, and its median per prompt is the figure the engine issue asks
for ("auto >= 0.97x of off on every prompt"): on this VM a single run's tokens/s moves by
10% or more between back-to-back runs. The full side-by-side
benchmark on MT-Bench and HumanEval is `sdfp-edge bench`.
"""

from __future__ import annotations

import argparse
import inspect
import json
import platform
import statistics
import textwrap
import time

from sdfp_edge.api import Model

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


def engine_mode(mode: str) -> str:
    return "off" if mode == "off-again" else mode


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--skip-layers", default=None, help="comma-separated; default: the GGUF's sdfp metadata")
    ap.add_argument("--modes", default="off,off-again,auto,lookup,layerskip",
                    help="'off-again' is a second model instance decoding plainly: the A/A control "
                         "that shows how far two identical runs differ on this machine")
    ap.add_argument("--prompts", default=",".join(PROMPTS), help="comma-separated names of the prompts to run")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3, help="runs of every (prompt, mode); the median ratio is reported")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--draft-max", type=int, default=4)
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args()

    skip = [int(x) for x in args.skip_layers.split(",")] if args.skip_layers else None
    modes = args.modes.split(",")
    if "off" not in modes:
        modes.insert(0, "off")
    # One Model per mode: each controller learns only from its own runs, as in a chat
    # session or a server; the GGUF is memory-mapped, so the weights are shared.
    ms = {mode: Model(args.model, n_ctx=2048, n_threads=args.threads, skip_layers=skip, k_max=args.draft_max)
          for mode in modes}
    for mode, m in ms.items():
        m.chat([{"role": "user", "content": "Hi"}], max_tokens=4, mode=engine_mode(mode))  # page in, warm up, calibrate
    rows = []
    t0 = time.perf_counter()
    for name in args.prompts.split(","):
        prompt = PROMPTS[name]
        ids = ms["off"].tokenize_chat([{"role": "user", "content": prompt}])
        runs: dict[str, list[dict]] = {mode: [] for mode in modes}
        for rep in range(args.repeats):
            for mode in modes[rep % len(modes):] + modes[: rep % len(modes)]:  # rotate the order
                m = ms[mode]
                m.backend.reset()
                chunks = m.stream_tokens(ids, max_tokens=args.max_tokens, mode=engine_mode(mode))
                toks = [t for ch in chunks for t in ch.tokens]
                runs[mode].append({**m.last_stats, "ids": toks})
        base = runs["off"]
        for mode in modes:
            ratios = [r["tokens_per_second"] / b["tokens_per_second"] for r, b in zip(runs[mode], base)]
            last = runs[mode][-1]
            rows.append({
                "prompt": name, "mode": mode, "tokens": last["tokens"],
                "tok_s": round(statistics.median(r["tokens_per_second"] for r in runs[mode]), 2),
                "ratio_vs_off": round(statistics.median(ratios), 3),
                "ratios": [round(x, 3) for x in ratios],
                "acceptance": round(last["acceptance_rate"], 3),
                "tokens_per_verify": round(last["tokens_per_verify"], 2),
                "same_ids_as_off": all(r["ids"] == b["ids"] for r, b in zip(runs[mode], base)),
                "decisions": last["decisions"],
            })
    wall = time.perf_counter() - t0
    cost = ms["auto"].decoder.controller.cost.relative() if "auto" in ms else {}
    for m in ms.values():
        m.close()
    print(f"# {time.strftime('%Y-%m-%d')} {platform.node()} {platform.processor() or platform.machine()}, "
          f"model {ms['off'].path.name}, skip {list(ms['off'].skip_layers)}, threads {ms['off'].backend.n_threads}, "
          f"{args.repeats} repeats, {wall:.0f} s")
    print("| prompt | mode | tokens | tok/s | x off (median) | x off (each run) | accepted | tokens/verify | same ids |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['prompt']} | {r['mode']} | {r['tokens']} | {r['tok_s']} | {r['ratio_vs_off']} | "
              f"{', '.join(map(str, r['ratios']))} | {r['acceptance']} | {r['tokens_per_verify']} | {r['same_ids_as_off']} |")
    for mode in modes:
        ratios = [r["ratio_vs_off"] for r in rows if r["mode"] == mode]
        print(f"{mode}: median x{statistics.median(ratios):.3f}, min x{min(ratios):.3f}, max x{max(ratios):.3f}")
    v = {n: round(x, 2) for n, x in cost.get("V", {}).items()}
    c = {d: round(x, 2) for d, x in cost.get("c", {}).items()}
    print(f"auto's cost model: one token {cost.get('t_token_ms', 0):.1f} ms, V(n) {v}, c {c}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "cost": cost}, f, indent=1, default=str)


if __name__ == "__main__":
    main()
