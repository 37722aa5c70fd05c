"""Batch throughput on Ray against one process: `generate --input` end to end, wall clock.

    flock -x /tmp/sdfp-cpu.lock python tools/ray_throughput.py --model PATH [--repeats 2]

Runs, REPEATS times each and alternating: one process with 2 threads (--parallel 4), and
--ray with 2 actors of 1 thread (--parallel 4 each) on a local Ray cluster started by the
command. 16 distinct prompts, 64 new tokens each, greedy. The figure is completion tokens
over the command's wall time (model loads and Ray's start included: what a user waits for),
and the tool's own tok/s line (from the first answer request: Ray's includes actor start).

Figures: docs/models-and-ray.md (Ray against one process on this machine).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROMPTS = ["Once upon a time", "def fib(n):", "The capital of France is", "Water boils at",
           "My favourite colour is", "import numpy as np\n", "In 1492,", "The recipe needs",
           "Explain photosynthesis in one paragraph.", "Write a haiku about the sea.",
           "List three prime numbers and explain why they are prime.", "class Stack:\n",
           "The best way to learn a language is", "SELECT name FROM users WHERE",
           "A short story about a robot who", "Translate to French: good morning, my friend."]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=64)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in.jsonl"
        src.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
        env = {**os.environ, "SDFP_EDGE_CACHE": str(Path(tmp) / "cache")}
        common = ["-m", args.model, "-c", "256", "-n", str(args.max_tokens), "--temperature", "0",
                  "--parallel", "4", "--input", str(src)]
        configs = {"1 process x 2 threads": ["-t", "2"],
                   "Ray: 2 actors x 1 thread": ["-t", "1", "--ray", "--ray-actors", "2"]}
        print(f"# {dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')}, {platform.node()}, "
              f"{os.cpu_count()} CPUs, {len(PROMPTS)} prompts x {args.max_tokens} tokens, greedy")
        for r in range(args.repeats):
            for name, extra in configs.items():
                out = Path(tmp) / f"out-{r}-{len(extra)}.jsonl"
                cmd = [sys.executable, "-c", "from sdfp_edge.cli.main import main; main()", "generate",
                       *common, *extra, "--output", str(out)]
                t0 = time.perf_counter()
                p = subprocess.run(cmd, capture_output=True, text=True, env=env)
                wall = time.perf_counter() - t0
                if p.returncode != 0:
                    sys.exit(f"{name} failed:\n{p.stderr[-2000:]}")
                answers = [json.loads(x) for x in out.read_text().splitlines()]
                tokens = sum(a["usage"]["completion_tokens"] for a in answers)
                own = next((ln for ln in p.stderr.splitlines() if ln.startswith("[") and "tok/s" in ln), "")
                print(f"{name:<26} repeat {r + 1}: {tokens} tokens in {wall:6.1f} s wall = "
                      f"{tokens / wall:5.1f} tok/s end to end; tool: {own}", flush=True)


if __name__ == "__main__":
    main()
