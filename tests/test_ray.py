"""Batch mode on a Ray cluster (cli/ray_batch.py): a local cluster of 2 CPUs, 2 actors of one thread.

Greedy answers equal one-machine batch mode's; a lost actor is restarted and its batch run
again with every id written once; a run that stops resumes with every id once; Ray is never
imported without --ray; a user's own Ray Data pipeline gets the same answers. Skipped, with
the reason, only where Ray cannot start.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from sdfp_edge.cli import batch, ray_batch
from sdfp_edge.cli.main import main

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = ["Once upon a time", "def fib(n):", "The capital of France is", "Water boils at",
           "My favourite colour is", "In 1492,"]
COMMON = ["-c", "64", "-n", "12", "--temperature", "0", "--parallel", "1", "-t", "1"]


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as e:
        pytest.skip(f"Ray is not installed ({e}): pip install 'sdfp-edge[ray]'")
    os.environ.setdefault("SDFP_EDGE_CACHE", str(tmp_path_factory.mktemp("sdfp-cache")))  # cost files
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    except Exception as e:  # noqa: BLE001 - any reason Ray cannot start here is a reason to skip
        pytest.skip(f"Ray cannot start here: {e}")
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the actor classes below
    # Ray Data logs its executor's state at DEBUG many times a second; pytest's log capture would
    # format every record (minutes of a 2-CPU machine)
    for name in ("ray", "ray.data"):
        logging.getLogger(name).setLevel(logging.WARNING)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def lines_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("ray-in") / "in.jsonl"
    rows = [json.dumps({"prompt": t}) for t in PROMPTS]
    rows += ["not json", json.dumps({"id": "chat", "messages": [{"role": "user", "content": "Say hi"}]}),
             json.dumps({"prompt": "word " * 80})]
    p.write_text("".join(r + "\n" for r in rows))
    return p


@pytest.fixture(scope="module")
def reference(smollm2: Path, lines_file: Path, tmp_path_factory: pytest.TempPathFactory,
              ray_cluster: Any) -> dict[Any, dict[str, Any]]:
    """One-machine batch mode's answers."""
    out = tmp_path_factory.mktemp("ray-ref") / "one.jsonl"
    r = CliRunner().invoke(main, ["generate", "-m", str(smollm2), *COMMON, "--input", str(lines_file),
                                  "--output", str(out)])
    assert r.exit_code == 0, r.output
    return answers(out)


def answers(path: Path) -> dict[Any, dict[str, Any]]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    by_id = {a["id"]: a for a in rows}
    assert len(by_id) == len(rows), "an id is in the output twice"
    return by_id


def ray_run(smollm2: Path, lines_file: Path, out: Path, predictor: type = ray_batch.SdfpPredictor,
            ) -> dict[str, Any]:
    return ray_batch.run(str(smollm2), 1, 64, None, False, lines_file, out, 1, "auto",
                         batch.Defaults(12, {"temperature": 0.0}, 0, ()), address=None, actors=2, batch_size=2,
                         predictor=predictor)


def test_two_actors_give_the_answers_of_one_process(smollm2: Path, lines_file: Path, tmp_path: Path,
                                                    reference: dict[Any, dict[str, Any]]) -> None:
    out = tmp_path / "ray.jsonl"
    r = CliRunner().invoke(main, ["generate", "-m", str(smollm2), *COMMON, "--input", str(lines_file),
                                  "--output", str(out), "--ray", "--ray-actors", "2"])
    assert r.exit_code == 0, r.output
    assert "2 Ray actors" in r.output
    got = answers(out)
    assert got == reference
    assert got[7]["error"]["type"] == "invalid_json" and got[9]["error"]["type"] == "context_length_exceeded"
    assert "error" not in got["chat"] and got[1]["usage"]["completion_tokens"] == 12


class DiesOnce(ray_batch.SdfpPredictor):
    """An actor whose process ends in the middle of its first batch (a lost node, as Ray sees it)."""

    marker = ""

    def __call__(self, data: Any) -> Any:
        if not os.path.exists(self.marker):
            Path(self.marker).write_text(str(os.getpid()))
            os._exit(1)
        return super().__call__(data)


