#!/usr/bin/env python3
"""How much of what prompt lookup could buy does auto take? A replay without timing noise.

Figures: docs/prompt-lookup.md, 'A replay without timing noise': the replay table and the
`--lookup-max 48` figures (records in models/bench/replay/); docs/bench-method.md, 'The replay's
bound': code, edits and multi-turn chats (`--generate MODEL --data humaneval,humaneval-edit,multiturn`);
'Qwen2.5-Coder-1.5B on a Xeon VM's flat curve': the Xeon curve of 2026-12-06 and what `--set` buys;
'A Zen 5 VM': both models on that VM's curves, and the any-occurrence oracle.

    .venv/bin/python tools/lookup_replay.py --answers ANSWERS.json \\
        --verify-cost models/bench/verify-cost/qwen2.5-coder-1.5b.json [--lookup-max 32] [--out R.md]

Why: on this 2-vCPU VM one bench run's A/A spread is 0.84-1.20x per prompt, so a change to
the controller that is worth 5% cannot be seen in a timed run, and whether a target such
as "HumanEval >= 1.5x" is reachable at all cannot be read from one. Greedy acceptance is
only whether a draft matches the model's own greedy answer, so it needs no model here:
given the model's greedy answers (`--answers`; `--generate MODEL` writes them first:
tools/compare_modes.py's prompts, `--limit` MT-Bench prompts per category and
`--humaneval-limit` HumanEval ones) and a measured verify-cost curve V(n)
(tools/verify_cost.py), this replays

- `auto`: the real SpeculativeDecoder and Controller with the prompt-lookup drafter, on a
  scripted backend whose logits are the answer's next token, learning V(n) from the verifies
  it makes (each verify of n tokens "takes" V(n) x t1): a fresh process per answer (a
  one-shot `generate`), one process through all answers in turn (a bench process, a
  server), and one that knows the curve from the start (a persisted cost cache);
- `oracle`: the cheapest way through each answer with the same drafter's proposals and
  perfect foresight (dynamic programming over positions): no policy drafting from prompt
  lookup can do better on this machine;
- `oracle, any occurrence`: the same with, at each position, the best of every earlier
  occurrence of the last token instead of the drafter's one proposal: how much better
  proposals (another occurrence, several verified together) could buy at most;
- `calibrated`: the same proposals judged by a policy that knows, for every match length
  (and whether the match's earlier occurrences agreed), how many of a draft these very answers
  keep: the in-sample distribution, not this answer's outcome. It drafts the k with the most
  expected tokens per verify time, as auto does. What auto could reach with perfect statistics
  of the features it has; the distance from there to `oracle` is foresight no such policy has;
- `ngram-simple`: llama-server's policy in the pinned llama.cpp (common/ngram-map.cpp with
  common/common.h's defaults): draft when the last 12 tokens occurred before and 12 or more
  tokens followed them, up to 48 tokens, else decode one token;
- `ngram-mod`: llama-server's ngram-mod (common/speculative.cpp, common_ngram_mod, defaults
  n_match 24, n_max 64, n_min 48): a table from every 24-gram seen to the token after it,
  kept across the requests of one server (so across the answers, in order, as the bench
  sends them to one process), drafting the chain of its lookups when it reaches 48 tokens.

`--set NAME=VALUE` replays with one of the controller's constants changed (DECAY, PRIOR_WEIGHT,
EXPLORE, TRUSTED_MATCH): what a policy change would buy, weighed before the code is edited.

Each figure is answer tokens per t1 of verify time: the decode-rate speedup over plain
decoding, leaving out the prefill and the drafter's own time (lookup costs no model step).
A projection from a measured curve, not a measurement: the bench measures.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import random
import statistics
import sys
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from sdfp_edge.runtime import controller as controller_module
from sdfp_edge.runtime.backend import common_prefix_len
from sdfp_edge.runtime.controller import CostModel
from sdfp_edge.runtime.drafters import PromptLookupDrafter
from sdfp_edge.runtime.drafters import prompt_lookup as prompt_lookup_module
from sdfp_edge.runtime.drafters.prompt_lookup import LONG_MATCH
from sdfp_edge.runtime.engine import LOOKUP_MAX, SpeculativeDecoder

# llama-server's ngram-simple in the pinned source: common/common.h's defaults
NGRAM_SIMPLE_N, NGRAM_SIMPLE_M = 12, 48
ONE_SHOT, PROCESS, WARM = "auto, one-shot", "auto", "auto, V known"
ANY_ORACLE = "oracle, any occurrence"


class Curve:
    """V(n) in units of one token's decode, from a verify_cost.py record; linear beyond it."""

    def __init__(self, rows: Sequence[dict[str, Any]]) -> None:
        self.v = {int(r["n"]): float(r["V"]) for r in rows}
        self.sizes = sorted(self.v)
        if 1 not in self.v or len(self.sizes) < 2:
            raise SystemExit("the verify-cost record needs V(1) and at least one more size")

    def __call__(self, n: int) -> float:
        if n in self.v:
            return self.v[n]
        lo = max((s for s in self.sizes if s < n), default=1)
        hi = min((s for s in self.sizes if s > n), default=None)
        if hi is None:  # beyond the record: the slope of its last two sizes
            a, b = self.sizes[-2:]
            return self.v[b] + (n - b) * (self.v[b] - self.v[a]) / (b - a)
        return self.v[lo] + (n - lo) * (self.v[hi] - self.v[lo]) / (hi - lo)


