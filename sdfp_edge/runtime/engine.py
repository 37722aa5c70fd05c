"""The speculative loop: draft, verify in one batch, keep what the target would produce.

The prompt is prefilled whole, in llama.cpp's own batches, and the first token comes from
the logits of that prefill, as in llama.cpp: plain decoding (`off`) is then llama.cpp's
decoding, token for token. Invariant between cycles: the KV cache holds every token but
the last (`tokens[:-1]`). A cycle drafts d_1..d_k (drafters restore the cache and the
layer mask), decodes [last, d_1..d_k] with the full model in one batch, accepts a prefix
(verify.py), cuts the rejected positions from the KV cache, and emits the accepted drafts
plus the target's own next token. k = 0 is a plain decoding step. A `finally` always
restores the invariant for the tokens actually emitted, so a consumer may stop the
generator at any token (stop string, EOS, a client that went away) and the cache stays
right for the next request.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from sdfp_edge.runtime.backend import SKIP_ARCHITECTURES, LlamaBackend
from sdfp_edge.runtime.controller import Candidate, Controller, Stopwatch
from sdfp_edge.runtime.cost_store import CostStore
from sdfp_edge.runtime.drafters.base import Drafter, Proposal
from sdfp_edge.runtime.drafters.prompt_lookup import drafts_judged_by
from sdfp_edge.errors import ContextOverflowError, InvalidRequestError
from sdfp_edge.runtime.logits_processors import LogitsProcessor
from sdfp_edge.runtime.sampling import SamplingParams, probs_from_logits
from sdfp_edge.runtime.verify import Verdict, accept_greedy, couple_to_draws, rejection_sample

MODES = ("auto", "layerskip", "lookup", "draft-model", "off")
# the longest prompt-lookup draft: on this CPU a batch of 32 costs 6.7 single tokens, so a
# fully accepted 32-token copy yields 4.9 tokens per token-time, where 4 drafts cap it at 2.2
LOOKUP_MAX = 32
# emitted tokens between two re-measurements (Controller.choose, explore): a stored curve that
# prices drafts out is corrected within a few of them, and a text that gives nothing to draft
# pays for at most one such draft per this many tokens (and per size: CostModel.RECHECK_S)
EXPLORE_GAP = 24


@dataclass
class GenerationStats:
    """Counters of one generation. 'tokens per verify' = emitted / verify steps."""

    prompt_tokens: int = 0
    reused_tokens: int = 0  # prompt tokens whose KV was already cached
    tokens: int = 0  # emitted tokens (including a final end-of-generation token)
    verifies: int = 0
    drafted: int = 0
    accepted: int = 0
    draft_steps: int = 0
    explored: int = 0  # cycles that re-measured a draft the stored costs priced out (Decision.explore)
    t_prefill: float = 0.0
    t_draft: float = 0.0
    t_verify: float = 0.0
    t_total: float = 0.0
    per_drafter: dict[str, dict[str, int]] = field(default_factory=dict)
    decisions: dict[str, int] = field(default_factory=dict)
    finish_reason: str = ""

    def observe(self, drafter: str | None, proposal: Proposal, n_accepted: int) -> None:
        self.verifies += 1
        self.draft_steps += proposal.steps
        key = f"{drafter or 'plain'}:{proposal.k}"
        self.decisions[key] = self.decisions.get(key, 0) + 1
        if drafter is not None:
            self.drafted += proposal.k
            self.accepted += n_accepted
            d = self.per_drafter.setdefault(drafter, {"cycles": 0, "drafted": 0, "accepted": 0, "steps": 0})
            d["cycles"] += 1
            d["drafted"] += proposal.k
            d["accepted"] += n_accepted
            d["steps"] += proposal.steps

    def as_dict(self) -> dict[str, Any]:
        gen_time = self.t_total - self.t_prefill
        return {
            "prompt_tokens": self.prompt_tokens,
            "reused_prompt_tokens": self.reused_tokens,
            "tokens": self.tokens,
            # the first token comes with the prompt's prefill (as llama.cpp counts its eval time)
            "tokens_per_second": (self.tokens - 1) / gen_time if gen_time > 0 and self.tokens > 1 else 0.0,
            # everything the call cost, prompt processing included
            "end_to_end_tokens_per_second": self.tokens / self.t_total if self.t_total > 0 else 0.0,
            "drafted": self.drafted,
            "accepted": self.accepted,
            "acceptance_rate": self.accepted / self.drafted if self.drafted else 0.0,
            "tokens_per_verify": self.tokens / self.verifies if self.verifies else 0.0,
            "verifies": self.verifies,
            "draft_steps": self.draft_steps,
            "explored": self.explored,
            "time_prefill_s": self.t_prefill,
            "time_draft_s": self.t_draft,
            "time_verify_s": self.t_verify,
            "time_total_s": self.t_total,
            "per_drafter": self.per_drafter,
            "decisions": self.decisions,
            "finish_reason": self.finish_reason,
        }


def verdict_on(tokens: Sequence[int], raw: np.ndarray, proposal: Proposal, sampling: SamplingParams,
               rng: np.random.Generator, positions: PositionUniforms,
               processor: LogitsProcessor | None = None) -> Verdict:
    """Accept a prefix of the drafts: `raw` [k+1, V] holds the target's logits after
    `tokens` and after each draft (one rule for the engine and the batch mode)."""
    logits = raw if processor is None else processor.apply(list(tokens), raw, proposal.tokens)
    if sampling.greedy:
        return accept_greedy(proposal.tokens, logits)
    if proposal.probs is None:  # deterministic drafts (or none): coupled to the target's draws
        uniforms = [positions.at(len(tokens) + i) for i in range(len(raw))]
        return couple_to_draws(proposal.tokens, logits, sampling, uniforms)
    return rejection_sample(proposal.tokens, proposal.probs, probs_from_logits(logits, sampling), rng)


class PositionUniforms:
    """One uniform per output position, from (seed, position): the target's own draws do not
    depend on how the controller split the text into cycles (see verify.py)."""

    BLOCK = 64  # positions drawn per generator: seeding one costs 0.1 ms, a sampled token 10

    def __init__(self, seed: int | None) -> None:
        self._entropy = np.random.SeedSequence(seed).entropy
        self._block, self._values = -1, np.empty(0)

    def at(self, position: int) -> float:
        block, i = divmod(position, self.BLOCK)
        if block != self._block:
            seq = np.random.SeedSequence(self._entropy, spawn_key=(block,))
            self._block, self._values = block, np.random.Generator(np.random.PCG64(seq)).random(self.BLOCK)
        return float(self._values[i])


class SpeculativeDecoder:
    """Generation on one backend (one context, one KV cache), with pluggable drafters."""

    def __init__(
        self,
        backend: LlamaBackend,
        drafters: Sequence[Drafter] = (),
        *,
        mode: str = "auto",
        k_max: int = 4,
        lookup_max: int = LOOKUP_MAX,
        cost_store: CostStore | None = None,
    ) -> None:
        """`k_max`: the longest model draft; `lookup_max`: the longest prompt-lookup draft
        (free to make: a long match that is trusted pays at prompt-processing speed).
        `cost_store`: where measurements persist across processes (None: this process only)."""
        self.backend = backend
        self.drafters = {d.name: d for d in drafters}
        self.controller = Controller()
        self.k_max = k_max
        self.lookup_max = lookup_max
        self.cost_store = cost_store
        self.cost_source = "learned in this process"
        self._stepped: set[str] = set()  # model drafters that have drafted in this process
        self._since_explore = EXPLORE_GAP  # tokens emitted since the last re-measurement
        if cost_store is not None:
            state = cost_store.load()
            if state is not None:
                self.controller.load_state(state)
                if self.controller.cost.ready:
                    self.cost_source = f"persisted ({cost_store.path})"
        self.set_mode(mode)

    def check_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise InvalidRequestError(f"unknown mode '{mode}'; choose one of {', '.join(MODES)}")
        if mode not in ("auto", "off") and mode not in self.drafters:
            raise InvalidRequestError(f"mode '{mode}' is not available for this model ({self.why_missing(mode)})")

    def set_mode(self, mode: str) -> None:
        """`mode`, or plain decoding where the model's memory cannot drop a rejected draft
        (backend.can_rollback: recurrent and hybrid models; api.Model says so once)."""
        self.check_mode(mode)
        self.mode = mode if self.backend.can_rollback else "off"

    def why_missing(self, mode: str) -> str:
        if mode == "layerskip" and self.backend.arch not in SKIP_ARCHITECTURES:
            return (f"architecture '{self.backend.arch}' does not support layer skipping "
                    f"(supported: {', '.join(SKIP_ARCHITECTURES)}); use --mode lookup or --mode off")
        return {
            "layerskip": "no skip list: the GGUF has no sdfp.* metadata and no --skip-layers was given",
            "draft-model": "no --draft-model was given",
        }.get(mode, "not configured")

    # --- measurement ---------------------------------------------------------------------
    def calibrate(self) -> None:
        """Time verifies of 1..k_max+1 tokens and a draft step of each model drafter, now.

        Never called by `generate` (the controller learns from real cycles and persisted
        measurements); tools that need the whole curve at once call it (skip_count.py).
        Runs at the end of the current KV cache and removes what it added.
        """
        b = self.backend
        start = b.n_past
        room = b.n_ctx - start
        sizes = [n for n in range(1, self.k_max + 2) if n <= room]
        if not sizes:
            return
        probe = [b.kv_tokens[-1] if b.kv_tokens else b.bos_token] * max(sizes)
        sw = Stopwatch()

        def measure(n: int) -> float:
            with sw:
                b.decode(probe[:n], logits="all")
            b.truncate(start)
            return sw.last

        measure(1)  # first decode of a new graph shape allocates; not representative
        self.controller.cost.calibrate(measure, sizes, repeats=3)
        for name, d in self.drafters.items():
            if d.uses_model and room >= 2:
                rng = np.random.default_rng(0)
                context = b.kv_tokens + [probe[0]]
                d.propose(context, 1, SamplingParams(), rng)  # untimed: catch-up, graph allocation
                self._stepped.add(name)
                with sw:
                    p = d.propose(context, 1, SamplingParams(), rng)
                self.controller.cost.observe_step(name, max(p.steps, 1), sw.last)
            elif not d.uses_model:
                self.controller.cost.t_step[name] = 0.0  # known in every process: no step to time
                self.controller.cost.steps_here.add(name)

    def persist(self) -> None:
        if self.cost_store is not None and self.controller.cost.ready:
            self.cost_store.save(self.controller.state())

    # --- the loop ------------------------------------------------------------------------
    def _candidates(self, tokens: list[int], room: int, sampling: SamplingParams,
                    rng: np.random.Generator) -> tuple[list[Candidate], Proposal | None]:
        """Drafters the controller may choose now, with their caps; lookup's free proposal.

        `room`: the most tokens any draft may have (context and max_tokens left)."""
        lookup = None
        cands: list[Candidate] = []
        # a one-hot draft is accepted with the target's probability of it when sampling, far
        # less often than when greedy, and how often depends on the sampler setting: each
        # setting keeps its own statistics (SamplingParams.regime)
        regime = sampling.regime
        for name, d in self.drafters.items():
            if self.mode not in ("auto", name):
                continue
            if not d.uses_model:
                lookup = d.propose(tokens, min(room, self.lookup_max), sampling, rng)
                if lookup.k:
                    chain = drafts_judged_by(lookup, regime=regime)
                    cands.append(Candidate(name, lookup.k, chain[0][0], cost_prior=0.0, trusted=lookup.trusted,
                                           prior=chain[0][1], chain=chain))
            elif min(room, self.k_max) > 0:
                cands.append(Candidate(name, min(room, self.k_max), name + regime, cost_prior=d.cost_prior))
        return cands, lookup

    def generate(
        self,
        prompt: Sequence[int],
        *,
        max_tokens: int,
        sampling: SamplingParams = SamplingParams(),
        stats: GenerationStats | None = None,
        processor: LogitsProcessor | None = None,
    ) -> Iterator[int]:
        """Yield generated token ids one at a time (the last may be an end-of-generation token).

        `processor`: penalties, grammar and logprobs of this request (logits_processors.py)."""
        b = self.backend
        stats = stats if stats is not None else GenerationStats()
        if not prompt:
            raise InvalidRequestError("the prompt is empty")
        if max_tokens <= 0:
            raise InvalidRequestError(f"max_tokens must be > 0, got {max_tokens}")
        if len(prompt) >= b.n_ctx:
            raise ContextOverflowError(
                f"the prompt has {len(prompt)} tokens but the context holds {b.n_ctx}; "
                "shorten the prompt or raise --ctx-size"
            )
        rng = np.random.default_rng(sampling.seed)
        positions = PositionUniforms(sampling.seed)
        tokens = list(prompt)
        total = Stopwatch()
        stats.prompt_tokens = len(prompt)
        with total:
            with Stopwatch() as sw:
                stats.reused_tokens, last = b.prefill(tokens)
            stats.t_prefill = sw.total
            self.controller.cost.observe_batch(len(tokens) - stats.reused_tokens, sw.total)
            # the first token comes from the prefill's own logits, as llama.cpp's does: its
            # prompt batches are what decides it, not a cycle of ours (counted as one verify)
            first, nothing = last[None, :], Proposal.empty()
            verdict = verdict_on(tokens, first, nothing, sampling, rng, positions, processor)
            emitted = self._emit(first, nothing, verdict, None, stats, processor)
            if self.mode in ("layerskip", "draft-model") and not self.controller.cost.ready:
                # a forced model draft never verifies one token alone, so c (its step relative
                # to one target token) would stay unknown; timed, inside this call's total
                self.calibrate()
        produced = 0
        try:
            while True:
                for t in emitted:
                    tokens.append(t)
                    produced += 1
                    stats.tokens += 1
                    yield t
                    if b.is_eog(t):
                        stats.finish_reason = "stop"
                        return
                if produced >= max_tokens:
                    break
                with total:
                    free = b.n_ctx - b.n_past  # positions left; verifying k drafts takes k + 1
                    if free < 1:
                        stats.finish_reason = "length"
                        return
                    room = max(0, min(free - 1, max_tokens - produced - 1))
                    emitted = self._cycle(tokens, room, sampling, rng, positions, stats, processor)
            stats.finish_reason = stats.finish_reason or "length"
        finally:
            # the KV cache must hold exactly the emitted tokens but the last
            b.set_skip(None)
            b.truncate(len(tokens) - 1)
            stats.t_total += total.total
            stats.decisions = dict(stats.decisions)
            self.persist()

    def _cycle(self, tokens: list[int], room: int, sampling: SamplingParams, rng: np.random.Generator,
               positions: PositionUniforms, stats: GenerationStats,
               processor: LogitsProcessor | None = None) -> list[int]:
        """One draft-verify cycle; returns the tokens to emit (accepted drafts + one).

        `room`: the most tokens a draft may have (context and max_tokens left)."""
        b = self.backend
        drafter_name: str | None = None
        proposal = Proposal.empty()
        source, chain = "", ()
        if self.mode != "off" and room > 0:
            cands, lookup = self._candidates(tokens, room, sampling, rng)
            if self.mode == "auto":
                decision = self.controller.choose(cands, accepted_in_text=stats.accepted,
                                                  explore=self._since_explore >= EXPLORE_GAP)
                drafter_name, k, source, chain = decision.drafter, decision.k, decision.source, decision.chain
                if decision.explore:
                    stats.explored += 1
                    self._since_explore = 0
            elif cands:  # forced: draft with the named drafter at the full cap
                c = cands[0]
                drafter_name, k, source, chain = c.drafter, c.k_cap, c.key, c.chain_sources()
            if drafter_name is not None:
                if lookup is not None and not self.drafters[drafter_name].uses_model:
                    proposal = replace(lookup, tokens=lookup.tokens[:k])
                else:
                    drafter = self.drafters[drafter_name]
                    with Stopwatch() as setup:
                        drafter.prepare(tokens)
                    with Stopwatch() as sw:
                        proposal = drafter.propose(tokens, k, sampling, rng, processor)
                    stats.t_draft += setup.total + sw.total
                    if drafter_name in self._stepped:
                        self.controller.cost.observe_step(drafter_name, proposal.steps, sw.total)
                    else:  # its first steps in a process build its graph: a one-off, kept
                        # out of c as calibrate() keeps them (1.0-1.4x a later step here)
                        self._stepped.add(drafter_name)

        start = b.n_past
        batch = [tokens[-1], *proposal.tokens.tolist()]
        with Stopwatch() as sw:
            raw = b.decode(batch, logits="all")  # [k+1, V]
        stats.t_verify += sw.total
        self.controller.cost.observe_verify(len(batch), sw.total)
        verdict = verdict_on(tokens, raw, proposal, sampling, rng, positions, processor)
        b.truncate(start + 1 + verdict.n_accepted)
        if drafter_name is not None:
            # a model drafter's acceptance is per step spent: a confidence stop that drafted
            # nothing still cost a step and must count against it
            spent = proposal.steps if self.drafters[drafter_name].uses_model else proposal.k
            if chain:
                self.controller.observe_chain(chain[:spent], verdict.n_accepted)
            elif spent:
                self.controller.observe(source, spent, verdict.n_accepted)
        emitted = self._emit(raw, proposal, verdict, drafter_name, stats, processor)
        self._since_explore += len(emitted)
        return emitted

    @staticmethod
    def _emit(raw: np.ndarray, proposal: Proposal, verdict: Verdict, drafter_name: str | None,
              stats: GenerationStats, processor: LogitsProcessor | None) -> list[int]:
        stats.observe(drafter_name if proposal.k else None, proposal, verdict.n_accepted)
        emitted = [*proposal.tokens[: verdict.n_accepted].tolist(), verdict.next_token]
        if processor is not None:
            processor.accept(emitted, raw)
        return emitted

