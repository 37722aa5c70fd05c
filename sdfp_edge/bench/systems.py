"""The systems the bench compares: their names, what each one is, and when it is available.

    llama-cpp                  llama-cpp-python's `Llama`, plain: llama.cpp as its Python users
                               run it, the reference of every headline ratio
    llama-cpp-lookup           the same with its `LlamaPromptLookupDecoding`
    off, auto, layerskip,      sdfp-edge's Model in that mode (`off` decodes plainly in our
    lookup, draft-model        own engine: kept as a column, never the headline)
    llama-server[-TYPE]        llama.cpp's own server, plain, with its self-speculative n-gram
                               drafts (--spec-type ngram-*), or with --draft-model as its draft
                               model (draft-simple); needs tools/build_llama_server.py
    layerskip-random|uniform|lastk   layer-skip drafts with other layer lists (draft-quality controls)
    off-again                  on request only: a second `off` process, the A/A control

Layer lists for the draft-quality controls have the FIT list's length and never contain
the last layer (the runtime refuses it):

    random:  a seeded sample of the layers 0..L-2
    uniform: the centres of k equal bins over 0..L-2, e.g. L=30, k=5 -> [2, 8, 14, 20, 26]
    last-k:  the k layers just before the last, e.g. L=30, k=5 -> [24, 25, 26, 27, 28]

Nothing here loads a model: specs are plain data, run by worker.py or llama_server.py.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sdfp_edge.bench.llama_server import NGRAM_SPEC_TYPES
from sdfp_edge.bench.protocol import SystemSpec

BASE = "llama-cpp"  # the headline reference: plain llama.cpp as its users run it
OFF = "off"  # our own plain decoding, a column of its own
PEERS = ("llama-cpp", "llama-cpp-lookup")
SDFP_MODES = ("off", "auto", "layerskip", "lookup", "draft-model")
SERVERS = ("llama-server", *(f"llama-server-{t}" for t in NGRAM_SPEC_TYPES), "llama-server-draft")
A_A_CONTROL = "off-again"


# --- layer lists for the draft-quality controls ------------------------------------------------
def random_layers(n_layer: int, k: int, seed: int) -> list[int]:
    rng = np.random.default_rng(seed)
    return sorted(int(i) for i in rng.choice(n_layer - 1, size=k, replace=False))


def uniform_layers(n_layer: int, k: int) -> list[int]:
    width = (n_layer - 1) / k
    return [int((i + 0.5) * width) for i in range(k)]


def last_k_layers(n_layer: int, k: int) -> list[int]:
    return list(range(n_layer - 1 - k, n_layer - 1))


BASELINE_LISTS: dict[str, Callable[[int, int, int], list[int]]] = {
    "layerskip-random": lambda n, k, seed: random_layers(n, k, seed),
    "layerskip-uniform": lambda n, k, seed: uniform_layers(n, k),
    "layerskip-lastk": lambda n, k, seed: last_k_layers(n, k),
}

SYSTEMS = (*PEERS, *SDFP_MODES, *SERVERS, *BASELINE_LISTS)  # every system a default run may include
KNOWN = (*SYSTEMS, A_A_CONTROL)


@dataclass(frozen=True)
class Setup:
    """What decides which systems can run: the skip list, the draft model, the server binary."""

    fit: tuple[int, ...]  # the layerskip list (GGUF metadata or --skip-layers); () when none
    fit_source: str
    fit_from_cli: bool  # given with --skip-layers (else the GGUF's own metadata, which workers read)
    n_layer: int
    draft_model: Path | None
    server: Path | None  # the llama-server binary, or None
    server_missing: str  # why there is no binary (with what to run), when server is None
    seed: int


def why_unavailable(name: str, s: Setup) -> str | None:
    """None if `name` can run with this setup, else the reason it cannot."""
    if name in ("layerskip", *BASELINE_LISTS) and not s.fit:
        return "no skip list: the GGUF has no sdfp.* metadata and no --skip-layers was given"
    if name in ("draft-model", "llama-server-draft") and s.draft_model is None:
        return "no --draft-model was given"
    if name in SERVERS and s.server is None:
        return s.server_missing
    return None


def baseline_layers(name: str, s: Setup) -> tuple[list[int], str]:
    """A control's layer list and where it comes from."""
    layers = BASELINE_LISTS[name](s.n_layer, len(s.fit), s.seed)
    how = name.removeprefix("layerskip-").replace("lastk", "last-k")
    source = f"{how} choice of {len(s.fit)} layers, as many as the layerskip list" + (
        f" (seed {s.seed})" if how == "random" else "")
    if layers == sorted(s.fit):
        source += "; identical to the layerskip list"
    return layers, source


