"""Run every system on every prompt, each system in its own process, interleaved prompt by prompt.

The coordinator (this module; it never imports llama.cpp) starts one process per system,
one after another so that each loads the model alone: a `worker.py` process for sdfp-edge
and llama-cpp-python, or llama.cpp's own `llama-server`. Every process gets the user's
environment untouched and the same model file, context size and threads. For each prompt
every system runs once, in an order rotated from prompt to prompt (no system always runs
first or right after another), one process computing at a time, each prefilling the
prompt from an empty KV cache. Load drift on the machine therefore hits all systems
alike, and ratios are paired per prompt.

Nothing runs unrecorded: a process's first request is measured as it is and carries
whatever that system pays to warm up (graph allocation, page faults, cost calibration).
Model load time is reported separately. The headline ratio is end-to-end against plain
llama.cpp (`llama-cpp`); our own `off` is a second reference.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from sdfp_edge import __version__
from sdfp_edge.bench import llama_server
from sdfp_edge.bench.data import DEFAULT_DATA, EDIT_INSTRUCTION, HUMANEVAL_INSTRUCTION, SOURCES, Prompt
from sdfp_edge.bench.processes import SystemProcess, WorkerError, WorkerProcess
from sdfp_edge.bench.protocol import LoadConfig, Request, Trace
from sdfp_edge.bench.stats import RunRecord, decode_window, first_divergence, summarize
from sdfp_edge.bench.systems import BASE, OFF, Setup, baseline_layers, choose, spec_for, start_order
from sdfp_edge.errors import ContextOverflowError, InvalidRequestError

SCHEMA = "sdfp-edge-bench/2"
REFERENCES = (BASE, OFF)  # every ratio is taken against these; the first is the headline
BUSY_LOAD = 0.25  # load average per usable CPU, before the bench starts, above which it warns


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
    repeats: int = 1  # rounds over the prompts; ratios are paired per prompt and round
    systems: Sequence[str] | None = None  # None: every system available
    skip_layers: Sequence[int] | None = None  # None: the GGUF's sdfp metadata
    draft_model: str | None = None
    k_max: int = 4
    threshold: float = 0.8
    # sdfp: True: reuse (and update) the user's persisted cost measurements; None: a store of the
    # bench's own, empty at the start (the first request learns, as on a first run); False: none
    cost_cache: bool | None = None
    build_peers: bool = False  # build llama-server first if it is not cached
    data: Sequence[str] = DEFAULT_DATA
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


def thp_mode() -> str | None:
    """The system's transparent-huge-page mode (always, madvise, never): it decides whether
    sdfp-edge's huge-page advice (backend.huge_pages_wanted) changes anything."""
    try:
        text = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return None
    return text[text.index("[") + 1:text.index("]")] if "[" in text and "]" in text else None


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
        "transparent_hugepage": thp_mode(),
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


def build_info(runtime: dict[str, Any], server: dict[str, Any] | None) -> dict[str, Any]:
    """sdfp-edge's revision, the runtime a worker loaded, and the llama-server that ran."""
    return {
        "sdfp_edge": __version__,
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": None if (s := _git("status", "--porcelain", "--untracked-files=no")) is None else bool(s),
        **runtime,
        "llama_server": server,
    }


def gguf_info(path: Path) -> dict[str, Any]:
    """The model file: name, architecture, layers, weight format, size and sha256 (header only)."""
    import gguf

    from sdfp_edge.metadata import model_info, read_kv
    from sdfp_edge.models import sha256_file

    kv = read_kv(path)
    arch, n_layer = model_info(kv, path)
    ft = kv.get("general.file_type")
    try:
        fmt = gguf.LlamaFileType(int(ft)).name.removeprefix("MOSTLY_")  # type: ignore[arg-type]
    except (ValueError, TypeError):
        fmt = f"file_type {ft}" if ft is not None else "unknown"
    return {"model": path.name, "architecture": arch, "n_layer": n_layer, "weight_format": fmt, "path": str(path),
            "size_bytes": path.stat().st_size, "sha256": sha256_file(path)}


