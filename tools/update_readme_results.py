#!/usr/bin/env python3
"""Paste a committed bench run into docs/results.md (whole) and README.md (its headline table).

    python tools/update_readme_results.py models/bench/qwen2.5-coder-1.5b [--root DIR]

Produces the figures between `<!-- bench-results:start/end -->` in docs/results.md (the run's
bench.md, as `sdfp-edge bench` wrote it, or regenerated from bench.json with
`sdfp-edge bench --from-json`) and the headline table between `<!-- headline:start/end -->`
in README.md (columns of that same bench.md, with its command, date and machine), so no
figure in either is typed by hand. `--root` updates the copies under another folder (a
checkout, a temporary copy) instead of this repository.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS, README = Path("docs/results.md"), Path("README.md")
RESULTS_MARKERS = ("<!-- bench-results:start -->", "<!-- bench-results:end -->")
HEADLINE_MARKERS = ("<!-- headline:start -->", "<!-- headline:end -->")
# columns of bench.md's system table shown in the README, in this order, under these names
SYSTEM_COLUMNS = {
    "x llama-cpp end-to-end (min-max)": "x plain llama.cpp, end to end (min-max per prompt)",
    "x llama-cpp decode": "x plain, decode",
    "x off (min-max)": "x off (min-max per prompt)",  # older records compare with `off`
}
CATEGORY_COLUMNS = {"humaneval": "HumanEval", "edit": "code edits"}
TRAILING_COLUMNS = {"acceptance": "drafts accepted", "same output as llama-cpp": "same tokens as plain",
                    "same output as off": "same tokens as off"}


def tables(md: str) -> list[list[list[str]]]:
    """Every markdown table of `md`, as rows of cells (the header first, no separator row)."""
    found: list[list[list[str]]] = []
    current: list[list[str]] = []
    for line in md.splitlines() + [""]:
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not all(re.fullmatch(r":?-+:?", c) for c in cells):
                current.append(cells)
        elif current:
            found.append(current)
            current = []
    return found


def field(md: str, name: str) -> str:
    m = re.search(rf"^- {name}: (.*)$", md, re.M)
    if m is None:
        raise ValueError(f"bench.md has no '- {name}:' line")
    return m.group(1).strip()


def headline(md: str, run: Path) -> str:
    """The README's table: a few columns per system of one bench.md, and where they came from."""
    all_tables = tables(md)
    systems = next((t for t in all_tables if t[0][:2] == ["system", "tok/s end-to-end"] or
                    t[0][:2] == ["system", "tok/s"]), None)
    if systems is None:
        raise ValueError("bench.md has no system table")
    categories = next((t for t in all_tables if t[0][0] == "system" and "humaneval" in t[0]), None)
    per_cat = {row[0]: dict(zip(categories[0], row)) for row in categories[1:]} if categories else {}
    head = systems[0]
    cols = [(c, name) for c, name in SYSTEM_COLUMNS.items() if c in head]
    cat_cols = [(c, name) for c, name in CATEGORY_COLUMNS.items() if categories and c in categories[0]]
    tail_cols = [(c, name) for c, name in TRAILING_COLUMNS.items() if c in head]
    out = ["| system | " + " | ".join(n for _, n in cols + cat_cols + tail_cols) + " |",
           "|---" * (1 + len(cols) + len(cat_cols) + len(tail_cols)) + "|"]
    for row in systems[1:]:
        cells = dict(zip(head, row))
        values = ([cells[c] for c, _ in cols] + [per_cat.get(row[0], {}).get(c, "–") for c, _ in cat_cols]
                  + [cells[c] for c, _ in tail_cols])
        out.append(f"| `{row[0]}` | " + " | ".join(values) + " |")
    title = md.splitlines()[0]
    when = title.split(",", 1)[1].strip() if "," in title else title
    caption = [f"Run of {when}, {field(md, 'machine').split(';')[0]};",
               f"{field(md, 'model').split(', sha256')[0]}; {field(md, 'data')}.",
               f"Command: `{field(md, 'command').strip('`')}`;",
               f"record `{run.as_posix()}/`, the whole report in [docs/results.md](docs/results.md#the-headline-run)."]
    return "\n".join([*caption, "", *out])


def fail(message: str) -> None:
    """One line on stderr and exit code 2, as the CLI does for a user's mistake; nothing is written."""
    print(message, file=sys.stderr)
    sys.exit(2)


def pasted(path: Path, markers: tuple[str, str], body: str) -> str:
    """The text of `path` with `body` between its two markers."""
    text = path.read_text()
    start, end = markers
    if start not in text or end not in text:
        fail(f"error: {path} has no {start} ... {end} section")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return head + f"{start}\n{body}\n{end}" + tail


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a bench record folder holding bench.md (and bench.png)")
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout to update (default: this one)")
    args = parser.parse_args(argv)
    root: Path = args.root.resolve()
    run: Path = args.run
    if not run.is_absolute() and (root / run / "bench.md").is_file():
        run = root / run  # a record path is relative to the checkout being updated
    if not (run / "bench.md").is_file():
        fail(f"error: {run} has no bench.md")
    md = (run / "bench.md").read_text().strip()
    try:
        rel_run = run.resolve().relative_to(root)
    except ValueError:
        fail(f"error: {run} is not inside {root}: a pasted record must be committed with it")
    chart = os.path.relpath(root / rel_run / "bench.png", (root / RESULTS).parent)
    try:
        table = headline(md, rel_run)
    except ValueError as e:
        fail(f"error: {run}/bench.md: {e}")
    # bench.md's headings go two levels down, under docs/results.md's "## The headline run"
    report = re.sub(r"^#", "###", md, flags=re.M)
    results = pasted(root / RESULTS, RESULTS_MARKERS,
                     f"{report}\n\n![speedup by category and system]({Path(chart).as_posix()})")
    readme = pasted(root / README, HEADLINE_MARKERS, table)  # both checked before either is written
    write_atomically(root / RESULTS, results)
    write_atomically(root / README, readme)
    print(f"updated {root / RESULTS} and {root / README} from {rel_run}")


if __name__ == "__main__":
    main()
