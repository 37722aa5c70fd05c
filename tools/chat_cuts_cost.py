#!/usr/bin/env python3
"""What Model.chat_cuts costs `serve --parallel` per admission: a chat seen for the first time,
and its next turn (two messages more), as the conversation grows.

Figures: the chat_cuts docstring in sdfp_edge/api.py.

    .venv/bin/python tools/chat_cuts_cost.py --model qwen2.5-coder-1.5b --messages 8,16,32

Each chat is a system prompt and user/assistant turns of HumanEval prompts (400 characters
each), ending with a user message. chat_cuts runs on the server's decode thread, between two
steps of every stream, so its time delays all of them. Not timed in tests.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from sdfp_edge.api import Model
from sdfp_edge.bench.data import load_humaneval


def chat(n: int, texts: list[str]) -> list[dict[str, Any]]:
    msgs = [{"role": "system", "content": "You are a helpful coding assistant."}]
    for i in range(n - 1):
        msgs.append({"role": "user" if i % 2 == 0 else "assistant", "content": texts[i % len(texts)][:400]})
    return msgs if msgs[-1]["role"] == "user" else [*msgs, {"role": "user", "content": "Go on."}]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--messages", default="8,16,32", help="chat lengths (messages), comma-separated")
    a = ap.parse_args()
    texts = [p.text for p in load_humaneval()]
    with Model(a.model, n_ctx=0, n_threads=1, cost_cache=False) as m:
        for n in (int(x) for x in a.messages.split(",")):
            first = chat(n, texts[n:])  # texts no other length shares: nothing kept from before
            nxt = [*first, {"role": "assistant", "content": texts[0][:400]}, {"role": "user", "content": "Why?"}]
            times = []
            for msgs in (first, nxt):
                prompt = m.tokenize_chat(msgs)
                t0 = time.perf_counter()
                cuts = m.chat_cuts(msgs, prompt)
                times.append((time.perf_counter() - t0, len(prompt), len(cuts)))
            (t1, n1, c1), (t2, n2, c2) = times
            print(f"{len(first)} messages, {n1} tokens: {1e3 * t1:.1f} ms ({c1} cuts); "
                  f"next turn, {len(nxt)} messages, {n2} tokens: {1e3 * t2:.1f} ms ({c2} cuts)", flush=True)


if __name__ == "__main__":
    main()
