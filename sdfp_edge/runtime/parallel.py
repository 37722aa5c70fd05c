"""Several sequences in one llama.cpp context, decoded together: continuous batching.

Each of N slots owns one sequence id of a context with `n_seq_max = N`. A prompt is
prefilled whole and its first token comes from that prefill's logits (as in engine.py).
Invariant between cycles, per active slot: its sequence holds every token of its text but
the last. A cycle decodes ONE llama_batch with, for every active slot, its last token
plus its drafts at that slot's positions; each slot then accepts a prefix of its drafts
(verify.py), cuts its own rejected positions (llama_memory_seq_rm on its sequence id) and
emits the accepted drafts plus the target's token. A slot whose text ends is refilled
with the next request before the next cycle. A new prompt first takes the KV of the
longest prefix that any slot already holds, up to a place where both prompts' prefills
start a batch, or where the rules of prefill_splits.py allow it inside one (its own previous
prompt, or a copy of another slot's: a shared system prompt is evaluated once), then decodes
the rest (why only there: prefill_splits.py).

Why one KV stream per sequence and not llama.cpp's unified cache: in a unified cache a
sequence's cells end up out of position order once others are freed, and the CPU
flash-attention kernel (f16 accumulation) then gives other logits: up to 0.79 apart on
SmolLM2 for the same context (measured, 2026-11-22), enough to change greedy tokens. With
a stream per sequence each prompt's output equals decoding it alone, bit for bit in the
tests, while its stream holds at most 256 positions. Past them, llama.cpp decodes a lone
token of one stream with a flash-attention path that splits the cache between threads, which
a batch holding another stream's token (or drafts) does not take: 0.54 logits apart on
SmolLM2 at 286 positions (2026-12-08), so a long text may part from decoding it alone at a
near-tie, as the single-sequence engine's verify batches may. The price of the streams:
llama.cpp splits a batch over them into equal slices (stream_batch_seconds), so one
sequence's drafts cost a pass of their own.

Two ways in: `run(requests)` (batch mode) fills the slots in order and yields results as
they finish; the server (server/slots.py) drives it step by step: `admit` a request into
the free slot whose KV gives the most of its prompt (`pick`), `step` one batch over all
active slots (each `Update` carries a slot's new text, held back while it could still be
the start of a stop string, and its result when it ends), `release` one whose client left.
The server admits with `interleave=True`: while other slots are streaming, a new prompt's
prefill goes one part per step (its batches split where prefill_splits.SplitRule allows,
so its KV is the same bit for bit) and a long prompt no longer stops every other stream for
its whole prefill; before any slot has decoded past its first token (nothing running, or a burst of
requests arriving together) it runs whole at once.
Per request: sampling, seed, stop strings, a LogitsProcessor (penalties, grammar,
logprobs), special tokens kept in the text, and a mode among PARALLEL_MODES.

Drafts are prompt lookup only: free to propose, and a layer-skip draft would need its
layer mask for the whole batch (every sequence would pay a draft step for one sequence's
draft). The controller's CostModel prices the batch: t_verify(n) is learned from cycles
decoded in one pass, and `allocate_drafts` adds drafts only where the expected tokens per
second of the whole batch rise. On a compute-bound CPU each extra token costs nearly a
token's time once the batch holds several sequences, so drafts pay less and less as N grows.
"""

from __future__ import annotations

import codecs
import functools
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from sdfp_edge.runtime.backend import LlamaBackend, common_prefix_len
from sdfp_edge.runtime.controller import Candidate, Controller, Stopwatch, probe_cap
from sdfp_edge.runtime.drafters.base import Proposal
from sdfp_edge.runtime.drafters.prompt_lookup import PromptLookupDrafter, drafts_judged_by
from sdfp_edge.runtime.engine import LOOKUP_MAX, PositionUniforms, verdict_on
from sdfp_edge.runtime.prefill_splits import reusable
from sdfp_edge.errors import ContextOverflowError, InvalidRequestError
from sdfp_edge.runtime.logits_processors import LogitsProcessor
from sdfp_edge.runtime.sampling import SamplingParams
from sdfp_edge.runtime.verify import Verdict

