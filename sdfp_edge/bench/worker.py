"""One bench system in a process of its own: `python -m sdfp_edge.bench.worker`.

The coordinator (runner.py) starts one worker per system with the user's environment as
it is, so each system runs as its users run it: nothing another system loaded, set or
warmed up is shared. The worker opens the model once, then answers requests over stdin /
stdout (protocol.py) until its input ends. Times are taken here, around the generation
call, the same way for every system; the first request pays whatever the system pays on
its first request (graph allocation, page faults, cost calibration).

- sdfp systems: `sdfp_edge.api.Model(..., mode=...)`, generating through its decoder
  (token ids out, with the verify cycle of each, for the decode-rate window).
- llama-cpp-python peers: its own `Llama.generate`, untouched: plain, or with its
  `LlamaPromptLookupDecoding`. Verify cycles and drafts are counted by wrapping `Llama.eval`
  and the draft model's `__call__` on the instance; the wrappers only count.

Every system prefills the whole prompt: the KV cache is emptied before each request.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from collections.abc import Sequence
from typing import Any, Protocol

from sdfp_edge.bench.protocol import LoadConfig, Request, SystemSpec, Trace
from sdfp_edge.runtime.sampling import SamplingParams


class System(Protocol):
    def info(self) -> dict[str, Any]: ...
    def tokenize_chat(self, messages: list[dict[str, str]]) -> list[int]: ...
    def detokenize(self, ids: list[int]) -> str: ...
    def run(self, req: Request) -> Trace: ...
    def close(self) -> None: ...


def build_info() -> dict[str, Any]:
    """The runtime this process loaded (every system runs the same llama-cpp-python build)."""
    import llama_cpp
    import numpy

    info = llama_cpp.llama_print_system_info()
    return {
        "llama_cpp_python": llama_cpp.__version__,
        "llama_cpp_system_info": info.decode() if isinstance(info, bytes) else str(info),
        "numpy": numpy.__version__,
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
        # how llama.cpp's threads wait at a barrier: sdfp-edge's processes bound the spin (backend.py), a plain
        # llama.cpp process keeps libgomp's default, and this alone can part their speeds (threads-and-memory.md)
        "GOMP_SPINCOUNT": os.environ.get("GOMP_SPINCOUNT"),
        "SDFP_EDGE_HUGE_PAGES": os.environ.get("SDFP_EDGE_HUGE_PAGES"),
    }


# --- sdfp ------------------------------------------------------------------------------------------
class SdfpSystem:
    """sdfp-edge's Model in one fixed mode."""

    def __init__(self, spec: SystemSpec, load: LoadConfig) -> None:
        from sdfp_edge.api import Model

        o = spec.options
        # whether persisted cost measurements are reused (--cost-cache/--no-cost-cache); None: Model's default
        extra: dict[str, Any] = {} if load.cost_cache is None else {"cost_cache": load.cost_cache}
        if load.cost_dir is not None:
            extra["cost_dir"] = load.cost_dir
        self.model = Model(load.model, n_ctx=load.n_ctx, n_threads=load.threads, n_gpu_layers=load.n_gpu_layers,
                           mode=o["mode"], skip_layers=o.get("skip_layers"), draft_model=o.get("draft_model"),
                           k_max=load.k_max, threshold=load.threshold, verbose=load.verbose, **extra)

    def info(self) -> dict[str, Any]:
        from sdfp_edge.runtime.backend import describe

        return {"backend": describe(self.model.backend), "skip_layers": list(self.model.skip_layers),
                "skip_source": self.model.skip_source, "build": build_info()}

    def tokenize_chat(self, messages: list[dict[str, str]]) -> list[int]:
        return self.model.tokenize_chat(messages)

    def detokenize(self, ids: list[int]) -> str:
        """An answer's text for the next chat turn (end-of-generation tokens left out)."""
        b = self.model.backend
        return b.detokenize([t for t in ids if not b.is_eog(t)])

    def run(self, req: Request) -> Trace:
        from sdfp_edge.runtime.engine import GenerationStats

        decoder = self.model.decoder
        decoder.backend.reset()
        stats = GenerationStats()
        trace = Trace()
        sampling = SamplingParams(temperature=req.temperature, seed=req.seed)
        t0 = time.perf_counter()
        for tok in decoder.generate(req.ids, max_tokens=req.max_tokens, sampling=sampling, stats=stats):
            trace.times.append(time.perf_counter() - t0)
            trace.tokens.append(tok)
            trace.first_cycle += stats.verifies == 1  # updated before the cycle's tokens are yielded
        trace.verifies, trace.drafted, trace.accepted = stats.verifies, stats.drafted, stats.accepted
        trace.draft_steps = stats.draft_steps
        trace.costs = self._costs()
        trace.steps_by_drafter = self._steps_by_drafter(stats, trace.costs)
        trace.cost_model = decoder.controller.cost.relative()
        trace.system_stats = stats.as_dict()
        return trace

    def _costs(self) -> dict[str, float]:
        return dict(self.model.decoder.controller.cost.relative().get("c", {}))

    def _steps_by_drafter(self, stats: Any, costs: dict[str, float]) -> dict[str, int]:
        by = {d: v["steps"] for d, v in stats.per_drafter.items()}
        # per_drafter misses the steps of drafts that stopped before their first token (k = 0);
        # charge them to the costliest model drafter this system has (a conservative projection)
        rest = stats.draft_steps - sum(by.values())
        model_drafters = [n for n, d in self.model.decoder.drafters.items() if d.uses_model]
        if rest > 0 and model_drafters:
            worst = max(model_drafters, key=lambda n: costs.get(n, float("inf")))
            by[worst] = by.get(worst, 0) + rest
        return by

    def close(self) -> None:
        self.model.close()


