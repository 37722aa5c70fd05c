"""Models by name from the Hugging Face Hub (hub.py): the choice of file, and `sdfp-edge` against a
Hub on localhost (fake_hub.py) through huggingface_hub, with HF_ENDPOINT and HF_HOME in tmp.

The commands run as subprocesses: huggingface_hub reads HF_ENDPOINT, HF_HOME and
HF_HUB_OFFLINE when it is imported, as a user's shell would set them.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from fake_hub import FakeHub
from sdfp_edge import hub
from sdfp_edge.errors import ModelNotFoundError
from sdfp_edge.hub import GGUFSet, Ref, choose, gguf_sets, parse_ref, quant_label

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-c", "from sdfp_edge.cli.main import main; main()"]


# --- names and choices (no network) --------------------------------------------------------------
@pytest.mark.parametrize("value, ref", [
    ("bartowski/Qwen_Qwen3-0.6B-GGUF", Ref("bartowski/Qwen_Qwen3-0.6B-GGUF")),
    ("unsloth/gemma-3-270m-it-GGUF:Q8_0", Ref("unsloth/gemma-3-270m-it-GGUF", "Q8_0")),
    ("hf.co/owner/repo:q4_k_m", Ref("owner/repo", "q4_k_m")),
    ("https://huggingface.co/owner/repo", Ref("owner/repo")),
    ("owner/repo:sub/model-Q5_K_M.gguf", Ref("owner/repo", "sub/model-Q5_K_M.gguf")),
    ("models/model.gguf", None), ("/abs/path", None), ("./rel/path", None), ("smollm2-135m", None),
    ("a/b/c", None), ("../x", None),
])
def test_a_hub_reference_is_owner_slash_repo(value: str, ref: Ref | None) -> None:
    assert parse_ref(value) == ref


@pytest.mark.parametrize("name, label", [
    ("Qwen3-0.6B-Q4_K_M.gguf", "Q4_K_M"), ("qwen2.5-coder-1.5b-instruct-q4_k_m.gguf", "Q4_K_M"),
    ("Mistral-7B-Instruct-v0.3.Q8_0.gguf", "Q8_0"), ("Qwen3-30B-A3B-UD-Q4_K_XL.gguf", "UD-Q4_K_XL"),
    ("gemma-3-270m-it-IQ4_XS.gguf", "IQ4_XS"), ("Llama-3.2-1B-BF16.gguf", "BF16"),
    ("Q4_K_M/Big-Model-Q4_K_M-00001-of-00003.gguf", "Q4_K_M"), ("BF16/model-00001-of-00002.gguf", "BF16"),
    ("model.gguf", "model"), ("Qwen2-7B-f16.gguf", "F16"),
])
def test_the_quantization_comes_from_the_file_name(name: str, label: str) -> None:
    assert quant_label(name) == label


def test_split_sets_come_whole_and_projectors_are_not_models() -> None:
    files = {"m-Q8_0-00001-of-00002.gguf": 5, "m-Q8_0-00002-of-00002.gguf": 4, "m-Q4_K_M.gguf": 3,
             "mmproj-m-F16.gguf": 2, "README.md": 1, "m-Q6_K-00001-of-00002.gguf": 7}  # Q6_K lacks a part
    assert gguf_sets(files) == [
        GGUFSet("Q4_K_M", ("m-Q4_K_M.gguf",), 3),
        GGUFSet("Q8_0", ("m-Q8_0-00001-of-00002.gguf", "m-Q8_0-00002-of-00002.gguf"), 9)]


def test_the_default_is_q4_k_m_else_the_smallest_of_four_bits_or_more() -> None:
    sets = gguf_sets({"m-Q2_K.gguf": 1, "m-Q6_K.gguf": 6, "m-Q5_K_M.gguf": 5, "m-Q4_K_M.gguf": 4})
    assert choose(sets, Ref("o/r")) == (sets[1], None)
    pick, note = choose([s for s in sets if s.label != "Q4_K_M"], Ref("o/r"))
    assert pick.label == "Q5_K_M" and note is not None and "no Q4_K_M; taking Q5_K_M" in note
    only_low = gguf_sets({"m-Q2_K.gguf": 1, "m-Q3_K_M.gguf": 2})
    assert choose(only_low, Ref("o/r"))[0].label == "Q3_K_M"
    assert choose(sets, Ref("o/r", "q6_k"))[0].label == "Q6_K"
    assert choose(sets, Ref("o/r", "m-Q2_K.gguf"))[0].label == "Q2_K"
    with pytest.raises(ModelNotFoundError, match=r"o/r has no Q8_0 GGUF; it has Q2_K .*Q4_K_M .*Q5_K_M .*Q6_K"):
        choose(sets, Ref("o/r", "Q8_0"))


def test_an_existing_path_with_a_slash_stays_a_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sdfp_edge.models import resolve_model

    monkeypatch.chdir(tmp_path)
    (tmp_path / "owner").mkdir()
    (tmp_path / "owner" / "repo").write_bytes(b"GGUF")
    monkeypatch.setattr(hub, "resolve", lambda *a, **k: pytest.fail("the Hub was asked"))
    assert resolve_model("owner/repo") == Path("owner/repo")


# --- against a Hub on localhost ------------------------------------------------------------------
def tiny_gguf(seed: int, n_floats: int) -> bytes:
    """A small valid GGUF (a header and one tensor of random floats): enough to download and inspect."""
    import tempfile

    import gguf

    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "t.gguf"
        w = gguf.GGUFWriter(out, arch="llama")
        w.add_block_count(2)
        w.add_tensor("t", np.random.default_rng(seed).standard_normal(n_floats).astype(np.float32))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        return out.read_bytes()


def split_gguf(src: Path, out_dir: Path, parts: int) -> list[Path]:
    """`src` rewritten as a split GGUF (gguf-py's writer, as llama.cpp's converter splits)."""
    import gguf

    reader = gguf.GGUFReader(src, "r")
    base = out_dir / "Smol-Q4_1.gguf"
    w = gguf.GGUFWriter(base, arch="llama", split_max_tensors=-(-len(reader.tensors) // parts))
    for name, f in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        t = f.types[0]
        sub = f.types[-1] if t == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(name, f.contents(), t, sub_type=sub)
    for t in reader.tensors:
        w.add_tensor_info(t.name, t.data.shape, t.data.dtype, t.data.nbytes, t.tensor_type)
    names = w.format_shard_names(base)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for t in reader.tensors:
        w.write_tensor_data(t.data)
    w.close()
    return names


@pytest.fixture(scope="module")
def fake_hub() -> Iterator[FakeHub]:
    h = FakeHub()
    h.add("test/tiny-GGUF", {"tiny-Q4_K_M.gguf": tiny_gguf(0, 300_000), "tiny-Q8_0.gguf": tiny_gguf(1, 600_000),
                             "mmproj-tiny-F16.gguf": tiny_gguf(2, 10), "README.md": b"# tiny\n"})
    h.add("test/big-GGUF", {"big-Q4_K_M.gguf": tiny_gguf(6, 6_300_000)})
    h.add("test/split-tiny-GGUF", {f"t-Q4_K_M-0000{i}-of-00003.gguf": tiny_gguf(10 + i, 1000) for i in (1, 2, 3)})
    h.add("test/fallback-GGUF", {"t-Q2_K.gguf": tiny_gguf(3, 1000), "t-Q5_K_M.gguf": tiny_gguf(4, 3000),
                                 "t-Q6_K.gguf": tiny_gguf(5, 4000)})
    h.add("test/safetensors", {"config.json": b"{}", "model.safetensors": b"\0" * 64})
    h.add("test/html-GGUF", {"page-Q4_K_M.gguf": b"<!doctype html><p>rate limited</p>"})
    h.add("test/gated-GGUF", {"g-Q4_K_M.gguf": tiny_gguf(7, 10)})
    h.gated.add("test/gated-GGUF")
    yield h
    h.close()


@pytest.fixture
def env(fake_hub: FakeHub, tmp_path: Path) -> dict[str, str]:
    fake_hub.clear()
    e = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    e.update(HF_ENDPOINT=fake_hub.url, HF_HOME=str(tmp_path / "hf"), HF_HUB_DISABLE_TELEMETRY="1",
             HF_HUB_DISABLE_PROGRESS_BARS="1", SDFP_EDGE_CACHE=str(tmp_path / "sdfp"),
             NO_PROXY="127.0.0.1,localhost", PYTHONPATH=str(ROOT), OMP_WAIT_POLICY="PASSIVE")
    return e


def sdfp(env: dict[str, str], *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env={**env, **extra}, timeout=600)


def assert_error(r: subprocess.CompletedProcess[str], *needles: str) -> str:
    """Exit 2 with one line on stderr that says what is wrong (no traceback)."""
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def test_pull_downloads_q4_k_m_once_and_a_second_run_downloads_nothing(fake_hub: FakeHub,
                                                                        env: dict[str, str]) -> None:
    r = sdfp(env, "models", "pull", "test/tiny-GGUF")
    assert r.returncode == 0, r.stderr
    path = Path(r.stdout.strip())
    assert path.name == "tiny-Q4_K_M.gguf" and str(path).startswith(env["HF_HOME"])
    assert path.read_bytes() == fake_hub.repos["test/tiny-GGUF"].files["tiny-Q4_K_M.gguf"]
    assert "has no sdfp.* metadata" in r.stderr and "prompt-lookup drafts" in r.stderr
    assert [q.path for q in fake_hub.downloads()] == ["/test/tiny-GGUF/resolve/" +
                                                      fake_hub.repos["test/tiny-GGUF"].sha + "/tiny-Q4_K_M.gguf"]
    fake_hub.clear()
    again = sdfp(env, "models", "pull", "test/tiny-GGUF:Q4_K_M")
    assert again.returncode == 0 and again.stdout == r.stdout
    assert fake_hub.downloads("GET") == [] and fake_hub.downloads("HEAD") == []  # the listing only
    listed = sdfp(env, "models", "list")
    assert "test/tiny-GGUF:Q4_K_M" in listed.stdout and "test/tiny-GGUF:Q8_0" not in listed.stdout
    rows = json.loads(sdfp(env, "models", "list", "--json").stdout)
    assert [r["path"] for r in rows if r["source"] == "hub"] == [str(path)]
    fake_hub.clear()
    # offline: the cache answers and nothing goes over the network
    offline = sdfp(env, "models", "pull", "test/tiny-GGUF", HF_HUB_OFFLINE="1")
    assert offline.returncode == 0 and offline.stdout == r.stdout and fake_hub.requests == []
    assert_error(sdfp(env, "models", "pull", "test/tiny-GGUF:Q8_0", HF_HUB_OFFLINE="1"),
                 "test/tiny-GGUF:Q8_0 is not in the Hugging Face cache", "the cache holds Q4_K_M", "HF_HUB_OFFLINE")
    assert sdfp(env, "models", "path", "test/tiny-GGUF").stdout == r.stdout and fake_hub.requests == []
    # no network: the cached file is used, with a note; an uncached one is a clear error
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    down = sdfp(env, "models", "pull", "test/tiny-GGUF", HF_ENDPOINT=closed)
    assert down.returncode == 0 and down.stdout == r.stdout and "cannot reach" in down.stderr
    assert_error(sdfp(env, "models", "pull", "test/tiny-GGUF:Q8_0", HF_ENDPOINT=closed),
                 f"cannot reach {closed}", "test/tiny-GGUF:Q8_0 is not in the Hugging Face cache")


def test_a_dropped_connection_resumes_where_it_stopped(fake_hub: FakeHub, env: dict[str, str]) -> None:
    """huggingface_hub writes in chunks of 10 MiB: the connection drops after 12.6 MB of 25."""
    data = fake_hub.repos["test/big-GGUF"].files["big-Q4_K_M.gguf"]
    fake_hub.drops[("test/big-GGUF", "big-Q4_K_M.gguf")] = 1
    r = sdfp(env, "models", "pull", "test/big-GGUF")
    assert r.returncode == 0, r.stderr
    assert Path(r.stdout.strip()).read_bytes() == data
    first, second = fake_hub.downloads()
    assert first.range is None and second.range is not None
    start = int(second.range.removeprefix("bytes=").rstrip("-"))
    assert 0 < start <= len(data) // 2  # it asked for what it did not have, not the whole file


def test_a_failed_run_keeps_the_finished_parts_and_a_rerun_fetches_the_rest(fake_hub: FakeHub,
                                                                            env: dict[str, str]) -> None:
    parts = [f"t-Q4_K_M-0000{i}-of-00003.gguf" for i in (1, 2, 3)]
    fake_hub.drops[("test/split-tiny-GGUF", parts[1])] = 100  # more than huggingface_hub's retries
    assert_error(sdfp(env, "models", "pull", "test/split-tiny-GGUF"), f"test/split-tiny-GGUF/{parts[1]}",
                 "was interrupted", "run the command again")
    assert not list(Path(env["HF_HOME"]).rglob("*.incomplete"))  # nothing half-written is left behind
    fake_hub.drops.clear()
    fake_hub.clear()
    r = sdfp(env, "models", "pull", "test/split-tiny-GGUF")
    assert r.returncode == 0, r.stderr
    assert Path(r.stdout.strip()).name == parts[0]
    assert [q.path.rsplit("/", 1)[1] for q in fake_hub.downloads()] == parts[1:]
    for p in parts:
        assert (Path(r.stdout.strip()).parent / p).read_bytes() == fake_hub.repos["test/split-tiny-GGUF"].files[p]


def test_a_checksum_that_does_not_match_is_removed_and_refused(fake_hub: FakeHub, env: dict[str, str]) -> None:
    fake_hub.wrong_sha.add(("test/tiny-GGUF", "tiny-Q4_K_M.gguf"))
    try:
        assert_error(sdfp(env, "models", "pull", "test/tiny-GGUF"), "sha256", "removed it from the cache")
    finally:
        fake_hub.wrong_sha.clear()
    fake_hub.clear()
    r = sdfp(env, "models", "pull", "test/tiny-GGUF")
    assert r.returncode == 0 and len(fake_hub.downloads()) == 1  # downloaded again, not taken from the cache


def test_without_q4_k_m_the_smallest_of_four_bits_or_more_and_it_says_so(fake_hub: FakeHub,
                                                                         env: dict[str, str]) -> None:
    r = sdfp(env, "models", "pull", "test/fallback-GGUF")
    assert r.returncode == 0, r.stderr
    assert Path(r.stdout.strip()).name == "t-Q5_K_M.gguf"
    assert "no Q4_K_M; taking Q5_K_M" in r.stderr


@pytest.mark.parametrize("ref, needles", [
    ("test/missing", ["test/missing: no such model repository on", "HF_TOKEN"]),
    ("test/safetensors", ["test/safetensors has no GGUF model files", "config.json, model.safetensors"]),
    ("test/tiny-GGUF:Q3_K_S", ["test/tiny-GGUF has no Q3_K_S GGUF; it has Q4_K_M (1 MB), Q8_0 (2 MB)"]),
    ("test/html-GGUF", ["test/html-GGUF: page-Q4_K_M.gguf is not a GGUF file", "<!do"]),
    ("test/gated-GGUF", ["test/gated-GGUF is gated: accept its conditions at", "HF_TOKEN"]),
])
def test_each_hub_error_is_one_line_and_exit_2(env: dict[str, str], ref: str, needles: list[str]) -> None:
    assert_error(sdfp(env, "models", "pull", ref), *needles)


def test_no_network_and_nothing_cached_is_one_line(env: dict[str, str]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    assert_error(sdfp(env, "generate", "-m", "test/tiny-GGUF", "-p", "x", HF_ENDPOINT=closed),
                 f"cannot reach {closed}", "not in the Hugging Face cache")


def test_m_and_hf_together_are_refused(env: dict[str, str]) -> None:
    r = sdfp(env, "generate", "-m", "a/b", "-hf", "c/d", "-p", "x")
    assert r.returncode == 2 and "give -m or -hf, not both" in r.stderr
    r = sdfp(env, "generate", "-hf", "not-a-repo", "-p", "x")
    assert r.returncode == 2 and "is not owner/repo[:QUANT]" in r.stderr


@pytest.mark.slow
def test_a_split_gguf_from_the_hub_runs_as_the_whole_file(fake_hub: FakeHub, env: dict[str, str],
                                                          smollm2_plain: Path, tmp_path: Path) -> None:
    parts = split_gguf(smollm2_plain, tmp_path, 3)
    assert [p.name for p in parts] == [f"Smol-Q4_1-0000{i}-of-00003.gguf" for i in (1, 2, 3)]
    fake_hub.add("test/smol-split-GGUF", {p.name: p for p in parts})
    args = ["-p", "The capital of France is", "-n", "12", "--temperature", "0", "--json", "-t", "1"]
    split = sdfp(env, "generate", "-hf", "test/smol-split-GGUF", *args)
    assert split.returncode == 0, split.stderr
    assert len(fake_hub.downloads()) == 3
    cached = sorted((Path(env["HF_HOME"]) / "hub").rglob("Smol-Q4_1-*.gguf"))
    assert [hashlib.sha256(p.read_bytes()).hexdigest() for p in cached] == \
        [hashlib.sha256(p.read_bytes()).hexdigest() for p in parts]
    assert "downloading test/smol-split-GGUF:Q4_1 (Smol-Q4_1-00001-of-00003.gguf, 3 parts" in split.stderr
    assert sum("no sdfp.* skip list" in ln for ln in split.stderr.splitlines()) == 1
    whole = sdfp(env, "generate", "-m", str(smollm2_plain), *args)
    assert whole.returncode == 0, whole.stderr
    assert json.loads(split.stdout)["tokens"] == json.loads(whole.stdout)["tokens"]
    assert json.loads(split.stdout)["stats"]["tokens"] == 12
