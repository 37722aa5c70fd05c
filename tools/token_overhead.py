#!/usr/bin/env python3
"""Time per generated token outside llama_decode: plain llama.cpp against `off` and `auto`.

Figures: docs/bench-method.md ("Python around each token").

    .venv/bin/python tools/token_overhead.py --model smollm2-135m --systems llama-cpp,off,auto --rounds 3

Each system runs in a process of its own, one after the other, `--rounds` times in turn, opened
by the bench's own worker classes (sdfp_edge/bench/worker.py): `llama-cpp` is llama-cpp-python's
`Llama.generate` as the bench's peer runs it (llama.cpp's own sampler with the peer's settings,
flash attention as llama.cpp's default, its eval-counting wrapper), `off` and `auto` sdfp-edge's
decoder. Every process wraps llama_decode with a timer and generates --tokens tokens from the
same text --repeats times (the first, a warm-up, is left out); from the first token to the
last, the time inside llama_decode is "decode" and the rest, whatever the system does in
Python and C around a decode (sampling, copying logits, choosing a draft), is "other", both
per generated token. The cores must be otherwise idle: run it under the
same lock as the bench. Compare code versions by running it from each checkout.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

PROMPT = "Write a long story about a dragon who learns to paint."


def measure(system: str, model: str, tokens: int, repeats: int, temperature: float, threads: int) -> dict[str, Any]:
    import llama_cpp
    import llama_cpp.llama_cpp as bindings

    from sdfp_edge.bench.protocol import LoadConfig, SystemSpec
    from sdfp_edge.bench.systems import Setup, spec_for
    from sdfp_edge.bench.worker import LlamaCppSystem, SdfpSystem, peer_sampling
    from sdfp_edge.runtime.sampling import SamplingParams

    calls: list[tuple[float, float]] = []
    inner = bindings.llama_decode

    def timed(ctx: Any, batch: Any) -> int:
        t0 = time.perf_counter()
        rc = inner(ctx, batch)
        calls.append((t0, time.perf_counter()))
        return rc

    bindings.llama_decode = llama_cpp.llama_decode = timed  # both names the callers look up
    runs: list[list[float]] = []
    # each system opened as the bench's worker opens it (its peer's kernels and sampler settings)
    load = LoadConfig(model=model, n_ctx=4096, threads=threads, n_gpu_layers=None, k_max=4, threshold=0.8,
                      cost_cache=False)
    if system == "llama-cpp":
        peer = LlamaCppSystem(spec_for(system, Setup((), "", False, 0, None, None, "", 0)), load)
        llm = peer.llm
        ids = llm.tokenize(PROMPT.encode())
        for _ in range(repeats):
            llm.reset()
            llm.set_seed(1)
            calls.clear()
            times: list[float] = []
            gen = llm.generate(ids, repeat_penalty=1.0, **peer_sampling(temperature))
            for _tok in gen:
                times.append(time.perf_counter())
                if len(times) >= tokens:
                    break
            gen.close()
            runs.append(_split(times, calls))
        peer.close()
    else:
        sdfp = SdfpSystem(SystemSpec(system, "sdfp", "sdfp", system, {"mode": system}), load)
        m = sdfp.model
        ids = m.backend.tokenize(PROMPT)
        for _ in range(repeats):
            m.decoder.backend.reset()
            calls.clear()
            times = [time.perf_counter() for _tok in m.decoder.generate(
                ids, max_tokens=tokens, sampling=SamplingParams(temperature=temperature, seed=1))]
            runs.append(_split(times, calls))
        sdfp.close()
    kept = runs[1:]  # the first is a warm-up
    return {"system": system, "tokens": tokens, "decode_ms": [r[0] for r in kept], "other_ms": [r[1] for r in kept],
            "generated": [r[2] for r in kept]}


def _split(times: list[float], calls: list[tuple[float, float]]) -> list[float]:
    """[decode ms, other ms] per token from the first token to the last, and the token count."""
    w0, w1 = times[0], times[-1]
    inside = sum(b - a for a, b in calls if a >= w0 and b <= w1)
    n = max(len(times) - 1, 1)
    return [inside / n * 1e3, (w1 - w0 - inside) / n * 1e3, float(len(times))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m", help="a GGUF path or a catalog name (sdfp-edge models)")
    ap.add_argument("--systems", default="llama-cpp,off,auto")
    ap.add_argument("--rounds", type=int, default=3, help="processes per system, started in turn")
    ap.add_argument("--repeats", type=int, default=4, help="generations per process (the first left out)")
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None, help="write every process's figures here (JSON)")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: one system, print JSON
    args = ap.parse_args()
    if args.repeats < 2:
        ap.error("--repeats must be at least 2 (the first generation is a warm-up)")
    if args.one:
        print(json.dumps(measure(args.one, args.model, args.tokens, args.repeats, args.temperature, args.threads)))
        return
    from sdfp_edge.models import resolve_model

    model = str(resolve_model(args.model))
    systems = [s for s in args.systems.split(",") if s]
    results: list[dict[str, Any]] = []
    for _ in range(args.rounds):
        for system in systems:
            argv = [sys.executable, __file__, "--one", system, "--model", model, "--tokens", str(args.tokens),
                    "--repeats", str(args.repeats), "--temperature", str(args.temperature),
                    "--threads", str(args.threads)]
            out = subprocess.run(argv, capture_output=True, text=True, check=True)
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"{model}, {args.tokens} tokens, temperature {args.temperature}, {args.threads} threads, "
          f"{args.rounds} processes x {args.repeats - 1} generations per system")
    print("| system | decode ms/token, median (min-max) | other ms/token, median (min-max) |")
    print("|---|---|---|")
    for system in systems:
        dec = [x for r in results if r["system"] == system for x in r["decode_ms"]]
        oth = [x for r in results if r["system"] == system for x in r["other_ms"]]
        print(f"| {system} | {statistics.median(dec):.2f} ({min(dec):.2f}-{max(dec):.2f}) | "
              f"{statistics.median(oth):.3f} ({min(oth):.3f}-{max(oth):.3f}) |")
    if args.out:  # written whole, then renamed: never half a file
        from sdfp_edge.runtime.backend import cpu_name

        doc = {"created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
               "command": " ".join(sys.argv), "cpu": cpu_name(), "model": model, "runs": results}
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=1) + "\n")
        os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
