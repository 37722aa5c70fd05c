"""`sdfp-edge generate --input ... --output ... --ray [ADDRESS]`: batch mode on a Ray cluster.

The driver (this process) reads the input and the output file as one-machine batch mode does
(batch.py: ids, per-line errors, what is already answered), tokenizes every line once with
the model's vocabulary so that each prompt's prefill is cut where the one-machine run cuts it
(batch.Prompts), and hands the lines not answered yet to Ray Data. One actor per model replica
(`SdfpPredictor`: a Model and a ParallelDecoder, `--parallel` sequences, `-t` threads and
`-ngl` GPU layers each) answers them batch by batch; the driver appends each answer to the
output as it arrives (fsynced, one line each), so a crash of the driver resumes like batch mode,
and a lost actor or node is restarted by Ray and its batch run again: the driver writes an id
only once.

Users with their own Ray Data pipeline call the same class:

    ds = ray.data.read_json("prompts.jsonl")          # columns: prompt or messages, and optional id,
    ds = ds.map_batches(SdfpPredictor,                # max_tokens, temperature, top_k, top_p, ...
                        fn_constructor_kwargs={"model": "owner/repo:Q4_K_M", "threads": 4},
                        compute=ray.data.ActorPoolStrategy(size=2), num_cpus=4, batch_size=16,
                        batch_format="pyarrow")
    ds.write_json("answers/")   # the input columns + text, finish_reason, prompt_tokens,
                                # completion_tokens, error, answer (batch mode's JSON line)

Ray is imported here only, and only with --ray: `pip install 'sdfp-edge[ray]'`.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import math
import re
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import click

from sdfp_edge.cli import batch
from sdfp_edge.errors import InvalidRequestError, SdfpError
from sdfp_edge.runtime import batchio

# internal columns of the driver's rows (a user's pipeline has FIELDS columns instead)
NUMBER, REQUEST, IDS, CUTS = "_sdfp_number", "_sdfp_request", "_sdfp_ids", "_sdfp_cuts"
OUTPUT_COLUMNS = ("text", "finish_reason", "prompt_tokens", "completion_tokens", "error", "answer")


class SdfpPredictor:
    """One model replica for Ray Data's map_batches: a batch of prompts in, their answers out.

    Args:
        model: a GGUF path, catalogue name or owner/repo[:QUANT] (resolved on the actor's node).
        threads, n_gpu_layers: llama.cpp's, per replica. ctx_size: tokens per sequence.
        parallel: sequences decoded together (batch.DEFAULT_PARALLEL). mode: auto, lookup or off.
        max_tokens, seed, stop: what a row does not say.
        **sampling: sampling options by the batch format's names (temperature, top_k, top_p,
            min_p, repeat_penalty, ...: batchio.SAMPLING_FIELDS) for rows that do not say; the
            rest are the model's defaults (its GGUF's general.sampling.*, else llama.cpp's).
    """

    def __init__(self, model: str | None = None, *, threads: int | None = None, ctx_size: int = 4096,
                 n_gpu_layers: int | None = None, parallel: int = batch.DEFAULT_PARALLEL, mode: str = "auto",
                 max_tokens: int = 256, seed: int = 0, stop: Sequence[str] = (), verbose: bool = False,
                 **sampling: Any) -> None:
        from sdfp_edge.api import Model

        unknown = sorted(set(sampling) - set(batchio.SAMPLING_FIELDS))
        if unknown:
            raise InvalidRequestError(f"SdfpPredictor: unknown option(s) {', '.join(unknown)}")
        self.defaults = batch.Defaults(max_tokens, sampling, seed, tuple(stop))
        self.model = Model(model, n_ctx=ctx_size * parallel, n_threads=threads, n_gpu_layers=n_gpu_layers,
                           mode="off", n_seq_max=parallel, verbose=verbose,
                           log=lambda msg: print(msg, file=sys.stderr))
        self.parallel, self.mode = parallel, mode

    def __call__(self, data: Any) -> Any:
        """`data`: a pyarrow Table, a pandas DataFrame or a dict of numpy arrays; returns a pyarrow
        Table of the rows' other columns plus OUTPUT_COLUMNS, in the input's order."""
        import pyarrow as pa

        rows = _rows(data)
        lines, prompts = self._lines(rows)
        by_key: dict[_Key, dict[str, Any]] = {}
        with batch.open_decoder(self.model, self.parallel, self.mode) as decoder:
            for obj in batch.answers(self.model, decoder, lines, prompts, self.defaults):
                by_key[obj["id"]] = {**obj, "id": obj["id"].id}
        out = []
        for row, line in zip(rows, lines):
            obj = by_key[line.id]
            err = obj.get("error")
            usage = obj.get("usage", {})
            out.append({**{k: v for k, v in row.items() if not k.startswith("_sdfp_")},
                        "text": obj.get("text", ""), "finish_reason": obj.get("finish_reason", ""),
                        "prompt_tokens": usage.get("prompt_tokens", 0),
                        "completion_tokens": usage.get("completion_tokens", 0),
                        "error": err["message"] if err else "", "answer": json.dumps(obj, ensure_ascii=False)})
        return pa.Table.from_pylist(out)

    def _lines(self, rows: list[dict[str, Any]]) -> tuple[list[batchio.Line], batch.Prompts]:
        """The rows as batch mode's lines (an internal key per row: ids may repeat in a user's data),
        with the driver's token ids and prefill cuts where it sent them."""
        lines, ids, cuts = [], {}, {}
        for i, row in enumerate(rows):
            if REQUEST in row:  # from run(): the line as the driver parsed it
                number, obj = int(row[NUMBER]), json.loads(row[REQUEST])
                line = batchio.parse_line(number, json.dumps(obj))
                assert line is not None
                if row.get(IDS):
                    ids[line.id], cuts[line.id] = json.loads(row[IDS]), frozenset(json.loads(row[CUTS]))
            else:  # a user's row: the FIELDS columns it has
                obj = {k: v for k, v in row.items() if k in batchio.FIELDS and not _missing(v)}
                line = batchio.parse_line(i + 1, json.dumps(obj)) or batchio.Line(
                    i + 1, i + 1, error=batchio.error_object(f"row {i + 1}: empty", "invalid_request"))
            line = dataclasses.replace(line, id=_Key(i, line.id))
            lines.append(line)
        prompts = batch.Prompts.of(self.model, lines) if not ids else batch.Prompts(
            {ln.id: ids[ln.id.id] for ln in lines if ln.id.id in ids},
            {ln.id: cuts[ln.id.id] for ln in lines if ln.id.id in cuts})
        return lines, prompts


