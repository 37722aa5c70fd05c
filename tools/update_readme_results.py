#!/usr/bin/env python3
"""Paste a committed bench run's markdown into the README between its result markers.

    python tools/update_readme_results.py models/bench/smollm2-135m-quick

No figure in the README's results section is typed by hand: it is bench.md, written by
`sdfp-edge bench` (or regenerated from bench.json with `sdfp-edge bench --from-json`).
"""

from __future__ import annotations

import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"
START, END = "<!-- bench-results:start -->", "<!-- bench-results:end -->"


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    run = Path(sys.argv[1])
    md = (run / "bench.md").read_text().strip()
    text = README.read_text()
    if START not in text or END not in text:
        sys.exit(f"{README} has no {START} ... {END} section")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    chart = run / "bench.png"
    body = f"{START}\n{md}\n\n![speedup by category and system]({chart.as_posix()})\n{END}"
    README.write_text(head + body + tail)
    print(f"updated {README} from {run}")


if __name__ == "__main__":
    main()
