"""The bench's outputs from its result document: bench.json, bench.md, bench.png.

Every figure in the markdown and the chart is read from the result document, which
holds the raw per-run records as well as the summary computed from them (stats.py).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sdfp_edge.bench.stats import MIN_CALL_RUNS

PROJECTION_NOTE = ("projection, not a measurement: tokens per verify / (k c + 1), i.e. assuming that "
                   "verifying a few tokens costs one decoding step (V(n) = 1, memory-bound hardware) "
                   "with the draft cost c measured here")


def _f(x: float | None, fmt: str = ".2f") -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def _pct(x: float | None) -> str:
    return "–" if x is None else format(x, ".0%")


def _ratio(s: dict[str, Any] | None, *, spread: bool = True) -> str:
    if s is None:
        return "–"
    return f"{s['median']:.2f}x" + (f" ({s['min']:.2f}-{s['max']:.2f})" if spread else "")


CALL_MARK = {"faster": " ▲", "slower": " ▼"}  # parity within noise, too few runs to call: no mark


def _interval(iv: dict[str, Any] | None, *, mark: bool = True) -> str:
    """median [lo, hi], with ▲ / ▼ where the interval excludes 1.0."""
    if iv is None:
        return "–"
    return f"{iv['median']:.2f}x [{iv['lo']:.2f}, {iv['hi']:.2f}]" + (CALL_MARK.get(iv["call"], "") if mark else "")


def _vs(row: dict[str, Any], ref: str, which: str = "end_to_end", *, spread: bool = True) -> str:
    """A row's ratio to a reference: median [lo, hi] where the document has intervals (schema 3),
    else the median with min-max; "1 (reference)" on the reference's own row."""
    if row["system"] == ref:
        return "1 (reference)"
    r = row["vs"].get(ref)
    if r is not None and f"{which}_interval" in r:
        return _interval(r[f"{which}_interval"])
    return _ratio(r and r[which], spread=spread)


def _has_intervals(result: dict[str, Any]) -> bool:
    return result["schema"] != "sdfp-edge-bench/2"


def _spin_lines(systems: list[dict[str, Any]]) -> list[str]:
    """How each system's threads waited: sdfp-edge bounds libgomp's spin, llama.cpp's own processes
    keep its default, and on an idle machine that alone can part their speeds by a few percent."""
    if not any("GOMP_SPINCOUNT" in s for s in systems):
        return []  # a record from before it was kept
    groups: dict[str, list[str]] = {}
    for s in systems:
        groups.setdefault(s.get("GOMP_SPINCOUNT") or "unset (libgomp's default)", []).append(f"`{s['name']}`")
    return ["- GOMP_SPINCOUNT, as each process saw it: " + "; ".join(
        f"{value} for {', '.join(names)}" for value, names in groups.items())
        + " (how threads wait can alone part two systems' speeds: docs/threads-and-memory.md)"]


def _rounds_text(cfg: dict[str, Any]) -> str:
    picked = cfg.get("rounds_selected")
    if picked is None:
        return f"{cfg['repeats']} round(s)"
    return f"round(s) {', '.join(map(str, picked))} of the {cfg['repeats']} run (the others left out)"


