#!/usr/bin/env python3
"""How often prompt-lookup drafts would be accepted, by source (match length, agreement).

Figures: docs/prompt-lookup.md: first-draft acceptance per lookup source and the `--history`
figures (tables in models/bench/lookup/).

    .venv/bin/python tools/lookup_acceptance.py [--model NAME] [--limit 2] [--max-tokens 160] [--k 4]
                                                [--history] [--answers FILE]

Why: the controller keeps acceptance statistics per lookup source (sdfp_edge.runtime.drafters.
prompt_lookup.match_source); this replays the drafter over the model's own greedy answers
(tools/compare_modes.py's prompts and `--limit` prompts per MT-Bench/HumanEval category)
and prints, per source, how often a proposal's first draft, and how many of its first k
(--k), match what the model actually generated next. Greedy acceptance is exactly that match, so
no verify pass is needed and the figures do not depend on timing.

`--history` asks whether n-grams that outlive one request would find more free drafts
(issue 11; llama.cpp's `ngram-cache` keeps such a cache across runs): the prompts are
answered in turn, and where the current text offers no match as long, the earlier
answers' n-grams propose instead (source "history:..."), as a server that remembered
its earlier answers could.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_modes import PROMPTS

from sdfp_edge.api import Model
from sdfp_edge.bench import data
from sdfp_edge.runtime.drafters import PromptLookupDrafter
from sdfp_edge.runtime.drafters.prompt_lookup import match_source

K = 4


class AnswerHistory:
    """Earlier answers' n-grams: each n-gram's latest occurrence and its continuation."""

    def __init__(self, max_ngram: int = 8) -> None:
        self.max_ngram = max_ngram
        self._seen: dict[tuple[int, ...], tuple[list[int], int]] = {}

    def add(self, answer: list[int]) -> None:
        for end in range(1, len(answer)):
            for n in range(1, min(self.max_ngram, end) + 1):
                self._seen[tuple(answer[end - n : end])] = (answer, end)

    def propose(self, tokens: list[int], k: int, longer_than: int) -> tuple[list[int], int]:
        """The continuation of the longest matched suffix longer than `longer_than` tokens."""
        for n in range(min(self.max_ngram, len(tokens)), longer_than, -1):
            hit = self._seen.get(tuple(tokens[len(tokens) - n :]))
            if hit is not None:
                answer, end = hit
                return answer[end : end + k], n
        return [], 0


def answers(args: argparse.Namespace) -> tuple[str, list[tuple[list[int], list[int]]]]:
    """(model file name, [(prompt, greedy answer)]), cached in --answers: replays are cheap."""
    cache = Path(args.answers) if args.answers else None
    if cache is not None and cache.exists():
        d = json.loads(cache.read_text())
        return d["model"], [(p, o) for p, o in d["answers"]]
    chats = [[{"role": "user", "content": p}] for p in PROMPTS.values()]
    chats += [p.messages for p in data.load(("mtbench", "humaneval", "humaneval-edit"), limit=args.limit, seed=0)]
    out = []
    with Model(args.model, n_ctx=2048) as m:
        for msgs in chats:
            prompt = m.tokenize_chat(msgs)
            m.backend.reset()
            out.append((prompt, [t for ch in m.stream_tokens(prompt, max_tokens=args.max_tokens, mode="off", temperature=0)
                                 for t in ch.tokens]))
        name = m.path.name
    if cache is not None:
        cache.write_text(json.dumps({"model": name, "max_tokens": args.max_tokens, "answers": out}) + "\n")
    return name, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--limit", type=int, default=2, help="bench prompts per category")
    ap.add_argument("--max-tokens", type=int, default=160)
    ap.add_argument("--k", type=int, default=K, help="drafted tokens per proposal")
    ap.add_argument("--history", action="store_true",
                    help="also propose from the earlier prompts' answers where the text has no match as long")
    ap.add_argument("--answers", help="JSON file caching the greedy answers (written if absent)")
    args = ap.parse_args()

    name, runs = answers(args)
    k = args.k
    # source -> [proposals, first draft accepted, drafts accepted of the first k]
    tally: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    history = AnswerHistory()
    for prompt, out in runs:
        drafter = PromptLookupDrafter()
        for t in range(1, len(out)):
            text = prompt + out[:t]
            p = drafter.propose(text, k)
            draft, source = p.tokens.tolist(), p.source
            if args.history:
                h, n = history.propose(text, k, p.match)
                if h:
                    draft, source = h, "history:" + match_source(n).split(":")[1]
            if not draft:
                continue
            run = 0
            for d, g in zip(draft, out[t : t + k]):
                if d != g:
                    break
                run += 1
            row = tally[source]
            row[0] += 1
            row[1] += run > 0
            row[2] += run
        history.add(out)
    print(f"# {time.strftime('%Y-%m-%d')} {platform.node()}, {name}, {len(runs)} chat prompts, "
          f"greedy answers of up to {args.max_tokens} tokens")
    print(f"`{' '.join(['tools/lookup_acceptance.py', *sys.argv[1:]])}`\n")
    print(f"| source | proposals | first draft accepted | mean accepted of the first {k} (or of what the answer has left) |")
    print("|---|---|---|---|")

    def order(s: str) -> tuple[bool, bool, int]:
        return s.startswith("history"), s.endswith("/mixed"), int(s.split(":")[1].split("+")[0].split("/")[0])
    for source in sorted(tally, key=order):
        n, first, acc = tally[source]
        print(f"| {source} | {n} | {first / n:.2f} | {acc / n:.2f} |")


if __name__ == "__main__":
    main()
