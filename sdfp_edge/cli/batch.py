"""`sdfp-edge generate --input prompts.jsonl --output answers.jsonl`: many prompts, one load.

The lines not answered yet become requests of a ParallelDecoder (parallel.py): `--parallel`
sequences share one context and are decoded in one batch per cycle; each answer is
appended to the output as soon as it finishes (batchio.py), so a killed run resumes where
it stopped. A line that cannot run (bad JSON, bad values, a prompt past the context) gets
an error object in the output and the others go on.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
from tqdm import tqdm

from sdfp_edge.runtime import batchio
from sdfp_edge.api import Model, check_max_tokens, sampling_params
from sdfp_edge.runtime.controller import Controller
from sdfp_edge.runtime.cost_store import CostStore
from sdfp_edge.errors import ContextOverflowError, InvalidRequestError, SdfpError
from sdfp_edge.runtime.parallel import PARALLEL_MODES, ParallelDecoder, Request, prefill_cuts

# Measured (tools/batch_throughput.py, models/bench/batch/, 2026-12-01, 2-vCPU AMD EPYC):
# Qwen2.5-Coder-1.5B 7.5 / 8.1 / 7.4 tok/s at 1 / 4 / 8 sequences, SmolLM2-135M 49.5 /
# 55.0 / 58.8 at 1 / 4 / 16. On a compute-bound CPU more sequences buy little; 4 was the
# best on the larger model and within 7% of the best on the smaller.
DEFAULT_PARALLEL = 4


@dataclass(frozen=True)
class Defaults:
    """What a line does not say: the command line's sampling options."""

    max_tokens: int
    sampling: dict[str, Any]  # the sampling options given (the rest: the model's defaults)
    seed: int
    stop: tuple[str, ...]


def check_paths(input_path: Path, output_path: Path, mode: str) -> None:
    """Everything that can be refused before the model is loaded."""
    if mode not in PARALLEL_MODES:
        raise InvalidRequestError(
            f"--mode {mode} is not available with --input (batch mode drafts with prompt lookup only: "
            f"a layer-skip draft needs its layer mask for the whole batch); use {', '.join(PARALLEL_MODES)}")
    if not input_path.is_file():
        raise InvalidRequestError(f"--input {input_path}: no such file")
    if output_path.exists() and output_path.resolve() == input_path.resolve():
        raise InvalidRequestError("--output must not be the input file (the input is never modified)")
    if not output_path.parent.is_dir():
        raise InvalidRequestError(f"--output {output_path}: folder {output_path.parent} does not exist")


def tokenize(m: Model, line: batchio.Line) -> list[int]:
    f = line.fields
    return m.tokenize_prompt(f["prompt"]) if "prompt" in f else m.tokenize_chat(f["messages"])


@dataclass(frozen=True)
class Prompts:
    """Every line's prompt ids and prefill cuts (parallel.prefill_cuts) over the whole input,
    answered lines too: a resumed run then cuts each prefill where the uninterrupted run did."""

    ids: dict[batchio.Id, list[int]]
    cuts: dict[batchio.Id, frozenset[int]]

    @classmethod
    def of(cls, m: Model, lines: list[batchio.Line]) -> Prompts:
        ids = {}
        for line in lines:
            if line.error is None:
                try:
                    ids[line.id] = tokenize(m, line)
                except SdfpError:
                    pass  # the line's error is reported when its turn comes (to_request)
        return cls(ids, dict(zip(ids, prefill_cuts(list(ids.values())))))


def to_request(m: Model, decoder: ParallelDecoder, line: batchio.Line, d: Defaults,
               prompts: Prompts) -> Request:
    """The line as a request, or an SdfpError saying why it cannot run."""
    f = line.fields
    max_tokens = f.get("max_tokens", d.max_tokens)
    check_max_tokens(max_tokens)
    values, _ = m.resolve_sampling({**d.sampling, **{k: f[k] for k in batchio.SAMPLING_FIELDS if k in f}})
    seed = f.get("seed", d.seed)
    sampling = sampling_params(values, seed)
    processor = m.processor_for(values, sampling)
    stop = f.get("stop", list(d.stop))
    ids = prompts.ids.get(line.id)
    req = Request(line, ids if ids is not None else tokenize(m, line),  # not tokenized: raises its error
                  max_tokens, sampling, [stop] if isinstance(stop, str) else list(stop),
                  prompts.cuts.get(line.id, frozenset()), processor)
    decoder.check(req)
    return req