def spec_for(name: str, s: Setup) -> SystemSpec:
    """The spec of one available system."""
    draft = None if s.draft_model is None else str(s.draft_model)
    if name in PEERS:
        lookup = name == "llama-cpp-lookup"
        desc = ("llama-cpp-python Llama.generate, plain" if not lookup else
                "llama-cpp-python Llama.generate with LlamaPromptLookupDecoding (num_pred_tokens 2 on CPU, 10 with "
                "a GPU, as its README advises)")
        return SystemSpec(name, "peer", "llama-cpp-python", desc + "; flash attention as llama.cpp's default",
                          {"lookup": lookup})
    if name in SERVERS:
        spec_type = name.removeprefix("llama-server").removeprefix("-") or None
        options: dict[str, object] = {}
        if spec_type == "draft":
            options = {"spec_type": "draft-simple", "draft_model": draft}
            desc = f"llama.cpp's llama-server, draft model {Path(str(draft)).name} (--spec-type draft-simple)"
        elif spec_type:
            options = {"spec_type": spec_type}
            desc = f"llama.cpp's llama-server, --spec-type {spec_type} (llama.cpp's defaults)"
        else:
            desc = "llama.cpp's llama-server, plain"
        return SystemSpec(name, "server", "llama-server", desc + "; /completion, streamed", options)
    if name in BASELINE_LISTS:
        layers, _ = baseline_layers(name, s)
        how = name.removeprefix("layerskip-").replace("lastk", "last-k")
        return SystemSpec(name, "baseline", "sdfp", f"layer-skip draft, {how} layers {layers}",
                          {"mode": "layerskip", "skip_layers": layers})
    mode = "off" if name == A_A_CONTROL else name
    desc = {
        "off": "plain decoding, one token per step (sdfp-edge's engine, mode off)",
        "auto": "the controller picks per cycle among its drafters or plain decoding",
        "layerskip": f"layer-skip draft only, layers {list(s.fit)} ({s.fit_source})",
        "lookup": "prompt-lookup draft only",
        "draft-model": f"separate draft model {Path(str(draft)).name} only",
    }[mode]
    if name == A_A_CONTROL:
        desc = "a second `off` process: the A/A control (how far identical work moves on this machine)"
    options = {"mode": mode, "skip_layers": list(s.fit) if s.fit_from_cli else None,
               # auto is the product as shipped: one model; a second model is the draft-model system's
               "draft_model": draft if mode == "draft-model" else None}
    return SystemSpec(name, "sdfp", "sdfp", desc, options)


def start_order(names: Sequence[str]) -> list[str]:
    """The order the systems' processes are started in: ours first, the headline reference last.

    Where a process starts matters on some machines: on this project's 2-vCPU VM, a process
    whose weights land in memory that another process has just freed decodes slower, and
    the first process started after a run is the one that gets it (why was not found; the
    VM has a balloon driver, and 4 KB pages hold the weights). Identical `off` processes
    started one after another ran at 14.1 / 14.7 / 15.0 tok/s, and one started after the
    first had exited at 13.6; an hour later 15.5 / 15.8 / 15.9 and 15.2
    (tools/start_order_speed.py, 2026-12-02; with transparent huge pages on, all ran at
    15.9-16.3). So no order is neutral, and this one is conservative: every sdfp-edge system
    starts before every peer, and plain llama.cpp starts last, so any bias counts against
    sdfp-edge. `off` is first (the coordinator tokenizes with it).
    """
    def group(name: str) -> int:
        if name == OFF:
            return 0
        if name == BASE:
            return 3
        return 2 if name in PEERS or name in SERVERS else 1

    return sorted(names, key=group)  # stable: catalogue order within each group


def choose(wanted: Sequence[str] | None, s: Setup, notes: list[str]) -> list[str]:
    """The systems to run, in catalogue order: `wanted` (each must be available) or every available one.

    `llama-cpp` and `off` are always run: every ratio is taken against them.
    Raises ValueError naming what is unknown or unavailable.
    """
    if wanted is None:
        names = []
        for name in SYSTEMS:
            why = why_unavailable(name, s)
            if why:
                notes.append(f"system {name} left out: {why}")
            else:
                names.append(name)
        return names
    unknown = [n for n in wanted if n not in KNOWN]
    if unknown:
        raise ValueError(f"unknown system(s) {', '.join(unknown)}; choose from {', '.join(KNOWN)}")
    missing = [f"{n} ({why})" for n in wanted if (why := why_unavailable(n, s))]
    if missing:
        raise ValueError(f"not available: {'; '.join(missing)}")
    for ref in (BASE, OFF):
        if ref not in wanted:
            notes.append(f"'{ref}' added: ratios are taken against it")
    return [n for n in KNOWN if n in wanted or n in (BASE, OFF)]
