"""Run every system on every prompt, each system in its own process, interleaved prompt by prompt.

The coordinator (this module; it never imports llama.cpp) starts one process per system,
one after another so that each loads the model alone: a `worker.py` process for sdfp-edge
and llama-cpp-python, or llama.cpp's own `llama-server`. Every process gets the user's
environment untouched and the same model file, context size and threads. For each prompt
every system runs once, one process computing at a time, each prefilling the prompt from
an empty KV cache. Each repeat draws an order of the systems from (--seed, repeat), and
that order is rotated by one place from prompt to prompt (no system always runs first or
right after another); the orders and each run's position are recorded. Load drift on the
machine therefore hits all systems alike, and ratios are paired per prompt and repeat,
then summarised by their median with a bootstrap interval (stats.bootstrap_median).
A multi-turn chat runs turn by turn, every system on the same ids, the reference's
answer fed into the next turn.

Each repeat starts every process afresh (what a server learns across requests must not carry
the answers of one round into the next). Nothing runs unrecorded: a process's first request is
measured as it is and carries
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
from typing import Any, Protocol

import numpy as np

from sdfp_edge import __version__
from sdfp_edge.bench import llama_server
from sdfp_edge.bench.data import (CODE_CHAT_FIRST, CODE_EDITS, DEFAULT_DATA, EDIT_INSTRUCTION, HUMANEVAL_INSTRUCTION,
                                  MULTITURN_SOURCES, SOURCES, Prompt)
from sdfp_edge.bench.processes import SystemProcess, WorkerError, WorkerProcess
from sdfp_edge.bench.protocol import LoadConfig, Request, Trace
from sdfp_edge.bench.stats import (BOOTSTRAP_RESAMPLES, CONFIDENCE, RunRecord, SummaryRow, best_of, compare,
                                   decode_window, first_divergence, summarize)
from sdfp_edge.bench.systems import BASE, OFF, Setup, baseline_layers, choose, spec_for, start_order
from sdfp_edge.errors import ContextOverflowError, InvalidRequestError

SCHEMA = "sdfp-edge-bench/3"  # 3: bootstrap intervals, seeded orders per repeat, multi-turn chats, comparisons
READABLE = ("sdfp-edge-bench/2", SCHEMA)  # what report.py can render (2: min-max only)
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
    compare: Sequence[tuple[str, str]] | None = None  # pairs (a, b) to compare; None: auto vs the best ngram server
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


def _spin(info: dict[str, Any]) -> str | None:
    """GOMP_SPINCOUNT as a system's process saw it: a worker reports its own; llama-server inherits the
    bench's environment untouched (llama_server.py)."""
    return info["build"].get("GOMP_SPINCOUNT") if "build" in info else os.environ.get("GOMP_SPINCOUNT")


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
                 draft_model=None if cfg.draft_model is None else resolve_model(cfg.draft_model, log=log),
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


def _chat_record(turns: Sequence[RunRecord], base_tokens: Sequence[int]) -> RunRecord:
    """One chat's turns as one record: counts and times summed (each turn's decode window is its
    own), the first divergence from the base counted in tokens from the chat's first answer."""
    first = turns[0]
    divergence, offset = None, 0
    for t, n in zip(turns, base_tokens):
        if t.divergence is not None:
            divergence = offset + t.divergence
            break
        offset += n
    steps_by: dict[str, int] = {}
    for t in turns:
        for d, n in t.steps_by_drafter.items():
            steps_by[d] = steps_by.get(d, 0) + n
    return RunRecord(
        prompt_id=first.prompt_id, category=first.category, system=first.system,
        prompt_tokens=sum(t.prompt_tokens for t in turns), tokens=sum(t.tokens for t in turns),
        decode_tokens=sum(t.decode_tokens for t in turns), decode_s=sum(t.decode_s for t in turns),
        first_s=sum(t.first_s for t in turns), total_s=sum(t.total_s for t in turns),
        verifies=None if any(t.verifies is None for t in turns) else sum(t.verifies or 0 for t in turns),
        drafted=sum(t.drafted for t in turns), accepted=sum(t.accepted for t in turns),
        draft_steps=None if any(t.draft_steps is None for t in turns) else sum(t.draft_steps or 0 for t in turns),
        steps_by_drafter=steps_by, repeat=first.repeat, first_request=first.first_request, divergence=divergence,
        system_stats={"turns": [{"prompt_tokens": t.prompt_tokens, "tokens": t.tokens, "total_s": t.total_s,
                                 "divergence": t.divergence, **t.system_stats} for t in turns]},
        position=first.position, turns=len(turns),
    )