def _header(result: dict[str, Any]) -> list[str]:
    m, mach, cfg, build = result["model"], result["machine"], result["config"], result["build"]
    sampling = "greedy" if cfg["greedy"] else f"temperature {cfg['temperature']}, seed {cfg['seed']}"
    per_cat = "all" if cfg["limit_per_category"] is None else cfg["limit_per_category"]
    commit = (build["git_commit"] or "no git")[:10] + (", modified" if build["git_dirty"] else "")
    base = result["base"]
    lines = [
        f"# sdfp-edge bench, {result['created']}",
        "",
        f"- command: `{result['command']}`" if result.get("command") else "- command: (API call)",
        (f"- model: {m['model']} ({m['weight_format']}, {m['architecture']}, {m['n_layer']} layers), "
         f"sha256 {m['sha256'][:12]}…"),
    ]
    if result.get("draft_model"):
        d = result["draft_model"]
        lines.append(f"- draft model: {d['model']} ({d['weight_format']}, {d['n_layer']} layers)")
    server = build.get("llama_server")
    return [
        *lines,
        (f"- machine: {mach['cpu']}, {mach['usable_cpus']} usable CPUs, {mach['threads']} threads; load average "
         f"{_f(mach['load_average_start'][0])} at start, {_f(mach['load_average_end'][0])} at end; "
         f"transparent huge pages: {mach.get('transparent_hugepage') or 'unknown'}"),
        (f"- build: llama-cpp-python {build['llama_cpp_python']}, sdfp-edge {build['sdfp_edge']} ({commit}); "
         f"`{build['llama_cpp_system_info'].strip()}`"
         + (f"; llama-server built from {server['source']}" if server else "")),
        (f"- environment: OMP_WAIT_POLICY={build.get('OMP_WAIT_POLICY') or 'unset'}, SDFP_EDGE_HUGE_PAGES="
         f"{build.get('SDFP_EDGE_HUGE_PAGES') or 'unset'} (every system ran with it)"),
        *_spin_lines(result["systems"]),
        (f"- data: {len(result['data']['prompts'])} prompts ({', '.join(cfg['categories'])}; {per_cat} per "
         f"category), {sampling}, up to {cfg['max_tokens']} new tokens, {_rounds_text(cfg)}, "
         f"draft max {cfg['draft_max']}"),
        f"- wall time of the run: {result['elapsed_s'] / 60:.1f} min",
        "",
        (f"Each system ran in its own process with the same environment, model file, context and threads, one "
         f"process computing at a time, every prompt prefilled from an empty cache; nothing ran unrecorded, so "
         f"each process's first request carries its warm-up. The headline is end-to-end tokens/s (from the "
         f"request to its last token) relative to `{base}`, plain llama.cpp as its Python users run it: the "
         f"median of per-prompt ratios from the same interleaved round, {_spread_text(result)} Decode rate leaves "
         f"out the prefill and the first verify cycle. `off` is sdfp-edge's own plain decoding."),
        *_start_line(result),
        "",
    ]


def _spread_text(result: dict[str, Any]) -> str:
    if not _has_intervals(result):
        return "with min-max."
    return (f"with its bootstrap {_confidence(result)} interval [lo, hi] (prompts resampled, then repeats within a "
            f"prompt; a fixed seed per comparison); ▲ / ▼ mark a difference whose interval excludes 1.0 (from "
            f"{MIN_CALL_RUNS} ratios or more over two prompts or more), anything else is parity within noise.")


def _confidence(result: dict[str, Any]) -> str:
    return f"{result['config']['bootstrap']['confidence']:.0%}"


def _start_line(result: dict[str, Any]) -> list[str]:
    started = sorted((s for s in result["systems"] if "started" in s), key=lambda s: s["started"])
    if not started:  # a result written before the start order was recorded
        return []
    order = ", ".join(f"`{s['name']}`" for s in started)
    return ["", (f"Processes were started in this order: {order}. On some machines a process started later "
                 f"decodes faster (the memory it gets), so sdfp-edge's systems start first and plain llama.cpp "
                 f"last: any such bias counts against sdfp-edge (sdfp_edge/bench/systems.py, start_order).")]


def _skip_table(result: dict[str, Any]) -> list[str]:
    if not result["skip_lists"]:
        return []
    lines = ["| layer-skip system | skipped layers | where the list comes from |", "|---|---|---|"]
    for name, s in result["skip_lists"].items():
        lines.append(f"| {name} | {', '.join(map(str, s['layers']))} | {s['source']} |")
    return [*lines, ""]