class ScriptedBackend:
    """Stands in for LlamaBackend: each row's logits put the script's next token first (the
    script: the current prompt and its answer), and each decode adds its true cost, V(n),
    to `spent`."""

    can_rollback = True  # its KV is a list: any suffix can be cut

    def __init__(self, n_vocab: int, curve: Curve) -> None:
        self.n_vocab, self.n_ctx, self.bos_token = n_vocab, 0, 0
        self.curve = curve
        self.script: list[int] = []
        self.kv_tokens: list[int] = []
        self.spent = 0.0  # verify time in t1 units (the prefill is left out)

    def start(self, prompt: Sequence[int], answer: Sequence[int]) -> None:
        """A new request, prefilled from an empty cache as the bench does."""
        self.script, self.kv_tokens, self.spent = [*prompt, *answer], [], 0.0
        self.n_ctx = len(self.script) + 128

    @property
    def n_past(self) -> int:
        return len(self.kv_tokens)

    def decode(self, tokens: Sequence[int], *, logits: str = "all") -> npt.NDArray[np.float32]:
        start = self.n_past
        self.kv_tokens.extend(tokens)
        self.spent += self.curve(len(tokens))
        rows = np.zeros((len(tokens), self.n_vocab), dtype=np.float32)
        for i in range(len(tokens)):
            nxt = start + i + 1  # the position this row predicts
            rows[i, self.script[nxt] if nxt < len(self.script) else 0] = 1.0
        return rows if logits == "all" else rows[-1:]

    def truncate(self, n_past: int) -> None:
        del self.kv_tokens[n_past:]

    def prefill(self, prompt: Sequence[int]) -> tuple[int, npt.NDArray[np.float32]]:
        """The prefill is left out of `spent`; its first token is charged as one plain step,
        as every policy gets it alike."""
        keep = min(common_prefix_len(self.kv_tokens, prompt), len(prompt) - 1)
        self.truncate(keep)
        spent = self.spent
        row = self.decode(prompt[keep:], logits="last")[-1]
        self.spent = spent + self.curve(1)
        return keep, row

    def set_skip(self, layers: object) -> None:
        pass

    def is_eog(self, token: int) -> bool:
        return False  # an answer ends at max_tokens (stream_tokens leaves the end token out)