def round_orders(names: Sequence[str], repeats: int, seed: int) -> list[list[str]]:
    """Each repeat's order of the systems: a permutation drawn from (seed, repeat); within a
    repeat it is rotated from prompt to prompt (`_rounds`)."""
    return [[names[j] for j in np.random.default_rng([seed, rep]).permutation(len(names))] for rep in range(repeats)]


class Chat(Protocol):
    """What a multi-turn prompt needs besides the systems: the chat template and the detokenizer."""

    def tokenize_chat(self, messages: list[dict[str, str]]) -> list[int]: ...
    def detokenize(self, ids: list[int]) -> str: ...


def _rounds(prompts: Sequence[Prompt], procs: Sequence[SystemProcess], ids: dict[str, list[int]], cfg: BenchConfig,
            progress: bool, failures: list[dict[str, Any]], *, chat: Chat | None = None,
            orders: Sequence[Sequence[str]] | None = None, transcripts: list[dict[str, Any]] | None = None,
            repeats: Sequence[int] | None = None) -> tuple[list[RunRecord], dict[str, Trace]]:
    """Every system on every prompt, once per repeat (`repeats`, default 0..cfg.repeats - 1), interleaved.

    In repeat r the systems run in orders[r] (default: their order in procs), rotated by one
    place from prompt to prompt. A multi-turn prompt runs turn by turn: every system answers
    turn t on the same ids, then the base's answer becomes the assistant message before turn
    t + 1 (rendered with the chat template by `chat`), so every system, llama-server included,
    is sent the same conversation; its record sums the turns, and `transcripts` gets the
    fed answers.

    A request that a system fails is appended to `failures` and left out of the records
    (a prompt that the reference failed is left out for every system; a chat that a system
    failed on any turn is left out for that system); the run goes on."""
    from tqdm import tqdm

    records: list[RunRecord] = []
    last: dict[str, Trace] = {}
    n = len(procs)
    by_name = {p.spec.name: p for p in procs}
    reps = list(range(cfg.repeats) if repeats is None else repeats)
    total = len(reps) * sum(1 + len(p.turns) for p in prompts) * n
    with tqdm(total=total, unit="run", desc="bench", disable=not progress, file=sys.stderr,
              dynamic_ncols=True) as bar:
        for rep in reps:
            order = [by_name[name] for name in orders[rep]] if orders is not None else list(procs)
            for i, p in enumerate(prompts):
                shift = i % n
                turn_records: dict[str, list[RunRecord]] = {proc.spec.name: [] for proc in procs}
                base_tokens: list[int] = []
                answers: list[str] = []
                turn_ids = ids[p.id]
                for turn in range(1 + len(p.turns)):
                    if turn > 0:
                        if chat is None:
                            raise ValueError(f"{p.id} has {1 + len(p.turns)} turns: the bench needs a chat")
                        answers.append(chat.detokenize(last[BASE].tokens))
                        turn_ids = chat.tokenize_chat(p.chat(answers))
                        if (why := _too_long(turn_ids, cfg)) is not None:
                            failures.append({"system": "(all)", "prompt_id": p.id, "repeat": rep,
                                             "error": f"turn {turn + 1}: {why}"})
                            bar.update(n * (len(p.turns) + 1 - turn))
                            break
                    req = Request(ids=turn_ids, max_tokens=cfg.max_tokens, temperature=cfg.temperature, seed=cfg.seed)
                    traces: dict[str, Trace] = {}
                    for pos, proc in enumerate([*order[shift:], *order[:shift]]):
                        name = proc.spec.name
                        bar.set_postfix_str(f"{p.category} {name}", refresh=False)
                        if turn > 0 and len(turn_records[name]) < turn:  # it failed an earlier turn
                            bar.update()
                            continue
                        try:
                            traces[name] = proc.run(req)
                        except WorkerError as e:
                            failures.append({"system": name, "prompt_id": p.id, "repeat": rep,
                                             **({"turn": turn + 1} if p.turns else {}), "error": str(e)[:2000]})
                            print(f"{name} failed on {p.id}: {str(e).splitlines()[0]}", file=sys.stderr)
                        else:
                            rec = _record(p, len(turn_ids), name, traces[name], rep)
                            rec.position = pos
                            turn_records[name].append(rec)
                        bar.update()
                    last.update(traces)
                    if BASE not in traces:  # nothing to pair this prompt's runs with
                        break
                    base_tokens.append(len(traces[BASE].tokens))
                    for name, trace in traces.items():
                        turn_records[name][-1].divergence = first_divergence(trace.tokens, traces[BASE].tokens)
                else:  # every turn ran with the base
                    if p.turns and transcripts is not None:
                        answers.append(chat.detokenize(last[BASE].tokens) if chat is not None else "")
                        transcripts.append({"prompt_id": p.id, "repeat": rep, "answers": answers})
                    for proc in procs:  # records in the systems' own order
                        turns = turn_records[proc.spec.name]
                        if len(turns) == 1 + len(p.turns):
                            records.append(turns[0] if len(turns) == 1 else _chat_record(turns, base_tokens))
    return records, last