@dataclasses.dataclass(frozen=True)
class _Key:
    """A row's place in its batch and its id (ids of a user's data need not be unique)."""

    index: int
    id: Any


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _rows(data: Any) -> list[dict[str, Any]]:
    """Plain Python rows from what Ray Data hands a UDF."""
    if hasattr(data, "to_pylist"):  # pyarrow
        return data.to_pylist()
    if hasattr(data, "to_dict") and hasattr(data, "columns"):  # pandas
        return [{k: _plain(v) for k, v in r.items()} for r in data.to_dict("records")]
    if isinstance(data, Mapping):  # dict of numpy arrays
        n = len(next(iter(data.values()))) if data else 0
        return [{k: _plain(v[i]) for k, v in data.items()} for i in range(n)]
    raise TypeError(f"SdfpPredictor takes a pyarrow Table, a pandas DataFrame or a dict of arrays, "
                    f"got {type(data).__name__}")


def _plain(v: Any) -> Any:
    """numpy scalars and arrays (nested too) as Python values."""
    if hasattr(v, "tolist"):
        v = v.tolist()
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def driver_rows(todo: list[batchio.Line], prompts: batch.Prompts) -> list[dict[str, Any]]:
    """The driver's rows for Ray Data: each line to answer, its token ids and prefill cuts."""
    rows = []
    for line in todo:
        ids = prompts.ids.get(line.id)
        rows.append({NUMBER: line.number, REQUEST: json.dumps({**line.fields, "id": line.id}, ensure_ascii=False),
                     IDS: json.dumps(ids) if ids is not None else "",
                     CUTS: json.dumps(sorted(prompts.cuts.get(line.id, ())))})
    return rows


def _root_cause(e: BaseException) -> str:
    """The innermost exception behind a Ray error (a UDF's own), on one line."""
    seen = {id(e)}
    while True:
        nxt = getattr(e, "cause", None) or e.__cause__
        if not isinstance(nxt, BaseException) or id(nxt) in seen:
            break
        seen.add(id(nxt))
        e = nxt
    first = next((ln for ln in re.sub(r"\x1b\[[0-9;]*m", "", str(e)).splitlines() if ln.strip()), "")
    text = " ".join(first.split())
    return f"{type(e).__name__}: {text[:200]}"


