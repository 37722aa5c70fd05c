#!/usr/bin/env python3
"""Paired tokens/s of speculative modes against plain decoding, on one model, in one process.

    .venv/bin/python tools/compare_modes.py --model smollm2-135m --skip-layers 4,9,14,19,24

Every prompt is run in every mode back to back (greedy, same context, the KV cache of the
prompt dropped between runs), and the ratio to `off` is taken per prompt: the figure the
engine issue asks for ("auto >= 0.97x of off on every prompt"). The full side-by-side
benchmark on MT-Bench and HumanEval is `sdfp-edge bench`.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
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
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--skip-layers", default=None, help="comma-separated; default: the GGUF's sdfp metadata")
    ap.add_argument("--modes", default="off,auto,lookup,layerskip")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--draft-max", type=int, default=4)
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args()

    skip = [int(x) for x in args.skip_layers.split(",")] if args.skip_layers else None
    modes = args.modes.split(",")
    m = Model(args.model, n_ctx=2048, n_threads=args.threads, skip_layers=skip, k_max=args.draft_max)
    rows = []
    with m:
        m.chat([{"role": "user", "content": "Hi"}], max_tokens=4, mode="off")  # load pages, warm caches
        for name, prompt in PROMPTS.items():
            msgs = [{"role": "user", "content": prompt}]
            ids = m.tokenize_chat(msgs)
            res = {}
            for mode in modes:
                m.backend.reset()
                c = m.stream_tokens(ids, max_tokens=args.max_tokens, mode=mode)
                toks = [t for ch in c for t in ch.tokens]
                s = dict(m.last_stats)
                s["ids"] = toks
                res[mode] = s
            base = res["off"]
            for mode in modes:
                s = res[mode]
                rows.append({
                    "prompt": name, "mode": mode, "tokens": s["tokens"],
                    "tok_s": round(s["tokens_per_second"], 2),
                    "ratio_vs_off": round(s["tokens_per_second"] / base["tokens_per_second"], 3),
                    "acceptance": round(s["acceptance_rate"], 3),
                    "tokens_per_verify": round(s["tokens_per_verify"], 2),
                    "same_ids_as_off": s["ids"] == base["ids"],
                    "decisions": s["decisions"],
                })
        cost = m.decoder.controller.cost.relative()
    print(f"# {time.strftime('%Y-%m-%d')} {platform.node()} {platform.processor() or platform.machine()}, "
          f"model {m.path.name}, skip {list(m.skip_layers)}, threads {m.backend.n_threads}")
    print("| prompt | mode | tokens | tok/s | x off | accepted | tokens/verify | same ids |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['prompt']} | {r['mode']} | {r['tokens']} | {r['tok_s']} | {r['ratio_vs_off']} | "
              f"{r['acceptance']} | {r['tokens_per_verify']} | {r['same_ids_as_off']} |")
    for mode in modes:
        ratios = [r["ratio_vs_off"] for r in rows if r["mode"] == mode]
        print(f"{mode}: median x{statistics.median(ratios):.3f}, min x{min(ratios):.3f}, max x{max(ratios):.3f}")
    v = {n: round(x, 2) for n, x in cost.get("V", {}).items()}
    c = {d: round(x, 2) for d, x in cost.get("c", {}).items()}
    print(f"cost model: one token {cost.get('t_token_ms', 0):.1f} ms, V(n) {v}, c {c}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "cost": cost}, f, indent=1, default=str)


if __name__ == "__main__":
    main()