PARALLEL_MODES = ("auto", "lookup", "off")
# pick: a free slot is taken for the prefix it holds when that is at least this share of the
# prompt (llama-server's --slot-prompt-similarity likewise keeps a slot for its conversation)
SLOT_SIMILARITY = 0.5


@dataclass(frozen=True)
class Request:
    key: Any  # the caller's handle, returned with the result
    prompt: Sequence[int]
    max_tokens: int
    sampling: SamplingParams = SamplingParams()
    stops: Sequence[str] = ()
    # where its prefill's batches are cut besides the grid: prefill_cuts over every request of a
    # batch run, or (the server) where each message starts (Model.chat_cuts)
    cuts: frozenset[int] = frozenset()
    processor: LogitsProcessor | None = None  # penalties, DRY, mirostat, bias, grammar, logprobs
    keep_special: frozenset[int] = frozenset()  # special tokens whose text the output keeps
    mode: str | None = None  # this request's speculation mode (PARALLEL_MODES); None: the decoder's


@dataclass
class Result:
    key: Any
    text: str
    tokens: list[int]  # generated ids (a final end-of-generation token included)
    finish_reason: str  # "stop" (EOS or stop string) or "length"
    prompt_tokens: int
    reused_tokens: int  # prompt tokens whose KV a slot already held
    drafted: int = 0
    accepted: int = 0
    verifies: int = 0  # cycles that decoded this request (its first token, from the prefill, counts as one)
    t_prefill: float = 0.0  # seconds its prefill batches took (no other slot decoded during one)


@dataclass
class Update:
    """What one request got from an admission or a cycle (the streaming interface)."""

    key: Any
    text: str  # new text; held back while it could still be the start of a stop string
    tokens: list[int]  # the new tokens behind it (an end-of-generation token left out)
    result: Result | None = None  # set when the request has finished (its slot is free again)


@dataclass
class _Slot:
    """One sequence id and the request it is decoding."""

    seq_id: int
    kv: list[int] = field(default_factory=list)  # tokens at positions 0.. of this sequence's KV
    prefilled: int = 0  # kv[:prefilled] is the current prompt's prefill (the rest: generated)
    cuts: frozenset[int] = frozenset()  # where that prefill's batches were cut, beside multiples of n_batch
    req: Request | None = None
    tokens: list[int] = field(default_factory=list)  # prompt + generated
    result: Result | None = None
    lookup: PromptLookupDrafter = field(default_factory=PromptLookupDrafter)
    positions: PositionUniforms | None = None
    rng: np.random.Generator | None = None
    text_decoder: Any = None
    sent: int = 0  # text length already checked for stop strings
    out: int = 0  # text length already handed out in Updates
    used: int = 0  # when the slot last took a request (a counter): the least recent is reused first
    pending: list[tuple[int, int]] = field(default_factory=list)  # prefill parts [start, stop) still to decode


def stream_batch_seconds(seq_ids: Sequence[int], counts: Sequence[int], verify: Callable[[int], float]) -> float:
    """Seconds llama.cpp takes for a batch over per-sequence KV streams (split_equal).

    It decodes runs of consecutive sequence ids in equal slices: the first min(counts)
    tokens of every sequence of the run together, then the next slice of those that have
    more, and so on; each slice is one pass over the weights. Example: counts [1, 5, 1]
    on seq ids 0, 1, 2 cost t_verify(3) + t_verify(4).
    """
    total, run_start = 0.0, 0
    for i in range(1, len(seq_ids) + 1):
        if i == len(seq_ids) or seq_ids[i] != seq_ids[i - 1] + 1:
            run, done = sorted(counts[run_start:i]), 0
            for r, c in enumerate(run):
                if c > done:
                    total += verify((c - done) * (len(run) - r))
                    done = c
            run_start = i
    return total