# --- the systems' processes ----------------------------------------------------------------------
def _setup(cfg: BenchConfig, model: Path, log: Callable[[str], object]) -> Setup:
    from sdfp_edge.api import resolve_skip_layers
    from sdfp_edge.models import resolve_model

    choice = resolve_skip_layers(model, cfg.skip_layers)
    wants_server = cfg.systems is None or any(s.startswith("llama-server") for s in cfg.systems)
    server, missing = llama_server.find_binary() if wants_server else (None, "not asked for")
    if server is None and wants_server and cfg.build_peers:
        log("building llama-server from the pinned llama.cpp source (tools/build_llama_server.py)")
        server, missing = llama_server.build_binary(), ""
    return Setup(fit=choice.layers, fit_source="--skip-layers on the command line" if cfg.skip_layers is not None
                 else choice.source, fit_from_cli=cfg.skip_layers is not None, n_layer=choice.n_layer,
                 draft_model=None if cfg.draft_model is None else resolve_model(cfg.draft_model),
                 server=server, server_missing=missing, seed=cfg.seed)


def _start(name: str, setup: Setup, load: LoadConfig, log_dir: Path) -> SystemProcess:
    spec = spec_for(name, setup)
    if spec.runner == "llama-server":
        assert setup.server is not None
        return llama_server.LlamaServerProcess(spec, load, setup.server, log_dir)
    return WorkerProcess(spec, load, log_dir)


def _start_all(names: Sequence[str], setup: Setup, load: LoadConfig, log_dir: Path, procs: list[SystemProcess],
               log: Callable[[str], object]) -> None:
    """Start the systems one after another (each loads alone), in start_order; append each to procs."""
    for name in start_order(names):
        log(f"starting {name}")
        procs.append(_start(name, setup, load, log_dir))


def _skip_lists(names: Sequence[str], setup: Setup) -> dict[str, Any]:
    """The layer lists of the layer-skip systems that ran, and where each comes from."""
    lists: dict[str, Any] = {}
    if setup.fit and {"auto", "layerskip"} & set(names):
        lists["layerskip"] = {"layers": list(setup.fit), "source": setup.fit_source}
    for name in names:
        if name.startswith("layerskip-"):
            layers, source = baseline_layers(name, setup)
            lists[name] = {"layers": layers, "source": source}
    return lists


def _record(prompt: Prompt, n_prompt: int, system: str, trace: Trace, repeat: int) -> RunRecord:
    decode_tokens, decode_s = decode_window(trace.first_cycle, trace.times)
    return RunRecord(
        prompt_id=prompt.id, category=prompt.category, system=system, prompt_tokens=n_prompt,
        tokens=len(trace.tokens), decode_tokens=decode_tokens, decode_s=decode_s,
        first_s=trace.times[trace.first_cycle - 1] if trace.tokens else 0.0,
        total_s=trace.times[-1] if trace.times else 0.0,
        verifies=trace.verifies, drafted=trace.drafted, accepted=trace.accepted,
        draft_steps=trace.draft_steps, steps_by_drafter=dict(trace.steps_by_drafter), repeat=repeat,
        first_request=trace.request == 1, system_stats=trace.system_stats,
    )


def _rounds(prompts: Sequence[Prompt], procs: Sequence[SystemProcess], ids: dict[str, list[int]], cfg: BenchConfig,
            progress: bool, failures: list[dict[str, Any]]) -> tuple[list[RunRecord], dict[str, Trace]]:
    """Every system on every prompt, cfg.repeats times; the order of the systems rotates.

    A request that a system fails is appended to `failures` and left out of the records
    (a prompt that the reference failed is left out for every system); the run goes on."""
    from tqdm import tqdm

    records: list[RunRecord] = []
    last: dict[str, Trace] = {}
    n = len(procs)
    with tqdm(total=cfg.repeats * len(prompts) * n, unit="run", desc="bench", disable=not progress,
              file=sys.stderr, dynamic_ncols=True) as bar:
        for rep in range(cfg.repeats):
            for i, p in enumerate(prompts):
                shift = (rep * len(prompts) + i) % n
                req = Request(ids=ids[p.id], max_tokens=cfg.max_tokens, temperature=cfg.temperature, seed=cfg.seed)
                traces: dict[str, Trace] = {}
                for proc in [*procs[shift:], *procs[:shift]]:
                    bar.set_postfix_str(f"{p.category} {proc.spec.name}", refresh=False)
                    try:
                        traces[proc.spec.name] = proc.run(req)
                    except WorkerError as e:
                        failures.append({"system": proc.spec.name, "prompt_id": p.id, "repeat": rep,
                                         "error": str(e)[:2000]})
                        print(f"{proc.spec.name} failed on {p.id}: {str(e).splitlines()[0]}", file=sys.stderr)
                    bar.update()
                if BASE not in traces:  # nothing to pair this prompt's runs with
                    continue
                for proc in procs:  # records in the systems' own order
                    name = proc.spec.name
                    if name in traces:
                        rec = _record(p, len(ids[p.id]), name, traces[name], rep)
                        rec.divergence = first_divergence(traces[name].tokens, traces[BASE].tokens)
                        records.append(rec)
                last.update(traces)
    return records, last