class Replayer:
    """auto's engine on a scripted backend. One Replayer is one process: what its controller
    learns (V(n), acceptance) carries from one answer to the next, as in a bench process
    or a server. `known`: the whole curve is known from the start (a persisted cost cache)."""

    def __init__(self, curve: Curve, *, n_vocab: int, lookup_max: int, prefill_per_token: float,
                 known: bool = False) -> None:
        self.backend = ScriptedBackend(n_vocab, curve)
        self.decoder = SpeculativeDecoder(self.backend, [PromptLookupDrafter()], mode="auto",  # type: ignore[arg-type]
                                          lookup_max=lookup_max)
        cost = self.decoder.controller.cost
        if known:
            for n in range(1, lookup_max + 2):
                cost.t_verify[n], cost.samples[n] = curve(n), 3
        # the controller learns each size's time from the verifies it makes, as a process
        # does, but sees the curve's time instead of this machine's microseconds
        cost.observe_verify = lambda n, seconds: CostModel.observe_verify(cost, n, curve(n))  # type: ignore[method-assign]
        cost.observe_batch = lambda n, seconds: CostModel.observe_batch(cost, n, n * prefill_per_token)  # type: ignore[method-assign]

    def run(self, prompt: list[int], answer: list[int]) -> tuple[float, list[int]]:
        """(verify cost in t1 units, the tokens auto emitted)."""
        self.backend.start(prompt, answer)
        out = list(self.decoder.generate(prompt, max_tokens=len(answer)))
        return self.backend.spent, out


def kept(draft: Sequence[int], answer: Sequence[int]) -> int:
    """How many of the drafts a greedy verify keeps: the prefix that equals the answer."""
    n = 0
    for d, g in zip(draft, answer):
        if d != g:
            break
        n += 1
    return n


Feature = tuple[bool, int]  # (the match's earlier occurrences agreed, its length up to LONG_MATCH)


def proposals(prompt: list[int], answer: list[int], lookup_max: int) -> list[tuple[list[int], int, Feature]]:
    """At each answer position, prompt lookup's proposal, how many of it the answer keeps, and
    what the drafter knew of it beforehand (`calibrated` groups by it)."""
    drafter = PromptLookupDrafter()
    out = []
    for i in range(len(answer)):
        room = len(answer) - i - 1
        p = drafter.propose([*prompt, *answer[:i]], min(room, lookup_max)) if room > 0 else None
        draft = p.tokens.tolist() if p is not None else []
        feature = (not p.source.endswith("/mixed"), min(p.match, LONG_MATCH)) if p is not None and p.k else (True, 0)
        out.append((draft, kept(draft, answer[i:]), feature))
    return out


def kept_counts(all_props: Sequence[Sequence[tuple[list[int], int, Feature]]]) -> dict[Feature, list[int]]:
    """For each feature, how many proposals had each number of drafts kept (index = kept)."""
    counts: dict[Feature, list[int]] = defaultdict(list)
    for props in all_props:
        for draft, n_kept, feature in props:
            if draft:
                c = counts[feature]
                c.extend([0] * (n_kept + 1 - len(c)))
                c[n_kept] += 1
    return counts


def replay_calibrated(props: list[tuple[list[int], int, Feature]], counts: dict[Feature, list[int]],
                      curve: Curve) -> float:
    """Verify cost of the policy that drafts, at each position it reaches, the k with the most
    expected tokens per verify time, the expectation taken from `counts` (kept_counts of the
    answers replayed), plain decoding when no k beats one token per V(1)."""
    spent, i = 0.0, 0
    while i < len(props):
        draft, n_kept, feature = props[i]
        k = 0
        if draft:
            c = counts[feature]
            total, best, expected = sum(c), 1.0 / curve(1), 1.0
            at_least = total  # proposals that kept at least j drafts
            for j in range(1, len(draft) + 1):
                at_least -= c[j - 1] if j - 1 < len(c) else 0
                expected += at_least / total
                if expected / curve(j + 1) > best:
                    best, k = expected / curve(j + 1), j
        spent += curve(k + 1)
        i += min(k, n_kept) + 1
    return spent