def prefill_cuts(contexts: Sequence[Sequence[int]]) -> list[frozenset[int]]:
    """Per context, the positions where it parts from another one of the run.

    A prefill cut there (besides the multiples of n_batch) computes every prefix that
    the context shares with another in batches of its own, and the two compute it alike:
    below their common length both have the same cuts (a third context parts from both at
    the same place), so either may take the other's KV up to it, bit for bit (`_reusable`).
    Sorted, the contexts sharing a prefix are neighbours, and a context's common lengths
    with all others are the running minima of the neighbours' common lengths on either
    side: a chain of next-smaller values, found with a monotonic stack."""
    order = sorted(range(len(contexts)), key=lambda i: list(contexts[i]))
    lcp = [common_prefix_len(contexts[a], contexts[b]) for a, b in zip(order, order[1:])]

    def next_smaller(indices: range) -> list[int | None]:
        out: list[int | None] = [None] * len(lcp)
        stack: list[int] = []
        for k in indices:
            while stack and lcp[stack[-1]] > lcp[k]:
                out[stack.pop()] = k
            stack.append(k)
        return out

    after, before = next_smaller(range(len(lcp))), next_smaller(range(len(lcp) - 1, -1, -1))
    cuts: list[frozenset[int]] = [frozenset()] * len(contexts)
    for j, i in enumerate(order):
        found = set()
        for k, step in ((j, after), (j - 1, before)):  # the neighbours after it, before it
            k = k if 0 <= k < len(lcp) else None
            while k is not None:
                found.add(lcp[k])
                k = step[k]
        cuts[i] = frozenset(c for c in found if 0 < c <= len(contexts[i]))
    return cuts


def allocate_drafts(rates: Sequence[Sequence[float]], batch_seconds: Callable[[Sequence[int]], float], *,
                    max_batch: int, margin: float = 1.05) -> list[int]:
    """How many drafts each sequence gets so that the batch yields the most tokens per second.

    Args:
        rates: per sequence, the conditional acceptance of its drafts 1..cap.
        batch_seconds: the cost of a batch holding these many tokens per sequence.
        max_batch: the most tokens one batch may hold.
        margin: the result must beat plain decoding of every sequence by this factor.
    Returns:
        k per sequence (0: its last token only).

    Greedy: starting from one token per sequence, repeatedly apply the move that raises
    expected tokens / batch_seconds most: one sequence's k raised to a larger value, or
    every sequence's k raised to at least some value (what a batch split in equal slices
    needs). E_j(k) = 1 + sum_{m<=k} prod_{i<=m} a_i, as in the controller.
    """
    n_seq = len(rates)
    gains = [np.concatenate([[0.0], np.cumsum(np.cumprod(r))]) for r in rates]  # [cap+1]: E_j(k) - 1
    caps = [len(r) for r in rates]

    def rate(ks: list[int]) -> float:
        return sum(1.0 + g[k] for g, k in zip(gains, ks)) / batch_seconds([k + 1 for k in ks])

    ks = [0] * n_seq
    plain = best_rate = rate(ks)
    while True:
        moves = [ks[:j] + [k] + ks[j + 1:] for j in range(n_seq) for k in range(ks[j] + 1, caps[j] + 1)]
        moves += [[max(x, min(k, c)) for x, c in zip(ks, caps)] for k in range(1, max(caps, default=0) + 1)]
        best = None
        for m in moves:
            if m != ks and sum(m) + n_seq <= max_batch:
                r = rate(m)
                if r > best_rate:
                    best_rate, best = r, m
        if best is None:
            break
        ks = best
    return ks if best_rate > plain * margin else [0] * n_seq