def test_a_lost_actor_is_replaced_and_every_id_is_written_once(smollm2: Path, lines_file: Path, tmp_path: Path,
                                                               reference: dict[Any, dict[str, Any]]) -> None:
    DiesOnce.marker = str(tmp_path / "died")
    out = tmp_path / "ray.jsonl"
    done = ray_run(smollm2, lines_file, out, DiesOnce)
    assert Path(DiesOnce.marker).exists()  # an actor did die mid-run
    assert answers(out) == reference
    assert done["answers"] + done["errors"] == len(reference)


class FailsOnFrance(ray_batch.SdfpPredictor):
    """A batch that raises (no retry for an error of the code): the run stops midway."""

    def __call__(self, data: Any) -> Any:
        if any("France" in str(row.get(ray_batch.REQUEST, "")) for row in ray_batch._rows(data)):
            raise RuntimeError("boom")
        return super().__call__(data)


def test_a_run_that_stops_resumes_with_every_id_once(smollm2: Path, lines_file: Path, tmp_path: Path,
                                                     reference: dict[Any, dict[str, Any]]) -> None:
    """The run that stops is a process of its own, as a user's command is (its actors end with it)."""
    out = tmp_path / "ray.jsonl"
    code = (f"import sys; sys.path[:0] = [{str(ROOT / 'tests')!r}, {str(ROOT)!r}]\n"
            "import ray, test_ray; from pathlib import Path\n"
            "ray.cloudpickle.register_pickle_by_value(test_ray)\n"
            "try:\n"
            f"    test_ray.ray_run(Path({str(smollm2)!r}), Path({str(lines_file)!r}), Path({str(out)!r}),"
            " test_ray.FailsOnFrance)\n"
            "except Exception as e:\n    print(type(e).__name__, e)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr[-3000:]
    assert re.search(r"SdfpError the Ray run stopped \(RuntimeError: boom\); .*run the command again", r.stdout), \
        r.stdout
    first = answers(out)
    assert 1 <= len(first) < len(reference)  # the driver's own error line at least, never the France line
    r = CliRunner().invoke(main, ["generate", "-m", str(smollm2), *COMMON, "--input", str(lines_file),
                                  "--output", str(out), "--ray", "--ray-actors", "2"])
    assert r.exit_code == 0, r.output
    assert f"resuming: {len(first)} of {len(reference)}" in r.output
    assert answers(out) == reference


def test_a_users_ray_data_pipeline_gets_the_same_answers(smollm2: Path, ray_cluster: Any,
                                                         reference: dict[Any, dict[str, Any]]) -> None:
    ray = ray_cluster
    ds = ray.data.from_items([{"id": i + 1, "prompt": p} for i, p in enumerate(PROMPTS[:3])]
                             + [{"id": 99, "prompt": "word " * 80}])
    ds = ds.map_batches(ray_batch.SdfpPredictor, fn_constructor_kwargs={
        "model": str(smollm2), "threads": 1, "ctx_size": 64, "parallel": 1, "max_tokens": 12,
        "temperature": 0.0},
        compute=ray.data.ActorPoolStrategy(size=1), num_cpus=1, batch_size=4, batch_format="pyarrow")
    rows = {r["id"]: r for r in ds.take_all()}
    for i in (1, 2, 3):
        assert rows[i]["text"] == reference[i]["text"] and rows[i]["error"] == ""
        assert rows[i]["completion_tokens"] == reference[i]["usage"]["completion_tokens"]
        assert json.loads(rows[i]["answer"]) == reference[i]
    assert "context holds 64" in rows[99]["error"] and rows[99]["text"] == ""


def test_without_ray_flag_ray_is_never_imported(smollm2: Path, tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"prompt": "Hi"}) + "\n")
    code = ("import sys; from sdfp_edge.cli.main import main\n"
            "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
            "bad = sorted(m for m in sys.modules if m == 'ray' or m.startswith(('ray.', 'sdfp_edge.cli.ray_batch')))\n"
            "assert not bad, bad\nprint('ok')")
    r = subprocess.run([sys.executable, "-c", code, "generate", "-m", str(smollm2), "-n", "2", "-t", "1",
                        "--input", str(src), "--output", str(tmp_path / "out.jsonl")],
                       capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(ROOT), "SDFP_EDGE_CACHE": str(tmp_path / "c")})
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
