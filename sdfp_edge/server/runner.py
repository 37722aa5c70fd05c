"""One model, one context: generation jobs run one at a time, in arrival order, on one thread.

The event loop never touches llama.cpp. A request handler submits a `Job` (how to build the
prompt from the model, and the sampling arguments) and reads its events from an asyncio
queue: `start` (the request was valid and its prompt fits), then `chunk`s of text, then
`done` with the statistics; or `error` instead of `start` when the request is bad. A job is
cancelled when its client goes away: the worker closes the token iterator between two
chunks, which stops generation with the KV cache consistent (engine.py's `finally`), and
takes the next job. Jobs whose client left while they were queued are skipped.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from sdfp_edge.api import Chunk, Model
from sdfp_edge.errors import SdfpError
from sdfp_edge.runtime.sampler_chain import FROM_GGUF
from sdfp_edge.server.responses import logprob_entries

log = logging.getLogger("sdfp_edge.server")


def sampling_summary(used: dict[str, Any]) -> str:
    """The request's sampler chain, and which settings were the model's defaults (from where)."""
    if not used:
        return "-"
    src = used.get("source", {})
    gguf = sorted(k for k, v in src.items() if v == FROM_GGUF)
    return f"{used.get('summary', '')} (defaults: {'GGUF ' + ','.join(gguf) + ', ' if gguf else ''}llama.cpp)"

PromptBuilder = Callable[[Model], list[int]]  # runs on the worker: tokenize a prompt or chat
CutFinder = Callable[[Model, list[int]], frozenset[int]]  # a chat prompt's message starts (Model.chat_cuts)


@dataclass
class Event:
    kind: Literal["start", "chunk", "done", "error"]
    text: str = ""  # chunk: new text
    logprobs: list[dict[str, Any]] | None = None  # chunk: its tokens' log-probabilities, when asked for
    prompt_tokens: int = 0  # start, done
    stats: dict[str, Any] = field(default_factory=dict)  # done: Model.last_stats
    error: BaseException | None = None  # error: an SdfpError is the client's fault, anything else ours


class Job:
    """One generation request, produced on the worker thread and consumed on the event loop."""

    def __init__(self, label: str, prompt: PromptBuilder, *, max_tokens: int | None, mode: str,
                 sampling: dict[str, Any], cuts: CutFinder | None = None) -> None:
        self.label = label  # for the log: the response id
        self.prompt = prompt
        self.cuts = cuts  # where serve --parallel cuts the prompt's prefill (exact prefix reuse)
        self.max_tokens = max_tokens  # None: until the end of the context
        self.mode = mode
        self.sampling = sampling
        self._loop = asyncio.get_running_loop()
        self._events: asyncio.Queue[Event] = asyncio.Queue()
        self._cancel = threading.Event()

    def cancel(self) -> None:
        """Stop generating for this job (its client went away); safe from any thread, idempotent."""
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def emit(self, event: Event) -> None:
        try:
            self._loop.call_soon_threadsafe(self._events.put_nowait, event)
        except RuntimeError:  # the event loop is closed: nobody is listening any more
            self.cancel()

    async def next_event(self) -> Event:
        return await self._events.get()


class Runner:
    """Owns the model: a FIFO of jobs and the one thread that runs them."""

    def __init__(self, model: Model) -> None:
        self.model = model
        self._jobs: queue.Queue[Job | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._current: Job | None = None
        self._start_lock = threading.Lock()

    @property
    def busy(self) -> bool:
        return self._current is not None

    @property
    def stopped(self) -> bool:
        """True when no worker thread runs (never started, or ended): the model may be closed."""
        return self._thread is None or not self._thread.is_alive()

    @property
    def queued(self) -> int:
        return self._jobs.qsize()

    def start(self) -> None:
        with self._start_lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._work, name="sdfp-generate", daemon=True)
                self._thread.start()

    def submit(self, job: Job) -> Job:
        self.start()
        self._jobs.put(job)
        return job

    def stop(self, timeout: float = 10.0) -> bool:
        """Cancel queued and running jobs, end the worker; True when it has ended (model free)."""
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job.cancel()
                job.emit(Event("error", error=RuntimeError("the server is shutting down")))
        current = self._current
        if current is not None:
            current.cancel()
        self._jobs.put(None)
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True

    # --- the worker thread -------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            if job.cancelled:  # its client left while it waited
                job.emit(Event("done", stats={"finish_reason": "cancelled"}))
                continue
            self._current = job
            try:
                self._run(job)
            except Exception as e:  # noqa: BLE001 - reported to the client, the worker lives on
                log.exception("%s failed", job.label)
                job.emit(Event("error", error=e))
            finally:
                self._current = None

    def _run(self, job: Job) -> None:
        m = self.model
        try:
            prompt = job.prompt(m)
            limit = job.max_tokens or max(1, m.backend.n_ctx - len(prompt))
            # a generator: closing it stops generation (Model.stream_tokens says Iterator)
            chunks = cast(Generator[Chunk, None, None],
                          m.stream_tokens(prompt, max_tokens=limit, mode=job.mode, **job.sampling))
        except SdfpError as e:  # validated before any token: the client gets a 400
            job.emit(Event("error", error=e))
            return
        job.emit(Event("start", prompt_tokens=len(prompt)))
        held: list[dict[str, Any]] = []  # logprobs of tokens whose text is not out yet
        try:
            for chunk in chunks:
                if chunk.logprobs is not None:
                    held += logprob_entries(chunk.logprobs, m.backend.token_bytes)
                if chunk.text:
                    job.emit(Event("chunk", text=chunk.text, logprobs=held if chunk.logprobs is not None else None))
                    held = []
                if job.cancelled:
                    break
            if held:
                job.emit(Event("chunk", logprobs=held))
        finally:
            chunks.close()  # stops generation; the KV cache keeps exactly what was emitted
        stats = dict(m.last_stats)
        if job.cancelled:
            stats["finish_reason"] = "cancelled"
        job.emit(Event("done", prompt_tokens=len(prompt), stats=stats))
        log.info("%s: %d prompt tokens (%d reused), %d tokens, finish %s, %.1f tok/s, mode %s, "
                 "acceptance %.0f%% of %d drafted, %.2f tokens/verify, sampling %s", job.label, len(prompt),
                 stats.get("reused_prompt_tokens", 0), stats.get("tokens", 0), stats.get("finish_reason"),
                 stats.get("tokens_per_second", 0.0), stats.get("mode"), 100 * stats.get("acceptance_rate", 0.0),
                 stats.get("drafted", 0), stats.get("tokens_per_verify", 0.0),
                 sampling_summary(stats.get("sampling") or {}))