class ParallelDecoder:
    """N sequences of one backend decoded together; requests in, results as they finish."""

    def __init__(self, backend: LlamaBackend, *, seq_ctx: int, mode: str = "auto",
                 lookup_max: int = LOOKUP_MAX, controller: Controller | None = None) -> None:
        """`seq_ctx`: the most tokens one sequence may hold (each of the backend's n_seq_max
        sequences has n_ctx / n_seq_max cells). `mode`: auto (the cost model decides), lookup
        (every available draft), off (plain decoding)."""
        if mode not in PARALLEL_MODES:
            raise InvalidRequestError(
                f"mode '{mode}' is not available with parallel sequences (choose {', '.join(PARALLEL_MODES)}: "
                "layer-skip drafts would need their layer mask for the whole batch)")
        if seq_ctx * backend.n_seq_max > backend.n_ctx:
            raise ValueError(f"{backend.n_seq_max} sequences of {seq_ctx} tokens exceed n_ctx={backend.n_ctx}")
        backend.reset()  # the slots start empty: so must every sequence of the cache
        self.backend = backend
        self.seq_ctx = seq_ctx
        # no draft can be rejected where the memory cannot be cut back (recurrent layers)
        self.mode = mode if backend.can_rollback else "off"
        self.lookup_max = lookup_max
        self.controller = controller or Controller()
        self.slots = [_Slot(i) for i in range(backend.n_seq_max)]
        self._uses = 0  # requests admitted so far (_Slot.used)
        self.generated = 0  # tokens emitted across all requests (progress reporting)

    def check(self, req: Request) -> None:
        """Refuse a request that cannot run, before it takes a slot."""
        if not req.prompt:
            raise InvalidRequestError("the prompt is empty")
        if req.max_tokens <= 0:
            raise InvalidRequestError(f"max_tokens must be > 0, got {req.max_tokens}")
        if len(req.prompt) >= self.seq_ctx:
            raise ContextOverflowError(
                f"the prompt has {len(req.prompt)} tokens but the context holds {self.seq_ctx}; "
                "shorten the prompt or raise --ctx-size")
        if req.mode is not None and req.mode not in PARALLEL_MODES:
            raise InvalidRequestError(
                f"mode '{req.mode}' is not available with parallel sequences (choose {', '.join(PARALLEL_MODES)}: "
                "layer-skip drafts would need their layer mask for the whole batch)")

    def run(self, requests: Iterable[Request]) -> Iterator[Result]:
        """Yield each request's result as soon as it finishes (not in input order)."""
        pending = iter(requests)
        exhausted = False
        while True:
            for slot in self.slots:
                while slot.req is None and not exhausted:
                    req = next(pending, None)
                    if req is None:
                        exhausted = True
                    else:
                        update = self.admit(req, slot)
                        assert update is not None  # admitted whole
                        done = update.result
                        if done is not None:  # its first token ended it: the slot takes the next
                            yield done
            if not self.active:
                return
            for update in self.step():
                if update.result is not None:
                    yield update.result

    # --- the streaming interface (the server's slots): admit, step, release -------------------
    @property
    def active(self) -> list[_Slot]:
        return [s for s in self.slots if s.req is not None]

    def pick(self, prompt: Sequence[int], cuts: frozenset[int] = frozenset()) -> _Slot | None:
        """The free slot for this prompt (prefilled with these cuts): the one whose KV gives the
        most of it, among those whose prompt shares at least SLOT_SIMILARITY of it (a chat's
        next turn finds its conversation),
        else the least recently used; None when all are busy. A smaller shared prefix (a system
        prompt) is copied from whichever slot holds it (_start), so a new conversation does not
        overwrite another's cache for it."""
        free = [s for s in self.slots if s.req is None]
        head = list(prompt)[:-1]

        def kept(s: _Slot) -> int:
            shared = min(common_prefix_len(s.kv, head), s.prefilled)
            return self._reusable(s, prompt, cuts) if shared >= SLOT_SIMILARITY * len(head) else 0

        return max(free, key=lambda s: (kept(s), -s.used), default=None)

    def admit(self, req: Request, slot: _Slot | None = None, *, interleave: bool = False) -> Update | None:
        """Prefill a request's prompt in a free slot (`pick`'s, by default) and emit its first
        token. With `interleave`, while another slot is decoding, only start it: `step` then
        prefills it a chunk at a time and its first token comes in a later step's updates
        (None here). Raises ValueError when no slot is free."""
        slot = slot if slot is not None else self.pick(req.prompt, req.cuts)
        if slot is None or slot.req is not None:
            raise ValueError("no free slot")
        self._start(slot, req)
        if interleave and self._streaming():
            return None
        return self._prefill(slot, len(slot.pending))

    def step(self) -> list[Update]:
        """One step: the next prefill chunk of the earliest admitted slot still prefilling (if
        any), then one cycle over every decoding slot; each slot's new text."""
        decoding = self._decoding()
        prefilling = [s for s in self.slots if s.pending]
        updates = []
        if prefilling:
            first = min(prefilling, key=lambda s: s.used)
            update = self._prefill(first, len(first.pending) if not decoding else 1)
            if update is not None:
                updates.append(update)
        return updates + (self._cycle(decoding) if decoding else [])

    def _decoding(self) -> list[_Slot]:
        """Active slots whose prompt is in the KV (they take part in the next cycle)."""
        return [s for s in self.slots if s.req is not None and not s.pending]

    def _streaming(self) -> bool:
        """Whether a slot has decoded since its first token. Until one has, a new prompt is
        prefilled whole (admit): requests that arrive together (a burst) are prefilled one
        after another before any stream goes on, as llama-server prefills them in one batch,
        but each gets its first token as soon as its own prefill ends. Chunking them between
        the first stream's steps would only reorder the same work: the first stream would
        carry every later prompt's prefill, the later ones would start later."""
        return any(s.result is not None and s.result.verifies > 1 for s in self._decoding())

    def release(self, key: Any) -> Result | None:
        """Stop the request `key` now (its client went away); its result so far, or None when it
        is not running. The slot keeps the KV of what was emitted."""
        for s in self.slots:
            if s.req is not None and s.req.key == key:
                result, s.req, s.result, s.pending = s.result, None, None, []
                return result
        return None

    def forget(self) -> None:
        """Drop every slot's request and KV (after a failed decode, whose KV is unknown)."""
        for s in self.slots:
            s.req, s.result, s.kv, s.prefilled, s.cuts, s.pending = None, None, [], 0, frozenset(), []
            self.backend.seq_remove(s.seq_id, 0)

    # --- a new request ---------------------------------------------------------------------
    def _start(self, slot: _Slot, req: Request) -> None:
        """Take the slot for the request: the best prefix KV any slot holds, the rest of its
        prompt as prefill chunks still to decode (`_prefill`)."""
        self.check(req)
        b = self.backend
        context = list(req.prompt)
        donor, keep = slot, self._reusable(slot, context, req.cuts)
        for other in self.slots:
            n = self._reusable(other, context, req.cuts)
            if n > keep:
                donor, keep = other, n
        if donor is slot:
            b.seq_remove(slot.seq_id, keep)
        else:
            b.seq_remove(slot.seq_id, 0)
            b.seq_copy(donor.seq_id, slot.seq_id, keep)
        self._uses += 1
        slot.used = self._uses
        slot.kv = context[:keep]
        # its batches' bounds beside n_batch's multiples: the cuts, and the prompt's end (a chat's
        # next turn, cut where this prompt ended, takes all of it)
        slot.prefilled, slot.cuts = keep, req.cuts | {len(context)}
        # the batches of a whole prefill of context[keep:], each in parts that give its KV bit for bit
        slot.pending = [part for i, j in b.prefill_batches(range(keep, len(context)), req.cuts)
                        for part in b.split_rule.parts(keep + i, keep + j)]
        slot.req = req
        slot.tokens = list(req.prompt)
        slot.result = Result(req.key, "", [], "", len(req.prompt), keep)
        slot.lookup = PromptLookupDrafter()
        slot.positions = PositionUniforms(req.sampling.seed)
        slot.rng = np.random.default_rng(req.sampling.seed)
        slot.text_decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        slot.sent = slot.out = 0

    def _prefill(self, slot: _Slot, n_chunks: int) -> Update | None:
        """Decode the slot's next n_chunks prefill parts; after the last, emit its first token
        (from the last prompt token's logits, as in engine.py)."""
        assert slot.req is not None and slot.result is not None
        req, todo = slot.req, slot.pending[:n_chunks]
        start, stop = todo[0][0], todo[-1][1]
        part = req.prompt[start:stop]
        with Stopwatch() as sw:
            last = self.backend.decode_seqs(part, range(start, stop), [slot.seq_id] * len(part), logits="last",
                                            cuts=req.cuts)
        self.controller.cost.observe_batch(len(part), sw.total)
        slot.result.t_prefill += sw.total
        slot.kv += part
        slot.prefilled = len(slot.kv)
        del slot.pending[:n_chunks]
        if slot.pending:
            return None
        first, nothing = last, Proposal.empty()  # [1, V]
        verdict = self._verdict(slot, nothing, first)
        slot.result.verifies += 1
        if req.processor is not None:
            req.processor.accept([verdict.next_token], first)
        return self._emit(slot, [verdict.next_token])

    def _reusable(self, slot: _Slot, prompt: Sequence[int], cuts: frozenset[int]) -> int:
        """How much of `prompt` (prefilled with these cuts) the slot's KV gives, bit for bit:
        prefill_splits.reusable. Exact, so a prompt's prefill does not depend on what ran before it
        (a resumed run needs this). Nothing where the memory cannot be cut back (a recurrent state
        holds no prefix)."""
        if not self.backend.can_rollback:
            return 0
        b = self.backend
        shared = min(common_prefix_len(slot.kv, prompt), slot.prefilled, len(prompt) - 1)
        return reusable(shared, cuts=cuts, end=len(prompt), held_cuts=slot.cuts, n_batch=b.n_batch,
                        rule=b.split_rule)

    # --- one cycle -------------------------------------------------------------------------
    def _room(self, slot: _Slot) -> int:
        """The most drafts the slot may have: context and max_tokens left."""
        assert slot.req is not None and slot.result is not None
        free = self.seq_ctx - len(slot.kv)
        return max(0, min(free - 1, slot.req.max_tokens - len(slot.result.tokens) - 1))

    def _mode(self, slot: _Slot) -> str:
        assert slot.req is not None
        return slot.req.mode or self.mode

    def _drafts(self, active: Sequence[_Slot]) -> list[Proposal]:
        """Each slot's drafts: none (off), all that lookup found (lookup), or as many as raise
        the batch's expected tokens per second (auto: allocate_drafts over the whole batch)."""
        modes = [self._mode(s) for s in active]
        props = [Proposal.empty() if m == "off" else s.lookup.propose(s.tokens, min(self._room(s), self.lookup_max))
                 for s, m in zip(active, modes)]
        if "auto" not in modes:
            return props
        cost = self.controller.cost
        if not cost.t_verify:  # the first batch measures; nothing to price drafts with yet
            return [Proposal.empty() if m == "auto" else p for p, m in zip(props, modes)]
        rates = []
        for s, p, m in zip(active, props, modes):
            assert s.result is not None and s.req is not None
            if m == "off":
                rates.append([])
                continue
            cap = probe_cap(p.k, s.result.accepted, p.trusted)
            cand = Candidate("lookup", p.k, chain=self._chain(s, p))
            rates.append(self.controller.rates(cand, cap))
        seq_ids = [s.seq_id for s in active]
        verify = functools.cache(cost.verify)  # the search prices the same sizes many times
        ks = allocate_drafts(rates, lambda counts: stream_batch_seconds(seq_ids, counts, verify),
                             max_batch=self.backend.n_batch, margin=self.controller.margin)
        return [replace(p, tokens=p.tokens[:k]) if m == "auto" else p for p, k, m in zip(props, ks, modes)]

    @staticmethod
    def _chain(slot: _Slot, p: Proposal) -> tuple[tuple[str, float | None], ...]:
        """Whose statistics judge each of the slot's drafts (drafts_judged_by)."""
        assert slot.req is not None
        return drafts_judged_by(p, regime=slot.req.sampling.regime)

    def _cycle(self, active: list[_Slot]) -> list[Update]:
        props = self._drafts(active)
        tokens: list[int] = []
        positions: list[int] = []
        seqs: list[int] = []
        for s, p in zip(active, props):
            row = [s.tokens[-1], *p.tokens.tolist()]
            tokens += row
            positions += range(len(s.kv), len(s.kv) + len(row))
            seqs += [s.seq_id] * len(row)
        with Stopwatch() as sw:
            logits = self.backend.decode_seqs(tokens, positions, seqs)
        seq_ids = [s.seq_id for s in active]
        if len({p.k for p in props}) == 1 and seq_ids == list(range(seq_ids[0], seq_ids[0] + len(seq_ids))):
            self.controller.cost.observe_verify(len(tokens), sw.total)  # one pass: t_verify(n) itself
        row0 = 0
        updates = []
        for s, p in zip(active, props):
            rows = logits[row0 : row0 + p.k + 1]
            row0 += p.k + 1
            updates.append(self._emit(s, self._accept(s, p, rows)))
        return updates

    def _accept(self, s: _Slot, p: Proposal, rows: np.ndarray) -> list[int]:
        """The slot's verdict on its drafts; trims its rejected KV positions."""
        assert s.result is not None and s.req is not None
        verdict = self._verdict(s, p, rows)
        start = len(s.kv)
        kept = [s.tokens[-1], *p.tokens[: verdict.n_accepted].tolist()]
        if verdict.n_accepted < p.k:
            self.backend.seq_remove(s.seq_id, start + len(kept))
        s.kv.extend(kept)
        s.result.verifies += 1
        if p.k:
            self.controller.observe_chain([src for src, _ in self._chain(s, p)], verdict.n_accepted)
            s.result.drafted += p.k
            s.result.accepted += verdict.n_accepted
        emitted = [*kept[1:], verdict.next_token]
        if s.req.processor is not None:
            s.req.processor.accept(emitted, rows)
        return emitted

    @staticmethod
    def _verdict(s: _Slot, p: Proposal, rows: np.ndarray) -> Verdict:
        assert s.req is not None and s.positions is not None and s.rng is not None
        return verdict_on(s.tokens, rows, p, s.req.sampling, s.rng, s.positions, s.req.processor)

    def _emit(self, s: _Slot, emitted: list[int]) -> Update:
        """Append the tokens to the slot's text; the new text, and the result if it is finished
        (the slot is then free)."""
        assert s.req is not None and s.result is not None
        r, b, req = s.result, self.backend, s.req
        new: list[int] = []
        finished = False
        for t in emitted:
            s.tokens.append(t)
            r.tokens.append(t)
            self.generated += 1
            if b.is_eog(t):
                r.finish_reason, finished = "stop", True
                break
            new.append(t)
            r.text += s.text_decoder.decode(b.token_bytes(t, special=t in req.keep_special))
            cut = min((i for i in (r.text.find(x, max(0, s.sent - len(x))) for x in req.stops) if i >= 0),
                      default=-1)
            s.sent = len(r.text)
            if cut >= 0:
                r.text = r.text[:cut]
                r.finish_reason, finished = "stop", True
                break
            if len(r.tokens) >= req.max_tokens or len(s.kv) >= self.seq_ctx:
                break
        if not finished and (len(r.tokens) >= req.max_tokens or len(s.kv) >= self.seq_ctx):
            r.finish_reason, finished = "length", True
            r.text += s.text_decoder.decode(b"", final=True)
        if finished:
            safe = len(r.text)
        else:  # hold back a tail that could still grow into a stop string
            hold = max((j for x in req.stops for j in range(len(x) - 1, 0, -1) if r.text.endswith(x[:j])), default=0)
            safe = len(r.text) - hold
        text = r.text[s.out:safe] if safe > s.out else ""
        s.out = max(s.out, safe)
        update = Update(req.key, text, new)
        if finished:
            update.result, s.req, s.result = r, None, None
        return update