# --- llama-cpp-python --------------------------------------------------------------------------------
class _CountingDraft:
    """Wraps a llama-cpp-python draft model; counts the tokens it proposes, changes nothing."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.drafted = 0

    def __call__(self, input_ids: Any, /, **kwargs: Any) -> Any:
        out = self.inner(input_ids, **kwargs)
        self.drafted += len(out)
        return out


# llama-cpp-python's README: num_pred_tokens "10 is the default and generally good for gpu,
# 2 performs better for cpu-only machines"; the peer follows that advice
PEER_LOOKUP_TOKENS = {"cpu": 2, "gpu": 10}


def peer_sampling(temperature: float) -> dict[str, Any]:
    """`Llama.generate`'s sampler settings for a request at `temperature` (0: greedy): the same
    distribution as the engine's, temperature only, no top-k/top-p/min-p."""
    if temperature == 0:
        return {"temp": 0.0}
    return {"temp": temperature, "top_k": 0, "top_p": 1.0, "min_p": 0.0, "typical_p": 1.0}


class LlamaCppSystem:
    """llama-cpp-python's `Llama.generate`, greedy or sampled, as a user would call it."""

    def __init__(self, spec: SystemSpec, load: LoadConfig) -> None:
        import llama_cpp
        from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

        self._llama_cpp = llama_cpp
        gpu = load.n_gpu_layers if load.n_gpu_layers is not None else (-1 if llama_cpp.llama_supports_gpu_offload() else 0)
        draft = None
        if spec.options.get("lookup"):
            draft = LlamaPromptLookupDecoding(num_pred_tokens=PEER_LOOKUP_TOKENS["gpu" if gpu else "cpu"])
        # llama.cpp's default attention setting is "auto" (flash attention where the device supports it,
        # as on CPUs), which the sdfp backend and llama-server keep; Llama() defaults to flash_attn=False.
        # The peer gets the same kernels, so that its speed is comparable and its greedy output can match.
        flash_attn = llama_cpp.llama_context_default_params().flash_attn_type != llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        # With a draft model, Llama keeps every position's logits but sizes its score array by
        # logits_all, not by the draft: left False, a context past n_batch tokens fails (0.3.36:
        # "could not broadcast input array from shape (455808,) into shape (151936,)" on a
        # 396-token prompt). The peer runs as a user who met that and passed logits_all=True.
        self.llm = llama_cpp.Llama(model_path=load.model, n_ctx=load.n_ctx, n_threads=load.threads,
                                   n_threads_batch=load.threads, n_gpu_layers=gpu, flash_attn=flash_attn,
                                   verbose=load.verbose, draft_model=draft, logits_all=draft is not None)
        self.flash_attn = flash_attn
        self.evals = 0
        inner_eval = self.llm.eval

        def counting_eval(tokens: Sequence[int]) -> None:
            self.evals += 1
            inner_eval(tokens)

        self.llm.eval = counting_eval  # instance attribute: Llama.generate calls self.eval(...)
        self.draft: _CountingDraft | None = None
        if draft is not None:
            self.draft = _CountingDraft(draft)
            self.llm.draft_model = self.draft

    def info(self) -> dict[str, Any]:
        return {"flash_attn": self.flash_attn, "build": build_info()}

    def tokenize_chat(self, messages: list[dict[str, str]]) -> list[int]:
        raise NotImplementedError("the coordinator tokenizes with an sdfp worker")

    def detokenize(self, ids: list[int]) -> str:
        raise NotImplementedError("the coordinator detokenizes with an sdfp worker")

    def run(self, req: Request) -> Trace:
        llm = self.llm
        llm.reset()  # no prefix reuse from the previous prompt: prefill like every other system
        self.evals = 0
        if self.draft is not None:
            self.draft.drafted = 0
        if req.temperature != 0:
            llm.set_seed(req.seed)
        params = peer_sampling(req.temperature)
        vocab = llm._model.vocab
        trace = Trace()
        t0 = time.perf_counter()
        gen = llm.generate(list(req.ids), repeat_penalty=1.0, **params)
        try:
            for tok in gen:
                trace.times.append(time.perf_counter() - t0)
                trace.tokens.append(int(tok))
                trace.first_cycle += self.evals == 1  # the prompt's eval produces the first token(s)
                if self._llama_cpp.llama_vocab_is_eog(vocab, int(tok)) or len(trace.tokens) >= req.max_tokens:
                    break
        finally:
            gen.close()
        trace.verifies = self.evals
        if self.draft is not None:
            trace.drafted = self.draft.drafted
            # every eval emits its accepted drafts + one token; the last may be cut by the stop
            trace.accepted = max(0, len(trace.tokens) - self.evals)
        return trace

    def close(self) -> None:
        self.llm.close()