def _main_table(result: dict[str, Any]) -> list[str]:
    base = result["base"]
    load = {s["name"]: s.get("load_s") for s in result["systems"]}
    spread = "[lo, hi]" if _has_intervals(result) else "(min-max)"
    lines = [
        (f"| system | tok/s end-to-end | x {base} end-to-end {spread} | x {base} decode | x off end-to-end | "
         f"load s | acceptance | tokens/verify | k | c | projected x plain, memory-bound* | same output as {base} |"),
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["summary"]:
        if r["category"] != "all":
            continue
        tps = r["end_to_end_tokens_per_second"]
        cells = [
            r["system"], _f(tps and tps["median"], ".1f"), _vs(r, base), _vs(r, base, "decode", spread=False),
            _vs(r, "off", spread=False), _f(load.get(r["system"]), ".1f"), _f(r["acceptance"]),
            _f(r["tokens_per_verify"]), _f(r["k_mean"]), _f(r["c"]),
            "–" if r["projected"] is None else _f(r["projected"]) + "x", _pct(r["same_output"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return [
        *lines, "", f"\\* {PROJECTION_NOTE}.", "",
        (f"Same output as {base}: the share of runs whose greedy token ids equal {base}'s. llama.cpp's kernels are "
         "not batch-invariant, so a verify batch can flip a near-tie; runs[].divergence in bench.json gives the "
         "first differing token. Load s: process start to ready (model loaded; llama-server healthy), outside "
         "the timings."),
        "",
    ]


def _category_table(result: dict[str, Any]) -> list[str]:
    cats, base = result["config"]["categories"], result["base"]
    table = {(r["system"], r["category"]): r for r in result["summary"]}
    title = (f"x {base}, end-to-end, by category, median [lo, hi] ({_confidence(result)} bootstrap):"
             if _has_intervals(result) else f"Median x {base}, end-to-end, by category:")
    lines = [title, "", "| system | " + " | ".join(cats) + " |",
             "|---|" + "---|" * len(cats)]
    for system in [s["name"] for s in result["systems"] if s["name"] != base]:
        row = [table.get((system, c)) for c in cats]
        lines.append(f"| {system} | " + " | ".join("–" if r is None else _vs(r, base, spread=False) for r in row)
                     + " |")
    return [*lines, ""]


def _comparison_table(result: dict[str, Any]) -> list[str]:
    rows = result.get("comparisons") or []
    if not rows:
        return []
    lines = [f"Pairwise, rate(a) / rate(b) paired per prompt and round, median [lo, hi] ({_confidence(result)} "
             "bootstrap); the verdict only where the interval excludes 1.0:", "",
             "| a | b | category | end-to-end | decode | verdict (end-to-end) |", "|---|---|---|---|---|---|"]
    for c in rows:
        e2e = c["end_to_end"]
        verdict = "–" if e2e is None else (f"`{c['a']}` {e2e['call']}" if e2e["call"] in CALL_MARK
                                           else e2e["call"])
        lines.append(f"| {c['a']} | {c['b']} | {c['category']} | {_interval(e2e, mark=False)} | "
                     f"{_interval(c['decode'], mark=False)} | {verdict} |")
    return [*lines, ""]


def _footer(result: dict[str, Any]) -> list[str]:
    models = result["cost_models"]
    cm = models.get("auto") or next((v for v in models.values() if v), None)
    lines = []
    if cm and cm.get("V"):
        v = ", ".join(f"V({n})={x:.2f}" for n, x in cm["V"].items())
        lines += [f"auto's verify cost relative to one token ({cm['t_token_ms']:.1f} ms) after the run: {v}.", ""]
    lines += ["Systems:", ""] + [f"- `{s['name']}` ({s['kind']}): {s['description']}" for s in result["systems"]]
    if result["notes"]:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in result["notes"]]
    return lines


def markdown(result: dict[str, Any]) -> str:
    check_schema(result)
    parts = [_header(result), _skip_table(result), _main_table(result), _category_table(result),
             _comparison_table(result), _footer(result)]
    return "\n".join(line for part in parts for line in part) + "\n"


def check_schema(result: dict[str, Any]) -> None:
    """Refuse a result document this report cannot read (an older bench wrote it)."""
    from sdfp_edge.bench.runner import READABLE
    from sdfp_edge.errors import InvalidRequestError

    if result.get("schema") not in READABLE:
        raise InvalidRequestError(f"bench.json has schema {result.get('schema')!r}; this sdfp-edge reads "
                                  f"{' and '.join(READABLE)} (rerun the bench to get one)")


def plot(result: dict[str, Any], path: Path) -> Path:
    """Median end-to-end speedup over plain llama.cpp by category and system (whiskers: the
    bootstrap interval; min-max for a schema-2 document),
    and the memory-bound projection."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    cats = [*result["config"]["categories"], "all"]
    base = result["base"]
    systems = [s["name"] for s in result["systems"] if s["name"] != base]
    table = {(r["system"], r["category"]): r for r in result["summary"]}
    fig, axes = plt.subplots(2, 1, figsize=(max(8.0, 1.1 * len(cats) + 3), 8.5), sharex=True)
    width = 0.8 / max(1, len(systems))
    x = np.arange(len(cats))
    palette = 10 if len(systems) <= 10 else 20
    colors = plt.get_cmap(f"tab{palette}")
    for j, s in enumerate(systems):
        med, lo, hi, proj = [], [], [], []
        for c in cats:
            r = table.get((s, c))
            vs = r["vs"][base] if r and r["vs"].get(base) else None
            rr = vs and (vs.get("end_to_end_interval") or vs["end_to_end"])  # the interval, or min-max (schema 2)
            med.append(rr["median"] if rr else np.nan)
            lo.append(rr["median"] - rr.get("lo", rr.get("min")) if rr else 0.0)
            hi.append(rr.get("hi", rr.get("max")) - rr["median"] if rr else 0.0)
            proj.append(r["projected"] if r and r["projected"] is not None else np.nan)
        pos = x - 0.4 + width * (j + 0.5)
        axes[0].bar(pos, med, width, yerr=[lo, hi], capsize=2, label=s, color=colors(j % palette))
        axes[1].bar(pos, proj, width, label=s, color=colors(j % palette))
    for ax in axes:
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.grid(axis="y", alpha=0.3)
    whiskers = f"bootstrap {_confidence(result)} interval" if _has_intervals(result) else "min-max"
    axes[0].set_ylabel(f"end-to-end tokens/s relative to {base}\n(median of paired ratios, {whiskers})")
    axes[1].set_ylabel("projected speedup,\nmemory-bound (V(n)=1)")
    axes[1].set_title("PROJECTION, not measured: tokens per verify / (k c + 1)", fontsize=9)
    m, mach = result["model"], result["machine"]
    axes[0].set_title(f"{m['model']} ({m['weight_format']}), {result['created'][:10]}\n{mach['cpu']}, "
                      f"{mach['threads']} threads, load average {mach['load_average_start'][0]:.1f} at start",
                      fontsize=9)
    axes[1].set_xticks(x, cats, rotation=30, ha="right")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, ncol=min(5, len(systems)), loc="lower center")
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)
    return path


def _atomic(path: Path, write: Callable[[Path], object]) -> Path:
    """write(tmp) beside path, then rename: a reader never sees half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write(result: dict[str, Any], out_dir: str | Path, *, formats: Sequence[str] = ("json", "md", "png")) -> dict[str, Path]:
    """Write bench.json, bench.md and bench.png into out_dir (each atomically); return their paths."""
    check_schema(result)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    if "json" in formats:
        paths["json"] = _atomic(out / "bench.json", lambda p: p.write_text(json.dumps(result, indent=1) + "\n"))
    if "md" in formats:
        paths["md"] = _atomic(out / "bench.md", lambda p: p.write_text(markdown(result)))
    if "png" in formats:
        paths["png"] = _atomic(out / "bench.png", lambda p: plot(result, p))
    return paths
