#!/usr/bin/env python3
"""Decode speed of identical `off` processes by the order they were started in.

Figures: docs/results.md, 'How the bench measures' (speed by start order) and
docs/threads-and-memory.md, 'Huge pages' (A, B, C, then D); docs/bench-method.md, 'Qwen2.5-Coder-1.5B
on a Xeon VM's flat curve' (`--against-llama-cpp`).

    .venv/bin/python tools/start_order_speed.py --model qwen2.5-coder-1.5b --rounds 3

Starts processes A, B, C one after another (the bench's own workers, sdfp_edge/bench/
processes.py), all alive at once, one computing at a time, and times the same greedy
request in each, round-robin. Then closes A, starts D (which gets the memory A freed) and
times B, C, D again. On the project's 2-vCPU VM the first process started, and D, decode
slowest: why the bench starts sdfp-edge's systems first and plain llama.cpp last
(systems.start_order).

`--against-llama-cpp` instead times an `off` process beside the bench's plain llama.cpp
process (`llama-cpp`), started in one order and then in the other: whether a gap between the
two in a bench is their code or the order they were started in.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from sdfp_edge.runtime.backend import default_threads
from sdfp_edge.bench.processes import WorkerProcess
from sdfp_edge.bench.protocol import LoadConfig, Request, SystemSpec
from sdfp_edge.bench.stats import decode_window
from sdfp_edge.bench.systems import Setup, spec_for
from sdfp_edge.models import resolve_model

PROMPT = "Write a short story about a robot who learns to paint."


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--against-llama-cpp", action="store_true",
                    help="off and llama-cpp, each order of starting them in turn")
    args = ap.parse_args()
    load = LoadConfig(model=str(resolve_model(args.model)), n_ctx=4096, threads=args.threads or default_threads(),
                      n_gpu_layers=None, k_max=4, threshold=0.8, cost_cache=False)
    log_dir = Path(tempfile.mkdtemp(prefix="start-order-"))

    def start(name: str) -> WorkerProcess:
        if name == "llama-cpp":  # the bench's own spec (a peer needs nothing of the setup)
            return WorkerProcess(spec_for(name, Setup((), "", False, 0, None, None, "", 0)), load, log_dir)
        return WorkerProcess(SystemSpec(name, "sdfp", "sdfp", "plain decoding", {"mode": "off"}), load, log_dir)

    procs: dict[str, WorkerProcess] = {}

    def measure(title: str) -> None:
        ids = procs[next(n for n in procs if n != "llama-cpp")].tokenize_chat([{"role": "user", "content": PROMPT}])
        rates: dict[str, list[float]] = {name: [] for name in procs}
        for _ in range(args.rounds):
            for name, proc in procs.items():
                trace = proc.run(Request(ids=ids, max_tokens=args.max_tokens, temperature=0.0, seed=0))
                n, seconds = decode_window(trace.first_cycle, trace.times)
                rates[name].append(n / seconds)
        medians = ", ".join(f"{name} {statistics.median(r):.2f}" for name, r in rates.items())
        print(f"{title}: decode tok/s, median of {args.rounds}: {medians}", flush=True)

    try:
        if args.against_llama_cpp:
            for order in (("off", "llama-cpp"), ("llama-cpp", "off")):
                for name in order:
                    procs[name] = start(name)
                measure(f"started {' then '.join(order)}")
                for name in order:
                    procs.pop(name).close()
            return
        procs.update((name, start(name)) for name in "ABC")
        measure("started A, B, C in this order")
        procs.pop("A").close()
        procs["D"] = start("D")
        measure("closed A, then started D")
    finally:
        for proc in procs.values():
            proc.close()


if __name__ == "__main__":
    main()
