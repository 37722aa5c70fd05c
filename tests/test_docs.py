"""The README stays a few screens long and every link and module path in it and in docs/ resolves.

No model is needed: these read the markdown, and run tools/update_readme_results.py on a
temporary copy to check that the pasted bench figures are exactly what the tool writes.
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
MAX_README_LINES = 260

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
# a path in the repository named in prose or code: sdfp_edge/runtime/engine.py, tools/setup.sh, sdfp_edge/cli/
REPO_PATH = re.compile(r"(?<![\w./-])((?:sdfp_edge|tools|tests)/[\w./-]*[\w/])")


def markdown_files() -> list[Path]:
    return [README, *DOCS]


def outside_code_blocks(text: str) -> str:
    """The text without fenced code blocks and inline code spans (their brackets are not links)."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    s = heading.strip().lower().replace("`", "")
    s = re.sub(r"[^\w\- ]", "", s)
    return s.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.S | re.M)
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6} (.+)$", text, re.M)}


def broken_links(path: Path) -> list[str]:
    bad = []
    for target in LINK.findall(outside_code_blocks(path.read_text())):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            bad.append(f"{target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            bad.append(f"{target} (no heading #{anchor} in {dest.name})")
    return bad


def missing_paths(path: Path) -> list[str]:
    return sorted({p for p in REPO_PATH.findall(path.read_text()) if not (ROOT / p.rstrip(".")).exists()})


def test_readme_is_a_few_screens() -> None:
    n = len(README.read_text().splitlines())
    assert n <= MAX_README_LINES, f"README.md has {n} lines; move detail into docs/ (limit {MAX_README_LINES})"


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: p.name)
def test_relative_links_resolve(path: Path) -> None:
    assert broken_links(path) == []


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: p.name)
def test_named_module_paths_exist(path: Path) -> None:
    assert missing_paths(path) == []


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_each_doc_starts_with_a_title_and_a_two_line_summary(path: Path) -> None:
    lines = path.read_text().splitlines()
    assert lines[0].startswith("# ") and lines[1] == "", lines[:2]
    assert lines[2] and lines[3] and lines[4] == "", f"{path.name}: expected two summary lines, then a blank line"


def test_readme_links_every_doc() -> None:
    linked = {(ROOT / t.split("#")[0]).resolve() for t in LINK.findall(README.read_text())}
    assert [d.name for d in DOCS if d.resolve() not in linked] == []


def test_the_checks_catch_what_they_guard(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    doc = tmp_path / "docs" / "x.md"
    doc.write_text("# X\n\n## Real heading\n\nsee [a](missing.md), [b](x.md#real-heading), [c](x.md#nope), "
                   "`[not a link](nowhere.md)`\n")
    assert broken_links(doc) == ["missing.md (no such file)", "x.md#nope (no heading #nope in x.md)"]
    doc.write_text("the loop is in `sdfp_edge/engine.py`, now sdfp_edge/runtime/engine.py; sdfp_edge/cli/ and "
                   "tools/nope.sh.\n")
    assert missing_paths(doc) == ["sdfp_edge/engine.py", "tools/nope.sh"]


def test_pasted_bench_figures_are_what_the_tool_writes(tmp_path: Path) -> None:
    """README's headline table and docs/results.md's report regenerate, byte for byte, from the record."""
    readme = README.read_text()
    m = re.search(r"<!-- headline:start -->.*?record `([^`]+)/`.*?<!-- headline:end -->", readme, re.S)
    assert m, "README.md has no headline block naming its record"
    record = m.group(1)
    assert f"`{record}/`" in (ROOT / "docs" / "results.md").read_text()
    (tmp_path / "docs").mkdir()
    shutil.copy(README, tmp_path / "README.md")
    shutil.copy(ROOT / "docs" / "results.md", tmp_path / "docs" / "results.md")
    shutil.copytree(ROOT / record, tmp_path / record)
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "update_readme_results.py"), record,
                        "--root", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "README.md").read_text() == readme
    assert (tmp_path / "docs" / "results.md").read_text() == (ROOT / "docs" / "results.md").read_text()
    # and the tool does rewrite both blocks: an edited figure is put back
    (tmp_path / "README.md").write_text(readme.replace("| `auto` |", "| `auto` | 9.99x |", 1))
    subprocess.run([sys.executable, str(ROOT / "tools" / "update_readme_results.py"), record,
                    "--root", str(tmp_path)], check=True, capture_output=True, timeout=60)
    assert (tmp_path / "README.md").read_text() == readme


@pytest.mark.parametrize("tool", sorted((ROOT / "tools").glob("*.py")), ids=lambda p: p.name)
def test_each_tool_says_which_figures_it_produces(tool: Path) -> None:
    doc = ast.get_docstring(ast.parse(tool.read_text())) or ""
    named = re.findall(r"(?:docs/[\w.-]+\.md|README\.md)", doc)
    # a figure kept beside the code it decided (a comment) is named by its module
    named += re.findall(r"Figures: [^\n]*\n?[^\n]*?(sdfp_edge/[\w/]+\.py)", doc)
    assert named, f"{tool.name}: its docstring names no README.md, docs/*.md or module figure"
    assert [n for n in named if not (ROOT / n).exists()] == []
    assert [p for p in REPO_PATH.findall(doc) if not (ROOT / p.rstrip(".")).exists()] == []


def test_the_tool_writes_nothing_when_a_file_lacks_its_markers(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "README.md").write_text("# no markers here\n")
    results = (ROOT / "docs" / "results.md").read_text().replace("| `auto` |", "| `auto` | edited |", 1)
    (tmp_path / "docs" / "results.md").write_text(results)
    shutil.copytree(ROOT / "models" / "bench" / "smollm2-135m", tmp_path / "models" / "bench" / "smollm2-135m")
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "update_readme_results.py"), "models/bench/smollm2-135m",
                        "--root", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "headline:start" in r.stderr, r.stderr
    assert (tmp_path / "docs" / "results.md").read_text() == results