def run(
    prompts: Sequence[Prompt],
    cfg: BenchConfig,
    *,
    progress: bool = True,
    log: Callable[[str], object] = lambda m: print(m, file=sys.stderr),
) -> dict[str, Any]:
    """Run the bench and return the result document (report.py writes it out as bench.json).

    Returns:
        The document of schema SCHEMA ("sdfp-edge-bench/2"; schema 1 ran every system in one
        process after an unrecorded warm-up and took ratios against `off` only):

        schema, created, command, elapsed_s
        machine       cpu, logical/usable CPUs, physical_cores, threads, memory_gib, os, python,
                      load_average_start, load_average_end
        build         sdfp_edge, git_commit, git_dirty, llama_cpp_python, llama_cpp_system_info, numpy,
                      OMP_WAIT_POLICY (as every process saw it), llama_server {binary, source,
                      build_info} or null
        model         gguf_info(): model, architecture, n_layer, weight_format, path, size_bytes,
                      sha256; draft_model the same, or null
        config        max_tokens, temperature, greedy, seed, n_ctx, threads, n_gpu_layers, draft_max,
                      draft_p_min, repeats, cost_cache, limit_per_category, data, categories, ...extra
        data          sources, prompt_format, humaneval_instruction, edit_instruction,
                      prompts [{id, category, tokens}]
        base          "llama-cpp", the headline reference; references ["llama-cpp", "off"]
        systems       [{name, kind, description, load_s, started (1 = first process started;
                      systems.start_order), command (llama-server's, else null)}]
        skip_lists    {system: {layers, source}}; cost_models {system: its last cost model}
        notes         [str], one per failed request too
        failures      [{system, prompt_id, repeat, error}]: requests a system failed, left out
        runs          one per (system, prompt, repeat): stats.RunRecord's fields, decode_rate,
                      end_to_end_rate
        summary       per (system, category or "all"): stats.SummaryRow's fields, with
                      vs {reference: {end_to_end, decode: {median, min, max, n}} or null}
    """
    from sdfp_edge.runtime.backend import default_threads
    from sdfp_edge.models import resolve_model

    if not prompts:
        raise InvalidRequestError("no prompts to run")
    if cfg.repeats < 1:
        raise InvalidRequestError(f"repeats must be >= 1, got {cfg.repeats}")
    t_start = time.perf_counter()
    created = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    notes: list[str] = []
    model = resolve_model(cfg.model)
    threads = cfg.threads or default_threads()
    machine = machine_info(threads)
    load_avg, cpus = machine["load_average_start"][0], machine["usable_cpus"] or 1
    if load_avg > BUSY_LOAD * cpus:
        notes.append(f"the machine was busy when the run started (1-minute load average {load_avg:.1f} on "
                     f"{cpus} CPUs): timings are noisy; take figures to publish on a quiet machine")
    setup = _setup(cfg, model, log)
    try:
        names = choose(cfg.systems, setup, notes)
    except ValueError as e:
        raise InvalidRequestError(str(e)) from e
    for note in notes:
        log(note)
    load = LoadConfig(model=str(model), n_ctx=cfg.n_ctx, threads=threads, n_gpu_layers=cfg.n_gpu_layers,
                      k_max=cfg.k_max, threshold=cfg.threshold, verbose=cfg.verbose, cost_cache=cfg.cost_cache)
    procs: list[SystemProcess] = []
    ids: dict[str, list[int]] = {}
    failures: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="sdfp-bench-") as log_dir:
        if cfg.cost_cache is None:  # the bench's own cost store, fresh: the user's is neither read nor written
            load = replace(load, cost_dir=str(Path(log_dir) / "costs"))
        try:
            _start_all(names, setup, load, Path(log_dir), procs, log)
            off = procs[0]
            assert isinstance(off, WorkerProcess)
            ids.update((p.id, off.tokenize_chat(p.messages)) for p in prompts)  # the chat template, once
            _check_fit(ids, cfg)
            procs.sort(key=lambda p: names.index(p.spec.name))
            records, last = _rounds(prompts, procs, ids, cfg, progress, failures)
        finally:
            for proc in procs:
                proc.close()
    by_name = {p.spec.name: p for p in procs}
    machine["load_average_end"] = list(os.getloadavg())
    categories = list(dict.fromkeys(p.category for p in prompts))
    greedy = cfg.temperature == 0
    summary = summarize(records, systems=names, categories=categories, costs={n: t.costs for n, t in last.items()},
                        references=REFERENCES, compare_ids=greedy)
    server_info = next((p.info for p in procs if p.spec.runner == "llama-server"), None)
    return {
        "schema": SCHEMA,
        "created": created,
        "command": cfg.command,
        "elapsed_s": time.perf_counter() - t_start,
        "machine": machine,
        "build": build_info(by_name[OFF].info["build"], None if server_info is None else
                            {"binary": str(setup.server), "source": llama_server.SOURCE,
                             "build_info": server_info.get("build_info")}),
        "model": gguf_info(model),
        "draft_model": None if setup.draft_model is None else gguf_info(setup.draft_model),
        "config": {
            "max_tokens": cfg.max_tokens, "temperature": cfg.temperature, "greedy": greedy, "seed": cfg.seed,
            "n_ctx": cfg.n_ctx, "threads": threads, "n_gpu_layers": cfg.n_gpu_layers, "draft_max": cfg.k_max,
            "draft_p_min": cfg.threshold, "repeats": cfg.repeats, "cost_cache": cfg.cost_cache,
            "limit_per_category": cfg.limit, "data": list(cfg.data), "categories": categories, **cfg.extra,
        },
        "data": {
            "sources": {name: {"package": s.requirement, "file": s.member} for name, s in SOURCES.items()
                        if name in cfg.data},
            "prompt_format": "one user message, rendered with the model's chat template",
            "humaneval_instruction": HUMANEVAL_INSTRUCTION,
            "edit_instruction": EDIT_INSTRUCTION,
            "prompts": [{"id": p.id, "category": p.category, "tokens": len(ids[p.id])} for p in prompts],
        },
        "base": BASE,
        "references": list(REFERENCES),
        "systems": [{"name": n, "kind": by_name[n].spec.kind, "description": by_name[n].spec.description,
                     "load_s": by_name[n].load_s, "started": start_order(names).index(n) + 1,
                     "command": by_name[n].info.get("command")} for n in names],
        "skip_lists": _skip_lists(names, setup),
        "cost_models": {n: t.cost_model for n, t in last.items()},
        "notes": notes + [f"{f['system']} failed on {f['prompt_id']} (left out): {f['error'].splitlines()[0]}"
                          for f in failures],
        "failures": failures,
        "runs": [{**asdict(r), "decode_rate": r.decode_rate, "end_to_end_rate": r.end_to_end_rate}
                 for r in records],
        "summary": [row.as_dict() for row in summary],
    }


def _check_fit(ids: dict[str, list[int]], cfg: BenchConfig) -> None:
    if cfg.n_ctx <= 0:  # the model's training context: llama.cpp checks each request
        return
    too_long = [pid for pid, t in ids.items() if len(t) + cfg.max_tokens + cfg.k_max + 2 > cfg.n_ctx]
    if too_long:
        raise ContextOverflowError(f"{len(too_long)} prompt(s) (e.g. {too_long[0]}) do not fit "
                                   f"{cfg.max_tokens} new tokens in a context of {cfg.n_ctx}; raise --ctx-size")