RUNNERS = {"sdfp": SdfpSystem, "llama-cpp-python": LlamaCppSystem}


# --- the loop --------------------------------------------------------------------------------------
def _answer(out: Any, obj: dict[str, Any]) -> None:
    out.write(json.dumps(obj) + "\n")
    out.flush()


def _error(e: BaseException) -> dict[str, Any]:
    return {"error": str(e) or type(e).__name__, "type": type(e).__name__,
            "traceback": "".join(traceback.format_exception(e))[-4000:]}


def serve(inp: Any, out: Any) -> None:
    """Open the system described by the first line, then answer one request per line."""
    first = json.loads(inp.readline() or "null")
    if not isinstance(first, dict):
        _answer(out, {"error": "no system spec on the first line", "type": "ValueError"})
        return
    spec, load = SystemSpec(**first["spec"]), LoadConfig(**first["load"])
    t0 = time.perf_counter()
    try:
        system: System = RUNNERS[spec.runner](spec, load)
    except Exception as e:  # reported to the coordinator, which names the system
        _answer(out, _error(e))
        return
    try:
        _answer(out, {"ready": {"load_s": time.perf_counter() - t0, "info": system.info()}})
        served = 0
        for line in inp:
            msg = json.loads(line)
            try:
                if msg["op"] == "tokenize_chat":
                    _answer(out, {"ids": system.tokenize_chat(msg["messages"])})
                elif msg["op"] == "detokenize":
                    _answer(out, {"text": system.detokenize(msg["ids"])})
                elif msg["op"] == "generate":
                    trace = system.run(Request(**msg["request"]))
                    served += 1
                    trace.request = served
                    _answer(out, {"trace": trace.to_json()})
                else:
                    _answer(out, {"error": f"unknown op {msg['op']!r}", "type": "ValueError"})
            except Exception as e:
                _answer(out, _error(e))
    finally:
        system.close()


def main() -> None:
    # The protocol keeps the real stdout; anything else printed there (llama.cpp's C code, a
    # library's print) goes to stderr, so it can never corrupt a message.
    out = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    serve(sys.stdin, out)


if __name__ == "__main__":
    main()