def replay_oracle(kept_at: Sequence[int], curve: Curve) -> float:
    """The least verify cost through the answer with perfect foresight, given how many drafts
    the proposal at each position would have kept: there plain decoding (V(1), one token) or
    drafting j <= kept tokens (V(j+1), j+1 tokens); drafting past what is kept only costs more."""
    n = len(kept_at)
    best = [0.0] * (n + 1)
    for i in range(n - 1, -1, -1):
        options = [curve(1) + best[i + 1]]
        for j in range(1, min(kept_at[i], n - i - 1) + 1):
            options.append(curve(j + 1) + best[i + j + 1])
        best[i] = min(options)
    return best[0]


def kept_any_occurrence(prompt: list[int], answer: list[int], lookup_max: int) -> list[int]:
    """At each answer position, the most drafts any earlier occurrence of the last token would
    have had kept (the text after it, up to lookup_max): what a drafter that always picked
    the best place to copy from could offer. `oracle, any occurrence` bounds what choosing
    among a match's occurrences (latest, longest, several verified together) could buy."""
    text = list(prompt)
    ends: dict[int, list[int]] = defaultdict(list)  # token -> every index just after it, in text[:-1]
    for e in range(1, len(text)):
        ends[text[e - 1]].append(e)
    out = []
    for i in range(len(answer)):
        room = min(len(answer) - i - 1, lookup_max)
        out.append(max((kept(text[e : e + room], answer[i:]) for e in ends[text[-1]]), default=0) if room > 0 else 0)
        text.append(answer[i])
        ends[text[-2]].append(len(text) - 1)
    return out


def replay_ngram_simple(prompt: list[int], answer: list[int], curve: Curve,
                        size_n: int = NGRAM_SIMPLE_N, size_m: int = NGRAM_SIMPLE_M) -> float:
    """llama-server's ngram-simple (common/ngram-map.cpp, common_ngram_simple_draft): the
    continuation of the latest earlier occurrence of the last size_n tokens, drafted whole,
    at most size_m tokens and none unless size_n are there to copy; else one token."""
    text, spent, i = list(prompt), 0.0, 0
    while i < len(answer):
        room = len(answer) - i - 1
        hist = text[:-1]  # llama.cpp's `tokens`; text[-1] is the token just sampled
        draft: list[int] = []
        if room > 0 and len(hist) > size_n + size_m + 1:
            key = text[-size_n:]
            for j in range(len(hist) - size_n - 1, 0, -1):  # position 0 means "no match" there
                if hist[j : j + size_n] == key:
                    copy = min(size_m, len(hist) - (j + size_n))
                    if copy >= size_n:
                        draft = hist[j + size_n : j + size_n + min(copy, room)]
                    break
        n_kept = kept(draft, answer[i:])
        spent += curve(len(draft) + 1)
        text.extend(answer[i : i + n_kept + 1])
        i += n_kept + 1
    return spent


class NgramMod:
    """llama-server's ngram-mod in the pinned llama.cpp (common/speculative.cpp,
    common_speculative_impl_ngram_mod; common/common.h's defaults). One table serves every
    request of a server process: what one answer added drafts the next."""

    def __init__(self, n_match: int = 24, n_max: int = 64, n_min: int = 48) -> None:
        self.n, self.n_max, self.n_min = n_match, n_max, n_min
        self.table: dict[tuple[int, ...], int] = {}

    def _add(self, tokens: Sequence[int], i: int) -> None:
        self.table[tuple(tokens[i : i + self.n])] = tokens[i + self.n]

    def replay(self, prompt: list[int], answer: list[int], curve: Curve) -> float:
        """Verify cost of `answer` (begin(): the prompt's n-grams; draft_one(): new n-grams
        added in chunks of 32, then the chain of lookups from the last n tokens, kept only when
        it reaches n_min; accept(): five drafts in a row with under a quarter kept reset it)."""
        n, text, spent, i = self.n, list(prompt), 0.0, 0
        for j in range(len(text) - n):
            self._add(text, j)
        i_last, n_low = max(0, len(text) - n), 0
        while i < len(answer):
            room = len(answer) - i - 1
            hist = text[:-1]  # llama.cpp's `prompt`; text[-1] is id_last, the token just sampled
            draft: list[int] = []
            if room > 0 and len(hist) >= n:
                if i_last + 32 < len(hist):
                    for j in range(i_last, len(hist) - n):
                        self._add(hist, j)
                    i_last = len(hist) - n
                chain = [*hist[len(hist) - n + 1 :], text[-1]]
                for _ in range(self.n_max):
                    nxt = self.table.get(tuple(chain[-n:]))
                    if nxt is None:
                        break
                    chain.append(nxt)
                    draft.append(nxt)
                draft = draft[:room] if len(draft) >= self.n_min else []
            n_kept = kept(draft, answer[i:])
            spent += curve(len(draft) + 1)
            if draft:
                n_low = n_low + 1 if n_kept / len(draft) < 0.25 else 0
                if n_low >= 5:
                    self.table, n_low, i_last = {}, 0, 0
            text.extend(answer[i : i + n_kept + 1])
            i += n_kept + 1
        return spent


