#!/usr/bin/env python3
"""How often prompt-lookup drafts would be accepted, by source (match length, agreement).

    .venv/bin/python tools/lookup_acceptance.py [--model NAME] [--limit 2] [--max-tokens 160]

Why: the controller keeps acceptance statistics per lookup source (sdfp_edge.drafters.
prompt_lookup.match_source); this replays the drafter over the model's own greedy answers
(tools/compare_modes.py's prompts and `--limit` prompts per MT-Bench/HumanEval category)
and prints, per source, how often a proposal's first draft, and how many of its first 4,
match what the model actually generated next. Greedy acceptance is exactly that match, so
no verify pass is needed and the figures do not depend on timing.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_modes import PROMPTS

from sdfp_edge.api import Model
from sdfp_edge.bench import data
from sdfp_edge.drafters import PromptLookupDrafter

K = 4


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--limit", type=int, default=2, help="bench prompts per category")
    ap.add_argument("--max-tokens", type=int, default=160)
    args = ap.parse_args()

    chats = [[{"role": "user", "content": p}] for p in PROMPTS.values()]
    chats += [p.messages for p in data.load(limit=args.limit, seed=0)]
    # source -> [proposals, first draft accepted, drafts accepted of the first K]
    tally: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    with Model(args.model, n_ctx=2048) as m:
        for msgs in chats:
            prompt = m.tokenize_chat(msgs)
            m.backend.reset()
            out = [t for ch in m.stream_tokens(prompt, max_tokens=args.max_tokens, mode="off") for t in ch.tokens]
            drafter = PromptLookupDrafter()
            for t in range(1, len(out)):
                p = drafter.propose(prompt + out[:t], K)
                if not p.k:
                    continue
                truth = out[t : t + K]
                run = 0
                for d, g in zip(p.tokens.tolist(), truth):
                    if d != g:
                        break
                    run += 1
                row = tally[p.source]
                row[0] += 1
                row[1] += run > 0
                row[2] += run
        name = m.path.name
    print(f"# {time.strftime('%Y-%m-%d')} {platform.node()}, {name}, {len(chats)} chat prompts, "
          f"greedy answers of up to {args.max_tokens} tokens")
    print(f"| source | proposals | first draft accepted | mean accepted of the first {K} |")
    print("|---|---|---|---|")
    for source in sorted(tally, key=lambda s: (s.endswith("/mixed"), int(s.split(":")[1].split("+")[0].split("/")[0]))):
        n, first, acc = tally[source]
        print(f"| {source} | {n} | {first / n:.2f} | {acc / n:.2f} |")


if __name__ == "__main__":
    main()
