"""What the bench's coordinator and its system processes exchange, as JSON-serialisable data.

Each compared system runs in a process of its own (a `worker.py` process, or llama.cpp's
own `llama-server`); the coordinator sends it one request at a time and gets a `Trace`:

    coordinator -> worker   {"spec": SystemSpec, "load": LoadConfig}          (first line)
    worker -> coordinator   {"ready": {"load_s": ..., "info": {...}}}
    coordinator -> worker   {"op": "tokenize_chat", "messages": [...]}
    worker -> coordinator   {"ids": [...]}
    coordinator -> worker   {"op": "detokenize", "ids": [...]}                (a chat's answer, for its next turn)
    worker -> coordinator   {"text": "..."}
    coordinator -> worker   {"op": "generate", "request": Request}
    worker -> coordinator   {"trace": Trace}
    any failure             {"error": "...", "type": "ExceptionName"}

One JSON object per line; the worker exits at the end of its input.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass(frozen=True)
class SystemSpec:
    """One compared system: what runs it and with which options."""

    name: str  # e.g. "auto", "llama-cpp", "llama-server-ngram-simple"
    kind: str  # "sdfp", "baseline" (layer-list controls), "peer" (llama-cpp-python), "server" (llama-server)
    runner: str  # "sdfp" | "llama-cpp-python" | "llama-server"
    description: str
    # runner options: sdfp {"mode", "skip_layers", "draft_model"}; llama-cpp-python {"lookup_tokens"};
    # llama-server {"spec_type", "draft_model"}
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LoadConfig:
    """How every system opens the model: the same file, context, threads and GPU layers."""

    model: str  # path of the GGUF
    n_ctx: int
    threads: int
    n_gpu_layers: int | None  # None: each system's own default (all layers when a GPU is built)
    k_max: int  # longest model draft (sdfp draft-model and layer-skip, llama-server's draft model)
    threshold: float  # draft confidence stop
    verbose: bool = False
    cost_cache: bool | None = None  # sdfp: reuse persisted cost measurements; None: Model's default
    cost_dir: str | None = None  # sdfp: where they are kept; None: the user's (paths.cost_dir())


@dataclass(frozen=True)
class Request:
    ids: list[int]  # [n] the prompt's token ids, chat template applied
    max_tokens: int
    temperature: float  # 0: greedy
    seed: int


@dataclass
class Trace:
    """What one generation produced, timed inside the system's own process (server: its client)."""

    request: int = 0  # 1-based index of this generation among its process's requests
    tokens: list[int] = field(default_factory=list)  # [n] emitted ids (a final end-of-generation token included)
    times: list[float] = field(default_factory=list)  # [n] seconds from the call to each token's arrival
    first_cycle: int = 0  # tokens emitted by the first verify cycle (prefill + first step)
    verifies: int | None = None  # verify cycles (a plain step counts as one); None: not known
    drafted: int = 0
    accepted: int = 0
    draft_steps: int | None = 0  # draft model evaluations; None: not reported by the system
    steps_by_drafter: dict[str, int] = field(default_factory=dict)
    costs: dict[str, float] = field(default_factory=dict)  # drafter -> c, the measured relative draft cost
    cost_model: dict[str, Any] = field(default_factory=dict)  # sdfp: the controller's cost model after the run
    system_stats: dict[str, Any] = field(default_factory=dict)  # the system's own figures (engine stats, timings)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Trace:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})
