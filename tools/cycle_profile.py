#!/usr/bin/env python3
"""What `auto` does per cycle beyond `off`: one process per mode, cProfile over the same prompts.

Figures: docs/bench-method.md ("SmolLM2 at temperature 0.7": the cost of a cycle beyond `off`'s).

    .venv/bin/python tools/cycle_profile.py --model smollm2-135m --modes off,auto --categories stem,humanities

Each mode runs in a process of its own (no state shared): one warm-up chat, then the first
--prompts MT-Bench first turns of the categories, sampled at --temperature with a fixed seed,
under cProfile. It prints the wall time, the tokens, and the seconds spent in the controller
(Controller.choose) and in building the draft candidates (Engine._candidates), the Python that
`off` does not run. cProfile slows Python calls, so these seconds are upper bounds; run it with
nothing else computing.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import subprocess
import sys
import time


def profile(model: str | None, mode: str, categories: list[str], n_prompts: int, temperature: float,
            max_tokens: int, threads: int | None) -> dict[str, float]:
    from sdfp_edge.api import Model
    from sdfp_edge.bench.data import load_mtbench

    prompts = [p for p in load_mtbench() if p.category in categories][:n_prompts]
    if not prompts:
        raise SystemExit(f"no MT-Bench prompt in {categories}")
    kw = dict(temperature=temperature, seed=1, mode=mode)
    with Model(model, n_threads=threads, cost_cache=False) as m:
        m.chat(prompts[0].messages, max_tokens=32, **kw)  # warm-up: graphs, first timings
        pr, tokens = cProfile.Profile(), 0
        t0 = time.perf_counter()
        pr.enable()
        for p in prompts:
            tokens += len(m.chat(p.messages, max_tokens=max_tokens, **kw).tokens)
        pr.disable()
        wall = time.perf_counter() - t0
    stats = pstats.Stats(pr).stats  # {(file, line, name): (cc, nc, tottime, cumtime, callers)}

    def cum(module: str, name: str) -> float:  # one function: its file and name (many are called decode)
        return sum(v[3] for (path, _, fn), v in stats.items() if fn == name and path.endswith(module))

    return {"wall_s": wall, "tokens": tokens, "choose_s": cum("runtime/controller.py", "choose"),
            "candidates_s": cum("runtime/engine.py", "_candidates"), "decode_s": cum("runtime/backend.py", "decode")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--modes", default="off,auto")
    ap.add_argument("--categories", default="stem,humanities")
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: run one mode, print JSON
    args = ap.parse_args()
    cats = [c for c in args.categories.split(",") if c]
    if args.one:
        print(json.dumps(profile(args.model, args.one, cats, args.prompts, args.temperature, args.max_tokens,
                                 args.threads)))
        return
    for mode in [m for m in args.modes.split(",") if m]:
        argv = [sys.executable, __file__, "--one", mode, "--categories", args.categories, "--prompts",
                str(args.prompts), "--temperature", str(args.temperature), "--max-tokens", str(args.max_tokens)]
        argv += ["--model", args.model] if args.model else []
        argv += ["--threads", str(args.threads)] if args.threads else []
        out = subprocess.run(argv, capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        per = 1e3 / max(r["tokens"], 1)
        print(f"{mode}: {r['tokens']} tokens in {r['wall_s']:.2f} s ({per * r['wall_s']:.2f} ms/token); "
              f"decode {per * r['decode_s']:.2f} ms/token, Controller.choose {per * r['choose_s']:.3f}, "
              f"Engine._candidates {per * r['candidates_s']:.3f} ms/token", flush=True)


if __name__ == "__main__":
    main()