def generate_answers(model: str, *, limit: int, humaneval_limit: int, seed: int, max_tokens: int,
                     data_sets: Sequence[str] = ()) -> dict[str, Any]:
    """The model's greedy answers (sdfp-edge's plain decoding), each prompt from an empty cache.

    With `data_sets` (the bench's --data names), the bench's own selection instead (`limit` per
    category, `seed`), and every turn of a multi-turn chat is an answer of its own: its prompt
    holds the earlier turns with the model's answers to them, as the bench sends them."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from compare_modes import PROMPTS

    from sdfp_edge.api import Model
    from sdfp_edge.bench import data

    if data_sets:
        selected = data.load(tuple(data_sets), limit=limit, seed=seed)
    else:
        selected = data.load(("mtbench",), limit=limit, seed=seed) + data.load(("humaneval",), limit=humaneval_limit,
                                                                              seed=seed)
    out = []
    with Model(model, n_ctx=4096) as m:
        chats = [] if data_sets else [(f"copy/{name}", "copy", [{"role": "user", "content": text}], None)
                                      for name, text in PROMPTS.items()]
        chats += [(p.id, p.category, None, p) for p in selected]
        for pid, category, messages, prompt_obj in chats:
            texts: list[str] = []
            for turn in range(1 + len(prompt_obj.turns) if prompt_obj else 1):
                msgs = prompt_obj.chat(texts) if prompt_obj else messages
                prompt = m.tokenize_chat(msgs)
                m.backend.reset()
                answer = [t for ch in m.stream_tokens(prompt, max_tokens=max_tokens, mode="off", temperature=0)
                          for t in ch.tokens]
                texts.append(m.backend.detokenize([t for t in answer if not m.backend.is_eog(t)]))
                tid = pid if turn == 0 else f"{pid}#turn{turn + 1}"
                out.append({"id": tid, "category": category, "prompt": prompt, "answer": answer})
                print(f"{tid}: {len(prompt)} prompt tokens, {len(answer)} answer tokens", file=sys.stderr, flush=True)
        name = m.path.name
    return {"model": name, "max_tokens": max_tokens, "data": list(data_sets), "answers": out}


# --set: constants the controller and the drafter read when they run (not captured as defaults or
# imported by name elsewhere), so a replay can weigh a policy change before anyone edits the code
SETTABLE = {"DECAY": controller_module, "PRIOR_WEIGHT": controller_module, "EXPLORE": controller_module,
            "TRUSTED_MATCH": prompt_lookup_module}


@contextlib.contextmanager
def constants_set(assignments: Sequence[str]) -> Iterator[None]:
    """Replay with some of SETTABLE changed (NAME=VALUE each), restored afterwards."""
    saved: list[tuple[Any, str, Any]] = []
    try:
        for a in assignments:
            name, sep, value = a.partition("=")
            module = SETTABLE.get(name)
            if not sep or module is None:
                raise SystemExit(f"--set {a}: expected NAME=VALUE, NAME one of {', '.join(SETTABLE)}")
            old = getattr(module, name)
            try:
                new = type(old)(value)
            except ValueError:
                raise SystemExit(f"--set {a}: {name} takes {type(old).__name__} values (now {old})") from None
            saved.append((module, name, old))
            setattr(module, name, new)
        yield
    finally:
        for module, name, old in reversed(saved):
            setattr(module, name, old)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--answers", type=Path, required=True,
                    help="JSON: {model, answers: [{id, category, prompt, answer}] or [[prompt, answer]]}")
    ap.add_argument("--verify-cost", type=Path, required=True, help="a tools/verify_cost.py record")
    ap.add_argument("--lookup-max", type=int, default=LOOKUP_MAX)
    ap.add_argument("--generate", metavar="MODEL", help="write --answers first: MODEL's greedy answers")
    ap.add_argument("--limit", type=int, default=3, help="with --generate: MT-Bench prompts per category")
    ap.add_argument("--humaneval-limit", type=int, default=12, help="with --generate: HumanEval prompts")
    ap.add_argument("--seed", type=int, default=0, help="with --generate: which prompts (bench's --seed)")
    ap.add_argument("--data", default="", help="with --generate: the bench's data sets instead (e.g. "
                    "humaneval,humaneval-edit,multiturn), --limit per category, every chat turn an answer")
    ap.add_argument("--max-tokens", type=int, default=128, help="with --generate: tokens per answer")
    ap.add_argument("--order-seed", type=int, default=None,
                    help="replay the answers in a shuffled order (what one process learns depends on it)")
    ap.add_argument("--out", type=Path, default=None, help="also write the table here (markdown)")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                    help=f"replay with a policy constant changed (repeatable): {', '.join(SETTABLE)}")
    args = ap.parse_args(argv)
    if args.generate:
        answers = generate_answers(args.generate, limit=args.limit, humaneval_limit=args.humaneval_limit,
                                   seed=args.seed, max_tokens=args.max_tokens,
                                   data_sets=[x for x in args.data.split(",") if x])
        tmp = args.answers.with_name(args.answers.name + ".tmp")
        tmp.write_text(json.dumps(answers) + "\n")
        tmp.replace(args.answers)
    with constants_set(args.set):
        _replay(args, argv)


def _replay(args: argparse.Namespace, argv: Sequence[str] | None) -> None:
    """Every policy over every answer, and the tables (printed, and written to --out)."""
    record = json.loads(args.verify_cost.read_text())
    curve = Curve(record["rows"])
    d = json.loads(args.answers.read_text())
    runs = [a if isinstance(a, dict) else {"id": f"#{i}", "category": "-", "prompt": a[0], "answer": a[1]}
            for i, a in enumerate(d["answers"])]
    runs = [r for r in runs if len(r["answer"]) >= 2]
    if args.order_seed is not None:
        random.Random(args.order_seed).shuffle(runs)
    # dense ids: a logits row as wide as the vocabulary (151,936 on Qwen) would make the
    # replay slow, and only equality of ids matters to greedy acceptance and to lookup
    dense = {t: i for i, t in enumerate(sorted({t for r in runs for t in [*r["prompt"], *r["answer"]]}))}
    runs = [{**r, "prompt": [dense[t] for t in r["prompt"]], "answer": [dense[t] for t in r["answer"]]} for r in runs]
    n_vocab = len(dense)
    big = max(s for s in curve.sizes)
    prefill_per_token = curve(big) / big  # the largest size's per-token cost stands in for a prompt's

    def replayer(known: bool = False) -> Replayer:
        return Replayer(curve, n_vocab=n_vocab, lookup_max=args.lookup_max, prefill_per_token=prefill_per_token,
                        known=known)
    process, warm = replayer(), replayer(known=True)
    mod = NgramMod()  # one server through all answers, as the bench runs it
    props = [proposals(list(r["prompt"]), list(r["answer"]), args.lookup_max) for r in runs]
    counts = kept_counts(props)
    rows = []
    by_cat: dict[str, list[dict[str, float]]] = defaultdict(list)
    for r, prop in zip(runs, props):
        prompt, answer = list(r["prompt"]), list(r["answer"])
        n = len(answer)
        row = {}
        for name, rep in ((ONE_SHOT, replayer()), (PROCESS, process), (WARM, warm)):
            spent, emitted = rep.run(prompt, answer)
            if emitted != answer:
                raise SystemExit(f"{r['id']}: the replay emitted another text than the answer (a bug in the replay)")
            row[name] = n / spent
        row["oracle"] = n / replay_oracle([k for _, k, _ in prop], curve)
        row[ANY_ORACLE] = n / replay_oracle(kept_any_occurrence(prompt, answer, args.lookup_max), curve)
        row["calibrated"] = n / replay_calibrated(prop, counts, curve)
        row["ngram-simple"] = n / replay_ngram_simple(prompt, answer, curve)
        row["ngram-mod"] = n / mod.replay(prompt, answer, curve)
        rows.append((r["id"], r["category"], n, row))
        by_cat[r["category"]].append(row)

    systems = [ONE_SHOT, PROCESS, WARM, "oracle", ANY_ORACLE, "calibrated", "ngram-simple", "ngram-mod"]
    measured = f"{record.get('cpu', '?')}, {record.get('threads', '?')} threads, {record.get('created', '?')[:10]}"
    lines = [f"# lookup replay, {dt.date.today()}: {d.get('model', '?')}, {len(runs)} greedy answers; "
             f"V(n) from {args.verify_cost} ({measured})",
             f"`tools/lookup_replay.py {' '.join(sys.argv[1:] if argv is None else argv)}`", "",
             "Answer tokens per t1 of verify time (x plain decoding, decode only), median (min-max) per category:", "",
             f"{ONE_SHOT}: a fresh process per answer; {PROCESS}: one process through all answers in turn "
             f"(a bench process, a server), cold at the first; {WARM}: the same with V(n) known from the start "
             "(a persisted cost cache).", "",
             "| category | prompts | " + " | ".join(systems) + f" | {PROCESS} / oracle |",
             "|---|---|" + "---|" * (len(systems) + 1)]

    def cell(xs: list[float]) -> str:
        return f"{statistics.median(xs):.2f} ({min(xs):.2f}-{max(xs):.2f})"
    for cat in [*sorted(by_cat), "all"]:
        group = [x for g in by_cat.values() for x in g] if cat == "all" else by_cat[cat]
        ratio = [x[PROCESS] / x["oracle"] for x in group]
        lines.append(f"| {cat} | {len(group)} | " + " | ".join(cell([x[s] for x in group]) for s in systems)
                     + f" | {cell(ratio)} |")
    # pooled: every answer token of the category over all its verify time (long answers weigh more)
    pooled = defaultdict(lambda: defaultdict(float))
    for _, cat, n, row in rows:
        for c in (cat, "all"):
            pooled[c]["tokens"] += n
            for s_ in systems:
                pooled[c][s_] += n / row[s_]
    lines += ["", "Pooled, all answer tokens of a category over all its verify time:", "",
              "| category | " + " | ".join(systems) + " |", "|---|" + "---|" * len(systems)]
    lines += [f"| {cat} | " + " | ".join(f"{pooled[cat]['tokens'] / pooled[cat][s_]:.3f}" for s_ in systems) + " |"
              for cat in [*sorted(by_cat), "all"]]
    lines += ["", "| prompt | category | tokens | " + " | ".join(systems) + " |", "|---|---|---|" + "---|" * len(systems)]
    lines += [f"| {pid} | {cat} | {n} | " + " | ".join(f"{row[s]:.2f}" for s in systems) + " |"
              for pid, cat, n, row in rows]
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.out is not None:
        tmp = args.out.with_name(args.out.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(args.out)


if __name__ == "__main__":
    main()