@contextmanager
def open_decoder(m: Model, parallel: int, mode: str) -> Iterator[ParallelDecoder]:
    """The model's ParallelDecoder, its controller warm from the cost store (saved again after)."""
    store = CostStore({**m.backend.identity(), "n_seq_max": parallel, "drafters": ["lookup"]})
    controller = Controller()
    controller.load_state(store.load() or {})
    try:
        yield ParallelDecoder(m.backend, seq_ctx=m.backend.n_ctx // parallel, mode=mode, controller=controller)
    finally:
        if controller.cost.t_verify:
            store.save(controller.state())


def run(model: str | None, threads: int | None, ctx_size: int, n_gpu_layers: int | None, verbose: bool,
        input_path: Path, output_path: Path, parallel: int, mode: str, defaults: Defaults) -> dict[str, Any]:
    """Answer every line of the input not yet in the output; returns what this run did."""
    todo, lines = pending(input_path, output_path, mode)
    if not todo:
        return {"answers": 0, "errors": 0, "tokens": 0, "seconds": 0.0}
    with Model(model, n_ctx=ctx_size * parallel, n_threads=threads, n_gpu_layers=n_gpu_layers, mode="off",
               n_seq_max=parallel, verbose=verbose, log=lambda msg: click.echo(msg, err=True)) as m, \
            batchio.AnswerWriter(output_path) as out, open_decoder(m, parallel, mode) as decoder:
        return _generate(decoder, answers(m, decoder, todo, Prompts.of(m, lines), defaults), len(todo), out)


def pending(input_path: Path, output_path: Path, mode: str) -> tuple[list[batchio.Line], list[batchio.Line]]:
    """The lines not answered yet, and all lines; says so when resuming or when nothing is left."""
    check_paths(input_path, output_path, mode)
    lines = batchio.read_input(input_path)
    done = batchio.answered_ids(output_path)
    todo = list(batchio.todo(lines, done))
    if done:
        click.echo(f"resuming: {len(lines) - len(todo)} of {len(lines)} lines already in {output_path}", err=True)
    if not todo:
        click.echo("nothing to do", err=True)
    return todo, lines


def answers(m: Model, decoder: ParallelDecoder, todo: list[batchio.Line], prompts: Prompts,
            d: Defaults) -> Iterator[dict[str, Any]]:
    """Each line's output object (an answer, or an error naming the line), as they finish."""
    errors: list[dict[str, Any]] = []

    def requests() -> Iterator[Request]:
        for line in todo:
            if line.error is not None:
                errors.append(batchio.failed(line))
                continue
            try:
                yield to_request(m, decoder, line, d, prompts)
            except ContextOverflowError as e:
                errors.append(batchio.failed(line, str(e), "context_length_exceeded"))
            except SdfpError as e:
                errors.append(batchio.failed(line, str(e)))

    for r in decoder.run(requests()):
        yield from errors
        errors.clear()
        line: Any = r.key
        yield batchio.answer(line.id, r.text, r.finish_reason, r.prompt_tokens, len(r.tokens))
    yield from errors


def _generate(decoder: ParallelDecoder, objs: Iterator[dict[str, Any]], total: int,
              out: batchio.AnswerWriter) -> dict[str, Any]:
    counts = {"answers": 0, "errors": 0}
    t0 = time.perf_counter()
    with tqdm(total=total, unit="prompt", file=sys.stderr, disable=None, dynamic_ncols=True) as bar:
        for obj in objs:
            out.write(obj)
            counts["errors" if "error" in obj else "answers"] += 1
            bar.update(1)
            if "error" not in obj:
                bar.set_postfix_str(f"{decoder.generated / (time.perf_counter() - t0):.1f} tok/s")
    seconds = time.perf_counter() - t0
    click.echo(f"[{counts['answers']} answers, {counts['errors']} errors, {decoder.generated} tokens, "
               f"{decoder.generated / seconds if seconds > 0 else 0.0:.1f} tok/s, "
               f"{len(decoder.slots)} parallel sequences]", err=True)
    return {**counts, "tokens": decoder.generated, "seconds": seconds}