def _too_long(ids: Sequence[int], cfg: BenchConfig) -> str | None:
    if cfg.n_ctx > 0 and len(ids) + cfg.max_tokens + cfg.k_max + 2 > cfg.n_ctx:
        return f"{len(ids)} prompt tokens do not leave room for {cfg.max_tokens} new ones in a context of {cfg.n_ctx}"
    return None


def run(
    prompts: Sequence[Prompt],
    cfg: BenchConfig,
    *,
    progress: bool = True,
    log: Callable[[str], object] = lambda m: print(m, file=sys.stderr),
) -> dict[str, Any]:
    """Run the bench and return the result document (report.py writes it out as bench.json).

    Returns:
        The document of schema SCHEMA ("sdfp-edge-bench/3"; 2 had no intervals, orders, chats or
        comparisons; 1 ran every system in one process after an unrecorded warm-up):

        schema, created, command, elapsed_s
        machine       cpu, logical/usable CPUs, physical_cores, threads, memory_gib, os, python,
                      load_average_start, load_average_end
        build         sdfp_edge, git_commit, git_dirty, llama_cpp_python, llama_cpp_system_info, numpy,
                      OMP_WAIT_POLICY (as every process saw it), GOMP_SPINCOUNT (as `off` saw it),
                      llama_server {binary, source, build_info} or null
        model         gguf_info(): model, architecture, n_layer, weight_format, path, size_bytes,
                      sha256; draft_model the same, or null
        config        max_tokens, temperature, greedy, seed, n_ctx, threads, n_gpu_layers, draft_max,
                      draft_p_min, repeats, cost_cache, limit_per_category, data, categories,
                      order_seed, orders [[system] per repeat], bootstrap {resamples, seed,
                      confidence}, ...extra
        data          sources, prompt_format, humaneval_instruction, edit_instruction, chat turns,
                      prompts [{id, category, tokens (first turn), turns}], chats [{prompt_id,
                      repeat, answers}]: the base's answers fed into each chat's next turns
        base          "llama-cpp", the headline reference; references ["llama-cpp", "off"]
        systems       [{name, kind, description, load_s, started (1 = first process started;
                      systems.start_order), command (llama-server's, else null), GOMP_SPINCOUNT (as
                      its process saw it: sdfp-edge sets it, llama.cpp's own processes do not)}]
        skip_lists    {system: {layers, source}}; cost_models {system: its last cost model}
        notes         [str], one per failed request too
        failures      [{system, prompt_id, repeat, [turn,] error}]: requests a system failed, left out
        runs          one per (system, prompt, repeat), a chat's turns summed: stats.RunRecord's
                      fields (position in its round's order, turns), decode_rate, end_to_end_rate
        summary       per (system, category or "all"): stats.SummaryRow's fields, with vs
                      {reference: {end_to_end, decode: {median, min, max, n}, end_to_end_interval,
                      decode_interval: {median, lo, hi, n, prompts, call}} or null}
        comparisons   per pair and category or "all": {a, b, category, end_to_end, decode}
                      (intervals of rate(a) / rate(b)); pairs from --compare, else auto against
                      the best llama-server n-gram type that ran
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
    model = resolve_model(cfg.model, log=log)
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
    transcripts: list[dict[str, Any]] = []
    orders = round_orders(names, cfg.repeats, cfg.seed)
    pairs = _pairs(cfg.compare, names)
    records: list[RunRecord] = []
    last: dict[str, Trace] = {}
    with tempfile.TemporaryDirectory(prefix="sdfp-bench-") as log_dir:
        # Every repeat starts every system afresh: llama-server's ngram-mod and ngram-cache keep
        # what they saw across requests, so a second round in the same process drafts the answers
        # it saw in the first (measured: ngram-mod on HumanEval 1.30x, 1.46x, 1.55x of plain in
        # rounds 1-3, docs/bench-method.md); repeats must be samples of one thing, not a memory test.
        for rep in range(cfg.repeats):
            procs = []
            # the bench's own cost store, fresh each repeat: the user's is neither read nor written
            rep_load = replace(load, cost_dir=str(Path(log_dir) / f"costs-{rep}")) if cfg.cost_cache is None else load
            try:
                _start_all(names, setup, rep_load, Path(log_dir), procs, log)
                off = procs[0]
                assert isinstance(off, WorkerProcess)
                if not ids:
                    ids.update((p.id, off.tokenize_chat(p.messages)) for p in prompts)  # the chat template, once
                    _check_fit(ids, cfg)
                procs.sort(key=lambda p: names.index(p.spec.name))
                got, last = _rounds(prompts, procs, ids, cfg, progress, failures, chat=off, orders=orders,
                                    transcripts=transcripts, repeats=[rep])
                records += got
            finally:
                for proc in procs:
                    proc.close()
    by_name = {p.spec.name: p for p in procs}
    machine["load_average_end"] = list(os.getloadavg())
    categories = list(dict.fromkeys(p.category for p in prompts))
    greedy = cfg.temperature == 0
    summary, comparisons = _judge(records, names, categories, {n: t.costs for n, t in last.items()}, REFERENCES,
                                  greedy, pairs, best_vs_auto=cfg.compare is None)
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
            "limit_per_category": cfg.limit, "data": list(cfg.data), "categories": categories,
            "order_seed": cfg.seed, "orders": orders,
            "bootstrap": {"resamples": BOOTSTRAP_RESAMPLES, "confidence": CONFIDENCE,
                          "seed": "per comparison: stats.group_seed(system, reference or b, category)"},
            **cfg.extra,
        },
        "data": {
            "sources": {name: {"package": s.requirement, "file": s.member} for name, s in SOURCES.items()
                        if name in cfg.data or ("multiturn" in cfg.data and name in MULTITURN_SOURCES)},
            "prompt_format": ("one user message, rendered with the model's chat template; a multi-turn chat "
                              "adds, per later turn, the base's answer and the next user message"),
            "humaneval_instruction": HUMANEVAL_INSTRUCTION,
            "edit_instruction": EDIT_INSTRUCTION,
            "chat_turns": {"code": [CODE_CHAT_FIRST, *CODE_EDITS],
                           "text": "an MT-Bench question, then its second turn (which reworks the first answer)"},
            "prompts": [{"id": p.id, "category": p.category, "tokens": len(ids[p.id]), "turns": 1 + len(p.turns)}
                        for p in prompts],
            "chats": transcripts,
        },
        "base": BASE,
        "references": list(REFERENCES),
        "systems": [{"name": n, "kind": by_name[n].spec.kind, "description": by_name[n].spec.description,
                     "load_s": by_name[n].load_s, "started": start_order(names).index(n) + 1,
                     "command": by_name[n].info.get("command"), "GOMP_SPINCOUNT": _spin(by_name[n].info)}
                    for n in names],
        "skip_lists": _skip_lists(names, setup),
        "cost_models": {n: t.cost_model for n, t in last.items()},
        "notes": notes + [f"{f['system']} failed on {f['prompt_id']} (left out): {f['error'].splitlines()[0]}"
                          for f in failures],
        "failures": failures,
        "runs": [{**asdict(r), "decode_rate": r.decode_rate, "end_to_end_rate": r.end_to_end_rate}
                 for r in records],
        "summary": [row.as_dict() for row in summary],
        "comparisons": comparisons,
    }


def _judge(records: Sequence[RunRecord], names: Sequence[str], categories: Sequence[str],
           costs: dict[str, dict[str, float]], references: Sequence[str], greedy: bool,
           pairs: Sequence[tuple[str, str]], *, best_vs_auto: bool) -> tuple[list[SummaryRow], list[dict[str, Any]]]:
    """The summary rows and the pairwise comparisons of these runs; with `best_vs_auto`, `auto`
    is also compared with the llama-server n-gram type that did best against plain llama.cpp."""
    summary = summarize(records, systems=names, categories=categories, costs=costs, references=references,
                        compare_ids=greedy)
    pairs = list(pairs)
    best = best_of([n for n in names if n.startswith("llama-server-ngram")], summary, base=BASE)
    if best_vs_auto and best and "auto" in names and ("auto", best) not in pairs:
        pairs.append(("auto", best))
    return summary, [c.as_dict() for a, b in pairs for c in compare(records, a, b, categories=categories)]


def select_rounds(result: dict[str, Any], rounds: Sequence[int] | None = None,
                  compare: Sequence[tuple[str, str]] = ()) -> dict[str, Any]:
    """The record with only these rounds' runs (None: all), its summary and comparisons
    recomputed from them, with the pairs in `compare` compared too.

    Why: a record made before each repeat started its processes afresh (schema 3 before
    2026-12-05) lets llama-server's ngram-mod and ngram-cache draft, in rounds after the first,
    the answers they saw in it; its first round is still a clean sample. And a comparison that
    was not asked for when the bench ran can be had without running it again."""
    have = sorted({r["repeat"] for r in result["runs"]})
    rounds = have if rounds is None else rounds
    bad = [r for r in rounds if r not in have]
    if bad or not rounds:
        raise InvalidRequestError(f"round(s) {', '.join(map(str, bad)) or '(none)'} not in the record; it has "
                                  f"{', '.join(map(str, have))}")
    fields = set(RunRecord.__dataclass_fields__)
    records = [RunRecord(**{k: v for k, v in r.items() if k in fields}) for r in result["runs"] if r["repeat"] in rounds]
    names = [s["name"] for s in result["systems"]]
    categories = result["config"]["categories"]
    costs = {n: dict((m or {}).get("c", {})) for n, m in result["cost_models"].items()}
    pairs = list(dict.fromkeys([*((c["a"], c["b"]) for c in result["comparisons"]), *_pairs(compare, names)]))
    summary, comparisons = _judge(records, names, categories, costs, result["references"], result["config"]["greedy"],
                                  pairs, best_vs_auto=True)  # the best n-gram type of these rounds
    why = (f"only round(s) {', '.join(map(str, rounds))} of {len(have)}: summary and comparisons recomputed "
           "from them (bench --from-json --rounds)" if sorted(set(rounds)) != have else
           "summary and comparisons recomputed from the record's runs (bench --from-json)")
    if compare:
        why += "; compared as well: " + ", ".join(f"{a} against {b}" for a, b in compare)
    return {**result, "config": {**result["config"], "rounds_selected": list(rounds)},
            "notes": [*result["notes"], why],
            "runs": [r for r in result["runs"] if r["repeat"] in rounds],
            "summary": [row.as_dict() for row in summary], "comparisons": comparisons}


def _pairs(wanted: Sequence[tuple[str, str]] | None, names: Sequence[str]) -> list[tuple[str, str]]:
    """The asked-for comparisons; each system in them must run."""
    pairs = [tuple(p) for p in wanted or []]
    missing = sorted({n for p in pairs for n in p if n not in names})
    if missing:
        raise InvalidRequestError(f"--compare names system(s) that do not run: {', '.join(missing)} "
                                  f"(add them to --systems)")
    return [(a, b) for a, b in pairs]


def _check_fit(ids: dict[str, list[int]], cfg: BenchConfig) -> None:
    if cfg.n_ctx <= 0:  # the model's training context: llama.cpp checks each request
        return
    too_long = [pid for pid, t in ids.items() if len(t) + cfg.max_tokens + cfg.k_max + 2 > cfg.n_ctx]
    if too_long:
        raise ContextOverflowError(f"{len(too_long)} prompt(s) (e.g. {too_long[0]}) do not fit "
                                   f"{cfg.max_tokens} new tokens in a context of {cfg.n_ctx}; raise --ctx-size")