def _on_cluster(ray: Any, rows: list[dict[str, Any]], write: Any, predictor: type, size: int, n_actors: int,
                threads: int | None, gpus: float, kwargs: dict[str, Any]) -> str | None:
    """Stream the rows through the actors, writing each answer; what stopped the run, or None.

    Returns instead of raising so that nothing keeps the dataset (and its actors, which hold
    the cluster's CPUs) alive after a failure."""
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.raise_original_map_exception = True  # an actor's own error, not Ray's wrapper of it
    ds = ray.data.from_items(rows, override_num_blocks=max(1, math.ceil(len(rows) / size)))
    ds = ds.map_batches(predictor, fn_constructor_kwargs=kwargs, compute=ray.data.ActorPoolStrategy(size=n_actors),
                        batch_size=size, batch_format="pyarrow", num_cpus=threads or 1, num_gpus=gpus or None)
    try:
        for row in ds.iter_rows():
            write(json.loads(row["answer"]))
    except Exception as e:  # noqa: BLE001 - whatever stopped the cluster's run: the answers so far stay
        return _root_cause(e)
    finally:
        del ds
        gc.collect()
    return None


def import_ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise SdfpError("--ray needs Ray Data: pip install 'sdfp-edge[ray]' (or 'ray[data]')") from None
    return ray


def run(model: str | None, threads: int | None, ctx_size: int, n_gpu_layers: int | None, verbose: bool,
        input_path: Path, output_path: Path, parallel: int, mode: str, defaults: batch.Defaults, *,
        address: str | None, actors: int | None, gpus: float = 0.0, batch_size: int | None = None,
        predictor: type = SdfpPredictor) -> dict[str, Any]:
    """Answer every line of the input not yet in the output on a Ray cluster; returns what this run did.

    `address`: ray.init's (None or "": a cluster this machine already runs, else a local one).
    `actors`: model replicas (default: one per node). `gpus`: GPUs each replica reserves.
    `batch_size`: lines per task (default 4 x parallel). `predictor`: the actor class."""
    from tqdm import tqdm

    from sdfp_edge.api import Model

    todo, lines = batch.pending(input_path, output_path, mode)
    if not todo:
        return {"answers": 0, "errors": 0, "tokens": 0, "seconds": 0.0}
    ray = import_ray()
    # token ids and prefill cuts over the whole input, as the one-machine run has them (batch.Prompts);
    # the vocabulary is all this needs: no GPU, and a context of a few cells
    with Model(model, n_ctx=256, n_threads=1, n_gpu_layers=0, mode="off", cost_cache=False,
               log=lambda msg: click.echo(msg, err=True)) as m:
        prompts = batch.Prompts.of(m, lines)
    if not ray.is_initialized():
        ray.init(address=address or None, log_to_driver=verbose)
    n_actors = actors or max(1, len([n for n in ray.nodes() if n.get("Alive")]))
    size = batch_size or 4 * parallel
    counts = {"answers": 0, "errors": 0, "tokens": 0}
    written: set[Any] = set()
    t0 = time.perf_counter()
    with batchio.AnswerWriter(output_path) as out, \
            tqdm(total=len(todo), unit="prompt", file=sys.stderr, disable=None, dynamic_ncols=True) as bar:

        def write(obj: dict[str, Any]) -> None:
            if obj["id"] in written:  # a batch run again after a lost actor
                return
            out.write(obj)
            written.add(obj["id"])
            counts["errors" if "error" in obj else "answers"] += 1
            counts["tokens"] += obj.get("usage", {}).get("completion_tokens", 0)
            bar.update(1)
            bar.set_postfix_str(f"{counts['tokens'] / (time.perf_counter() - t0):.1f} tok/s")

        for line in todo:
            if line.error is not None:
                write(batchio.failed(line))
        rows = driver_rows([ln for ln in todo if ln.error is None], prompts)
        failure = _on_cluster(ray, rows, write, predictor, size, n_actors, threads, gpus, dict(
            model=model, threads=threads, ctx_size=ctx_size, n_gpu_layers=n_gpu_layers, parallel=parallel,
            mode=mode, verbose=verbose, max_tokens=defaults.max_tokens, seed=defaults.seed, stop=list(defaults.stop),
            **defaults.sampling)) if rows else None
    if failure is not None:
        raise SdfpError(f"the Ray run stopped ({failure}); {len(written)} of {len(todo)} lines are in "
                        f"{output_path}: run the command again to answer the rest")
    seconds = time.perf_counter() - t0
    if len(written) != len(todo):
        raise InvalidRequestError(f"the cluster answered {len(written)} of {len(todo)} lines; run again to "
                                  "answer the rest")
    click.echo(f"[{counts['answers']} answers, {counts['errors']} errors, {counts['tokens']} tokens, "
               f"{counts['tokens'] / seconds if seconds > 0 else 0.0:.1f} tok/s, {n_actors} Ray actors x "
               f"{parallel} parallel sequences]", err=True)
    return {**counts, "seconds": seconds, "actors": n_actors}
