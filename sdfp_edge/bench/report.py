"""The bench's outputs from its result document: bench.json, bench.md, bench.png.

Every figure in the markdown and the chart is read from the result document, which
holds the raw per-run records as well as the summary computed from them (stats.py).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

PROJECTION_NOTE = ("projection, not a measurement: tokens per verify / (k c + 1), i.e. assuming that "
                   "verifying a few tokens costs one decoding step (V(n) = 1, memory-bound hardware) "
                   "with the draft cost c measured here")


def _f(x: float | None, fmt: str = ".2f") -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def _pct(x: float | None) -> str:
    return "–" if x is None else format(x, ".0%")


def _ratio(s: dict[str, Any] | None) -> str:
    if s is None:
        return "1 (reference)"
    return f"{s['median']:.2f}x ({s['min']:.2f}-{s['max']:.2f})"


def _header(result: dict[str, Any]) -> list[str]:
    m, mach, cfg, build = result["model"], result["machine"], result["config"], result["build"]
    sampling = "greedy" if cfg["greedy"] else f"temperature {cfg['temperature']}, seed {cfg['seed']}"
    per_cat = "all" if cfg["limit_per_category"] is None else cfg["limit_per_category"]
    commit = (build["git_commit"] or "no git")[:10] + (", modified" if build["git_dirty"] else "")
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
    return [
        *lines,
        (f"- machine: {mach['cpu']}, {mach['usable_cpus']} usable CPUs, {mach['threads']} threads; load average "
         f"{_f(mach['load_average_start'][0])} at start, {_f(mach['load_average_end'][0])} at end"),
        (f"- build: llama-cpp-python {build['llama_cpp_python']}, sdfp-edge {build['sdfp_edge']} ({commit}); "
         f"`{build['llama_cpp_system_info'].strip()}`"),
        (f"- data: {len(result['data']['prompts'])} prompts ({', '.join(cfg['categories'])}; {per_cat} per "
         f"category), {sampling}, up to {cfg['max_tokens']} new tokens, draft max {cfg['draft_max']}"),
        f"- wall time of the run: {result['elapsed_s'] / 60:.1f} min",
        "",
        ("tok/s counts the tokens of every verify cycle after the first, over the time from the end of the "
         "first cycle to the last token, the same way for every system (prefill excluded). Ratios are medians "
         "of per-prompt ratios to `off` from the same interleaved round, with min-max."),
        "",
    ]


def _skip_table(result: dict[str, Any]) -> list[str]:
    if not result["skip_lists"]:
        return []
    lines = ["| layer-skip system | skipped layers | where the list comes from |", "|---|---|---|"]
    for name, s in result["skip_lists"].items():
        lines.append(f"| {name} | {', '.join(map(str, s['layers']))} | {s['source']} |")
    return [*lines, ""]


def _main_table(result: dict[str, Any]) -> list[str]:
    lines = [
        ("| system | tok/s | x off (min-max) | x off end-to-end | acceptance | tokens/verify | k | c | "
         "projected x off, memory-bound* | same output as off |"),
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["summary"]:
        if r["category"] != "all":
            continue
        tps, e2e = r["tokens_per_second"], r["end_to_end_ratio"]
        cells = [
            r["system"], _f(tps and tps["median"], ".1f"), _ratio(r["ratio"]),
            "–" if e2e is None else _f(e2e["median"]) + "x", _f(r["acceptance"]), _f(r["tokens_per_verify"]),
            _f(r["k_mean"]), _f(r["c"]), "–" if r["projected"] is None else _f(r["projected"]) + "x",
            _pct(r["same_output"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return [
        *lines, "", f"\\* {PROJECTION_NOTE}.", "",
        ("Same output as off: the share of prompts whose greedy token ids equal off's. llama.cpp's kernels are "
         "not batch-invariant, so a verify batch can flip a near-tie; runs[].divergence in bench.json gives the "
         "first differing token."),
        "",
    ]


def _category_table(result: dict[str, Any]) -> list[str]:
    cats = result["config"]["categories"]
    table = {(r["system"], r["category"]): r for r in result["summary"]}
    lines = ["Median x off by category:", "", "| system | " + " | ".join(cats) + " |", "|---|" + "---|" * len(cats)]
    for system in [s["name"] for s in result["systems"] if s["name"] != result["base"]]:
        cells = []
        for c in cats:
            row = table.get((system, c))
            cells.append("–" if row is None or row["ratio"] is None else f"{row['ratio']['median']:.2f}")
        lines.append(f"| {system} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _footer(result: dict[str, Any]) -> list[str]:
    models = result["cost_models"]
    cm = models.get("auto") or next((v for v in models.values() if v), None)
    lines = []
    if cm:
        v = ", ".join(f"V({n})={x:.2f}" for n, x in cm["V"].items())
        lines += [f"Measured verify cost relative to one token ({cm['t_token_ms']:.1f} ms): {v}.", ""]
    lines += ["Systems:", ""] + [f"- `{s['name']}` ({s['kind']}): {s['description']}" for s in result["systems"]]
    if result["notes"]:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in result["notes"]]
    return lines


def markdown(result: dict[str, Any]) -> str:
    parts = [_header(result), _skip_table(result), _main_table(result), _category_table(result), _footer(result)]
    return "\n".join(line for part in parts for line in part) + "\n"


def plot(result: dict[str, Any], path: Path) -> Path:
    """Median speedup by category and system (min-max whiskers), and the memory-bound projection."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    cats = [*result["config"]["categories"], "all"]
    systems = [s["name"] for s in result["systems"] if s["name"] != result["base"]]
    table = {(r["system"], r["category"]): r for r in result["summary"]}
    fig, axes = plt.subplots(2, 1, figsize=(max(8.0, 1.1 * len(cats) + 3), 8.5), sharex=True)
    width = 0.8 / max(1, len(systems))
    x = np.arange(len(cats))
    colors = plt.get_cmap("tab10")
    for j, s in enumerate(systems):
        med, lo, hi, proj = [], [], [], []
        for c in cats:
            r = table.get((s, c))
            rr = r["ratio"] if r else None
            med.append(rr["median"] if rr else np.nan)
            lo.append(rr["median"] - rr["min"] if rr else 0.0)
            hi.append(rr["max"] - rr["median"] if rr else 0.0)
            proj.append(r["projected"] if r and r["projected"] is not None else np.nan)
        pos = x - 0.4 + width * (j + 0.5)
        axes[0].bar(pos, med, width, yerr=[lo, hi], capsize=2, label=s, color=colors(j % 10))
        axes[1].bar(pos, proj, width, label=s, color=colors(j % 10))
    for ax in axes:
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("tokens/s relative to off\n(median of paired ratios, min-max)")
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
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write(result: dict[str, Any], out_dir: str | Path, *, formats: Sequence[str] = ("json", "md", "png")) -> dict[str, Path]:
    """Write bench.json, bench.md and bench.png into out_dir; return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    if "json" in formats:
        paths["json"] = out / "bench.json"
        paths["json"].write_text(json.dumps(result, indent=1) + "\n")
    if "md" in formats:
        paths["md"] = out / "bench.md"
        paths["md"].write_text(markdown(result))
    if "png" in formats:
        paths["png"] = plot(result, out / "bench.png")
    return paths
