"""Run every system on every prompt in one process, interleaved prompt by prompt.

One GGUF is opened once (`Model`): its backend serves every sdfp system, each a
`SpeculativeDecoder` with its own controller; llama-cpp-python's `Llama` opens the same
file for the peers, with the same context size and threads. For each prompt every system
runs once, in an order rotated from prompt to prompt (no system always runs first or
right after another), each prefilling the prompt from an empty KV cache. Load drift on
the machine therefore hits all systems alike, and ratios are paired per prompt.

Before the first prompt each system generates once from a fixed warm-up message (not
recorded): graphs are allocated, pages are touched, and the sdfp decoders measure their
verify and draft costs.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sdfp_edge import __version__
from sdfp_edge.bench.data import HUMANEVAL_INSTRUCTION, SOURCES, Prompt
from sdfp_edge.bench.stats import RunRecord, decode_window, first_divergence, summarize
from sdfp_edge.bench.systems import BASELINE_LISTS, EngineSystem, LlamaCppSystem, Trace
from sdfp_edge.errors import ContextOverflowError, InvalidRequestError
from sdfp_edge.models import sha256_file
from sdfp_edge.sampling import SamplingParams

SCHEMA = "sdfp-edge-bench/1"
BASE = "off"
SDFP_SYSTEMS = ("off", "auto", "layerskip", "lookup", "draft-model")
PEER_SYSTEMS = ("llama-cpp", "llama-cpp-lookup")
SYSTEMS = (*SDFP_SYSTEMS, *PEER_SYSTEMS, *BASELINE_LISTS)
WARMUP_MESSAGE = "Say hello."
BUSY_LOAD = 0.25  # load average per usable CPU, before the bench starts, above which it warns
# llama-cpp-python's README: num_pred_tokens "10 is the default and generally good for gpu,
# 2 performs better for cpu-only machines"; the peer follows that advice
PEER_LOOKUP_TOKENS = {"cpu": 2, "gpu": 10}


@dataclass
class BenchConfig:
    model: str | None = None
    n_ctx: int = 4096
    threads: int | None = None
    n_gpu_layers: int | None = None
    seed: int = 0
    verbose: bool = False
    max_tokens: int = 128
    temperature: float = 0.0
    systems: Sequence[str] | None = None  # None: every system available
    skip_layers: Sequence[int] | None = None  # None: the GGUF's sdfp metadata
    draft_model: str | None = None
    k_max: int = 4
    threshold: float = 0.8
    data: Sequence[str] = ("mtbench", "humaneval")
    categories: Sequence[str] | None = None
    limit: int | None = None
    command: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


# --- what was measured, on what ------------------------------------------------------------------
def _cpuinfo() -> list[dict[str, str]]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    cpus = []
    for block in text.strip().split("\n\n"):
        entry = {}
        for line in block.splitlines():
            if ":" in line:
                k, v = line.split(":", 1)
                entry[k.strip()] = v.strip()
        cpus.append(entry)
    return cpus


def machine_info(n_threads: int) -> dict[str, Any]:
    cpus = _cpuinfo()
    model = cpus[0].get("model name") if cpus else None
    cores = {(c.get("physical id"), c.get("core id")) for c in cpus if "core id" in c}
    mem = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return {
        "cpu": model or platform.processor() or platform.machine(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "physical_cores": len(cores) or None,
        "threads": n_threads,
        "memory_gib": mem,
        "os": platform.platform(),
        "python": platform.python_version(),
        "load_average_start": list(os.getloadavg()),
    }


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=Path(__file__).resolve().parent, check=False,
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def build_info() -> dict[str, Any]:
    import llama_cpp
    import numpy

    info = llama_cpp.llama_print_system_info()
    return {
        "sdfp_edge": __version__,
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": None if (s := _git("status", "--porcelain", "--untracked-files=no")) is None else bool(s),
        "llama_cpp_python": llama_cpp.__version__,
        "llama_cpp_system_info": info.decode() if isinstance(info, bytes) else str(info),
        "numpy": numpy.__version__,
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
    }


def model_info(backend: Any) -> dict[str, Any]:
    import gguf

    from sdfp_edge.backend import describe

    d = describe(backend)
    ft = d.get("file_type", "")
    try:
        d["weight_format"] = gguf.LlamaFileType(int(ft)).name.removeprefix("MOSTLY_")
    except (ValueError, TypeError):
        d["weight_format"] = f"file_type {ft}" if ft else "unknown"
    p = Path(backend.path)
    d.update(path=str(p), size_bytes=p.stat().st_size, sha256=sha256_file(p))
    return d


# --- building the systems ------------------------------------------------------------------------
def _wanted(cfg: BenchConfig, available: dict[str, str | None], notes: list[str]) -> list[str]:
    """The systems to run: `cfg.systems` (all must be available) or every available one."""
    if cfg.systems is not None:
        unknown = [s for s in cfg.systems if s not in SYSTEMS]
        if unknown:
            raise InvalidRequestError(f"unknown system(s) {', '.join(unknown)}; choose from {', '.join(SYSTEMS)}")
        missing = [f"{s} ({available[s]})" for s in cfg.systems if available[s]]
        if missing:
            raise InvalidRequestError(f"not available: {'; '.join(missing)}")
        names = [s for s in SYSTEMS if s in cfg.systems]
        if BASE not in names:
            names.insert(0, BASE)
            notes.append(f"'{BASE}' added: every ratio is taken against it")
        return names
    names = []
    for s in SYSTEMS:
        if available[s]:
            notes.append(f"system {s} left out: {available[s]}")
        else:
            names.append(s)
    return names


def build_systems(model: Any, cfg: BenchConfig, notes: list[str]) -> tuple[list[Any], dict[str, Any]]:
    """The systems to compare, and the skip lists the layer-skip ones use (with their sources)."""
    drafters = model.decoder.drafters
    fit = list(model.skip_layers)
    no_list = None if fit else "no skip list: the GGUF has no sdfp.* metadata and no --skip-layers was given"
    available: dict[str, str | None] = {s: None for s in SYSTEMS}
    for s in ("layerskip", *BASELINE_LISTS):
        available[s] = no_list
    available["draft-model"] = None if "draft-model" in drafters else "no --draft-model was given"
    names = _wanted(cfg, available, notes)

    skip_lists: dict[str, Any] = {}
    if fit:
        source = ("--skip-layers on the command line" if cfg.skip_layers is not None
                  else getattr(model, "skip_source", "GGUF metadata"))
        skip_lists["layerskip"] = {"layers": fit, "source": source}
    systems: list[Any] = []
    for name in names:
        if name in SDFP_SYSTEMS:
            systems.append(_sdfp_system(name, model, cfg, skip_lists.get("layerskip")))
        elif name in BASELINE_LISTS:
            system, skip_lists[name] = _baseline_system(name, model, cfg, fit, notes)
            systems.append(system)
        else:
            systems.append(_peer_system(name, model, cfg))
    return systems, skip_lists


def _sdfp_system(name: str, model: Any, cfg: BenchConfig, fit: dict[str, Any] | None) -> EngineSystem:
    from sdfp_edge.engine import SpeculativeDecoder

    drafters = model.decoder.drafters
    use = [] if name == "off" else list(drafters.values()) if name == "auto" else [drafters[name]]
    desc = {
        "off": "plain decoding, one token per step (the sdfp engine, mode off)",
        "auto": f"the controller picks per cycle among {', '.join(d.name for d in use)} or plain decoding",
        "layerskip": f"layer-skip draft, layers {fit and fit['layers']} ({fit and fit['source']})",
        "lookup": "prompt-lookup draft only",
        "draft-model": f"separate draft model {Path(str(cfg.draft_model)).name}",
    }[name]
    return EngineSystem(name, "sdfp", desc, SpeculativeDecoder(model.backend, use, mode=name, k_max=cfg.k_max))


def _baseline_system(name: str, model: Any, cfg: BenchConfig, fit: list[int],
                     notes: list[str]) -> tuple[EngineSystem, dict[str, Any]]:
    from sdfp_edge.drafters import SkipLayersDrafter
    from sdfp_edge.engine import SpeculativeDecoder

    b = model.backend
    layers = BASELINE_LISTS[name](b.n_layer, len(fit), cfg.seed)
    how = name.removeprefix("layerskip-").replace("lastk", "last-k")
    source = f"{how} choice of {len(fit)} layers, as many as the layerskip list" + (
        f" (seed {cfg.seed})" if how == "random" else "")
    if layers == sorted(fit):
        source += "; identical to the layerskip list"
        notes.append(f"{name}: its list {layers} is identical to the layerskip list")
    dec = SpeculativeDecoder(b, [SkipLayersDrafter(b, layers, threshold=cfg.threshold)], mode="layerskip",
                             k_max=cfg.k_max)
    return (EngineSystem(name, "baseline", f"layer-skip draft, {how} layers {layers}", dec),
            {"layers": layers, "source": source})


def _peer_system(name: str, model: Any, cfg: BenchConfig) -> LlamaCppSystem:
    import llama_cpp
    from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

    b = model.backend
    lookup = None
    if name == "llama-cpp-lookup":
        lookup = LlamaPromptLookupDecoding(num_pred_tokens=PEER_LOOKUP_TOKENS["gpu" if b.n_gpu_layers else "cpu"])
    # The sdfp backend keeps llama.cpp's default attention setting ("auto": flash attention where the
    # device supports it, as on CPUs); Llama() defaults to flash_attn=False. The peers get the same
    # kernels as `off`, so that their speed is comparable and their greedy output can be identical.
    flash_attn = llama_cpp.llama_context_default_params().flash_attn_type != llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
    llm = llama_cpp.Llama(model_path=str(b.path), n_ctx=b.n_ctx, n_threads=b.n_threads, n_threads_batch=b.n_threads,
                          n_gpu_layers=b.n_gpu_layers, seed=cfg.seed, flash_attn=flash_attn, verbose=cfg.verbose,
                          draft_model=lookup)
    desc = "llama-cpp-python Llama.generate, plain" if lookup is None else (
        f"llama-cpp-python Llama.generate with LlamaPromptLookupDecoding(max_ngram_size={lookup.max_ngram_size}, "
        f"num_pred_tokens={lookup.num_pred_tokens})")
    return LlamaCppSystem(name, f"{desc}; flash_attn={flash_attn} like the sdfp backend", llm)


# --- the run -------------------------------------------------------------------------------------
def _record(prompt: Prompt, n_prompt: int, system: str, trace: Trace) -> RunRecord:
    decode_tokens, decode_s = decode_window(trace.cycles, trace.times)
    n_first = len(trace.tokens) - decode_tokens
    return RunRecord(
        prompt_id=prompt.id, category=prompt.category, system=system, prompt_tokens=n_prompt,
        tokens=len(trace.tokens), decode_tokens=decode_tokens, decode_s=decode_s,
        first_s=trace.times[n_first - 1] if trace.tokens else 0.0,
        total_s=trace.times[-1] if trace.times else 0.0,
        verifies=trace.verifies, drafted=trace.drafted, accepted=trace.accepted,
        draft_steps=trace.draft_steps, steps_by_drafter=dict(trace.steps_by_drafter),
        engine_tokens_per_second=trace.engine_tokens_per_second,
    )


def _rounds(prompts: Sequence[Prompt], systems: Sequence[Any], ids: dict[str, list[int]], cfg: BenchConfig,
            sampling: SamplingParams, is_eog: Callable[[int], bool], progress: bool) -> list[RunRecord]:
    """Every system on every prompt; the order of the systems rotates from prompt to prompt."""
    from tqdm import tqdm

    records: list[RunRecord] = []
    with tqdm(total=len(prompts) * len(systems), unit="run", desc="bench", disable=not progress,
              file=sys.stderr, dynamic_ncols=True) as bar:
        for i, p in enumerate(prompts):
            shift = i % len(systems)
            traces: dict[str, Trace] = {}
            for s in [*systems[shift:], *systems[:shift]]:
                bar.set_postfix_str(f"{p.category} {s.name}", refresh=False)
                traces[s.name] = s.run(ids[p.id], max_tokens=cfg.max_tokens, sampling=sampling, is_eog=is_eog)
                bar.update()
            for s in systems:  # records in the systems' own order
                rec = _record(p, len(ids[p.id]), s.name, traces[s.name])
                rec.divergence = first_divergence(traces[s.name].tokens, traces[BASE].tokens)
                records.append(rec)
    return records


def run(
    prompts: Sequence[Prompt],
    cfg: BenchConfig,
    *,
    progress: bool = True,
    log: Callable[[str], object] = lambda m: print(m, file=sys.stderr),
) -> dict[str, Any]:
    """Run the bench and return the result document (report.py writes it out)."""
    from sdfp_edge.api import Model

    if not prompts:
        raise InvalidRequestError("no prompts to run")
    t_start = time.perf_counter()
    created = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    notes: list[str] = []
    sampling = SamplingParams(temperature=cfg.temperature, seed=cfg.seed)
    systems: list[Any] = []
    with Model(cfg.model, n_ctx=cfg.n_ctx, n_threads=cfg.threads, n_gpu_layers=cfg.n_gpu_layers, mode="off",
               skip_layers=cfg.skip_layers, draft_model=cfg.draft_model, k_max=cfg.k_max,
               threshold=cfg.threshold, verbose=cfg.verbose, log=notes.append) as model:
        b = model.backend
        machine = machine_info(b.n_threads)
        load, cpus = machine["load_average_start"][0], machine["usable_cpus"] or 1
        if load > BUSY_LOAD * cpus:
            notes.append(f"the machine was busy when the run started (1-minute load average {load:.1f} on "
                         f"{cpus} CPUs): timings are noisy; take figures to publish on a quiet machine")
        ids = {p.id: model.tokenize_chat(p.messages) for p in prompts}
        too_long = [pid for pid, t in ids.items() if len(t) + cfg.max_tokens + cfg.k_max + 2 > b.n_ctx]
        if too_long:
            raise ContextOverflowError(f"{len(too_long)} prompt(s) (e.g. {too_long[0]}) do not fit "
                                       f"{cfg.max_tokens} new tokens in a context of {b.n_ctx}; raise --ctx-size")
        try:
            systems, skip_lists = build_systems(model, cfg, notes)
            for note in notes:
                log(note)
            warm = model.tokenize_chat([{"role": "user", "content": WARMUP_MESSAGE}])
            for s in systems:  # not recorded: allocations, page faults, the decoders' cost calibration
                s.run(warm, max_tokens=min(16, cfg.max_tokens), sampling=sampling, is_eog=b.is_eog)
            records = _rounds(prompts, systems, ids, cfg, sampling, b.is_eog, progress)
        finally:
            for s in systems:
                s.close()
        cost_models = {s.name: s.cost_model() for s in systems}
        costs = {s.name: s.costs() for s in systems}
        info_model = model_info(b)
        dm: Any = model.decoder.drafters.get("draft-model")  # a DraftModelDrafter: its own backend
        info_draft = model_info(dm.backend) if dm is not None else None
    machine["load_average_end"] = list(os.getloadavg())
    categories = list(dict.fromkeys(p.category for p in prompts))
    summary = summarize(records, systems=[s.name for s in systems], categories=categories, costs=costs,
                        base=BASE, compare_ids=sampling.greedy)
    return {
        "schema": SCHEMA,
        "created": created,
        "command": cfg.command,
        "elapsed_s": time.perf_counter() - t_start,
        "machine": machine,
        "build": build_info(),
        "model": info_model,
        "draft_model": info_draft,
        "config": {
            "max_tokens": cfg.max_tokens, "temperature": cfg.temperature, "greedy": sampling.greedy,
            "seed": cfg.seed, "n_ctx": cfg.n_ctx, "threads": machine["threads"], "draft_max": cfg.k_max,
            "draft_p_min": cfg.threshold, "limit_per_category": cfg.limit, "data": list(cfg.data),
            "categories": categories, **cfg.extra,
        },
        "data": {
            "sources": {name: {"package": s.requirement, "file": s.member} for name, s in SOURCES.items()
                        if name in cfg.data},
            "prompt_format": "one user message, rendered with the model's chat template",
            "humaneval_instruction": HUMANEVAL_INSTRUCTION,
            "prompts": [{"id": p.id, "category": p.category, "tokens": len(ids[p.id])} for p in prompts],
        },
        "base": BASE,
        "systems": [{"name": s.name, "kind": s.kind, "description": s.description} for s in systems],
        "skip_lists": skip_lists,
        "cost_models": cost_models,
        "notes": notes,
        "runs": [{**asdict(r), "decode_rate": r.decode_rate, "end_to_end_rate": r.end_to_end_rate}
                 for r in records],
        "summary": [row.as_dict() for row in summary],
    }
