"""`serve --parallel N`: N requests decoded together, one batch per step, on the one worker thread.

The same jobs and events as runner.py (the routes do not know which runner they talk to);
only the worker loop differs. It owns a ParallelDecoder (runtime/parallel.py) whose N slots
are sequences of the model's one context, each with n_ctx / N cells (as llama-server's
`-np N`). Between two steps the loop

  1. frees the slot of every job whose client went away (its `done` says "cancelled");
  2. admits queued jobs, in arrival order, while a slot is free: tokenize, check (a bad
     request gets its `error` and takes no slot), `start`, prefill into the free slot whose
     KV gives the most of the prompt, first token;
  3. decodes one batch for every active slot and hands each job its new text; a finished
     job gets `done` and its slot is free for the next step.

While no job runs it sleeps on the queue. A prompt admitted while other slots stream is
prefilled one chunk per step between their batches (ParallelDecoder.admit, interleave=True),
so a long prompt delays the other streams by a chunk's time per step, not by its whole prefill;
prompts that arrive together, before any stream has gone past its first token, are prefilled
whole one after another (each request's first token as soon as its own prefill ends).
Per request, exactly as in the single-slot runner: streaming, stop strings, seeds, logprobs,
penalties, grammar (response_format, forced tool calls), tool-call tags, and `sdfp_mode`
among auto / lookup / off; layer-skip and draft-model modes are refused with a 400 (a layer
mask would apply to the whole batch). What differs, by design: a request's prefix is reused
from any slot (a shared system prompt is copied, llama_memory_seq_cp, not recomputed), but only
as far as it gives the KV bit for bit (runtime/prefill_splits.py: where both prefills cut a batch,
for a chat where a message's content starts, Model.chat_cuts, or inside a batch where its kernels
allow) and only from a previous prompt, never its generated answer (parallel.py: so a greedy
request's text does not depend on what ran beside it or before it).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from sdfp_edge.api import GenerationArgs, Model
from sdfp_edge.errors import SdfpError
from sdfp_edge.runtime.controller import Controller
from sdfp_edge.runtime.cost_store import CostStore
from sdfp_edge.runtime.parallel import ParallelDecoder, Request, Result, Update
from sdfp_edge.server.responses import logprob_entries
from sdfp_edge.server.runner import Event, Job, Runner

log = logging.getLogger("sdfp_edge.server")


@dataclass
class _Live:
    """A job that holds a slot."""

    job: Job
    args: GenerationArgs
    t0: float  # when it was admitted (perf_counter)
    t_first: float = 0.0  # when its first token was out
    held: list[dict[str, Any]] = field(default_factory=list)  # logprobs of tokens whose text is not out yet
    n_logprobs: int = 0  # processor.logprobs entries already handed out


class SlotRunner(Runner):
    """A FIFO of jobs, N of them decoded together by one ParallelDecoder on one thread."""

    def __init__(self, model: Model, n_slots: int, *, mode: str, cost_cache: bool = True,
                 interleave: bool = True) -> None:
        """`interleave`: prefill a prompt that arrives while others decode one chunk per step
        (ParallelDecoder.admit); False: whole, between two steps."""
        super().__init__(model)
        self.interleave = interleave
        b = model.backend
        if b.n_seq_max != n_slots:
            raise ValueError(f"the model was opened with {b.n_seq_max} sequences, not {n_slots}")
        self.n_slots = n_slots
        self._store = CostStore({**b.identity(), "n_seq_max": n_slots, "drafters": ["lookup"]}) \
            if cost_cache else None
        controller = Controller()
        if self._store is not None:
            controller.load_state(self._store.load() or {})
        self.decoder = ParallelDecoder(b, seq_ctx=b.n_ctx // n_slots, mode=mode, controller=controller)
        self._live: dict[Job, _Live] = {}  # touched on the worker thread only
        self._stopping = threading.Event()

    @property
    def busy(self) -> bool:
        return bool(self._live)

    @property
    def active(self) -> int:
        return len(self._live)

    def stop(self, timeout: float = 10.0) -> bool:
        self._stopping.set()  # the worker cancels its running jobs at the next step
        return super().stop(timeout)

    # --- the worker thread -------------------------------------------------------------------
    def _work(self) -> None:
        try:
            while True:
                if self._stopping.is_set():
                    for job in self._live:
                        job.cancel()
                for job in [j for j in self._live if j.cancelled]:
                    self._finish(job, self.decoder.release(job), cancelled=True)
                while len(self._live) < self.n_slots:
                    try:
                        job = self._jobs.get(block=not self._live)
                    except queue.Empty:
                        break
                    if job is None:
                        return
                    if job.cancelled:  # its client left while it waited
                        job.emit(Event("done", stats={"finish_reason": "cancelled"}))
                        continue
                    self._admit(job)
                if self._live:
                    self._step()
        finally:
            for job in list(self._live):
                self._finish(job, self.decoder.release(job), cancelled=True)
            if self._store is not None and self.decoder.controller.cost.t_verify:
                self._store.save(self.decoder.controller.state())

    def _admit(self, job: Job) -> None:
        m, d = self.model, self.decoder
        try:
            prompt = job.prompt(m)
            limit = job.max_tokens or max(1, d.seq_ctx - len(prompt))
            args = m.prepare(prompt, max_tokens=limit, **job.sampling)
        except SdfpError as e:  # validated before any token: the client gets a 400
            job.emit(Event("error", error=e))
            return
        except Exception as e:  # noqa: BLE001 - reported to the client (500), the worker lives on
            log.exception("%s failed", job.label)
            job.emit(Event("error", error=e))
            return
        try:
            # a chat's cuts where its messages start; a completion's where its last whole tile ends
            cuts = job.cuts(m, list(args.prompt)) if job.cuts is not None else \
                d.backend.split_rule.tail_cut(len(args.prompt))
        except Exception:  # noqa: BLE001 - cuts only widen reuse: without them the request runs as before
            log.exception("%s: no prefill cuts", job.label)
            cuts = frozenset()
        req = Request(job, args.prompt, args.max_tokens, args.sampling, args.stops, cuts=cuts, processor=args.processor,
                      keep_special=frozenset(args.kept), mode=job.mode)
        try:
            d.check(req)
        except SdfpError as e:
            args.close()
            job.emit(Event("error", error=e))
            return
        job.emit(Event("start", prompt_tokens=len(prompt)))
        self._live[job] = _Live(job, args, time.perf_counter())
        try:
            update = d.admit(req, interleave=self.interleave)
        except Exception as e:  # noqa: BLE001 - reported to the client, the worker lives on
            log.exception("%s failed", job.label)
            self._fail([job], e)
            return
        if update is not None:
            self._deliver(update)

    def _step(self) -> None:
        try:
            updates = self.decoder.step()
        except Exception as e:  # noqa: BLE001 - a failed batch: every job in it gets the error
            log.exception("a batch of %d failed", len(self._live))
            self._fail(list(self._live), e)
            return
        for update in updates:
            self._deliver(update)

    def _fail(self, jobs: list[Job], e: Exception) -> None:
        """Jobs whose decode failed: their error, and the decoder forgets every slot's KV."""
        self.decoder.forget()
        for job in list(self._live):
            live = self._live.pop(job)
            live.args.close()
            if job in jobs:
                job.emit(Event("error", error=e))
            else:  # its KV is gone too: ended as if cut short
                job.emit(Event("error", error=RuntimeError("generation was interrupted by another request's failure")))

    def _deliver(self, update: Update) -> None:
        job: Job = update.key
        live = self._live[job]
        if not live.t_first:
            live.t_first = time.perf_counter()
        self._chunk(live, update.text, len(update.tokens))
        if update.result is not None:
            self._finish(job, update.result)

    def _chunk(self, live: _Live, text: str, n_tokens: int) -> None:
        proc = live.args.processor
        lps = None
        if proc is not None and proc.top_logprobs is not None:
            lps = proc.logprobs[live.n_logprobs: live.n_logprobs + n_tokens]
            live.n_logprobs += n_tokens
            live.held += logprob_entries(lps, self.model.backend.token_bytes)
        if text:
            live.job.emit(Event("chunk", text=text, logprobs=live.held if lps is not None else None))
            live.held = []

    def _finish(self, job: Job, result: Result | None, *, cancelled: bool = False) -> None:
        live = self._live.pop(job, None)
        if live is None:
            return
        live.args.close()
        if live.held:
            job.emit(Event("chunk", logprobs=live.held))
        stats = self._stats(live, result)
        if cancelled:
            stats["finish_reason"] = "cancelled"
        job.emit(Event("done", prompt_tokens=len(live.args.prompt), stats=stats))
        log.info("%s: %d prompt tokens (%d reused), %d tokens, finish %s, %.1f tok/s, mode %s, "
                 "acceptance %.0f%% of %d drafted, %d of %d slots busy", job.label, len(live.args.prompt),
                 stats["reused_prompt_tokens"], stats["tokens"], stats["finish_reason"],
                 stats["tokens_per_second"], stats["mode"], 100 * stats["acceptance_rate"], stats["drafted"],
                 len(self._live) + 1, self.n_slots)

    def _stats(self, live: _Live, r: Result | None) -> dict[str, Any]:
        """The same keys as Model.last_stats for what the responses report (usage, `sdfp`)."""
        now = time.perf_counter()
        tokens = len(r.tokens) if r else 0
        gen_time = now - live.t_first if live.t_first else 0.0
        drafted, accepted, verifies = (r.drafted, r.accepted, r.verifies) if r else (0, 0, 0)
        return {
            "prompt_tokens": len(live.args.prompt),
            "reused_prompt_tokens": r.reused_tokens if r else 0,
            "tokens": tokens,
            "tokens_per_second": (tokens - 1) / gen_time if gen_time > 0 and tokens > 1 else 0.0,
            "end_to_end_tokens_per_second": tokens / (now - live.t0),
            "drafted": drafted,
            "accepted": accepted,
            "acceptance_rate": accepted / drafted if drafted else 0.0,
            "tokens_per_verify": tokens / verifies if verifies else 0.0,
            "verifies": verifies,
            "time_prefill_s": r.t_prefill if r else 0.0,
            "time_total_s": now - live.t0,
            "mode": live.job.mode,
            "parallel": self.n_slots,
            "finish_reason": r.finish_reason if r else "cancelled",
        }
