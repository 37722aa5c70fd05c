"""Every architecture the pinned llama.cpp runs, on tiny random-weight models of each
(tests/tiny_models.py: built from transformers' configs, converted by the pinned converter).

What each architecture must do is in docs/architectures.md; each cell there names the test
here (or in test_layer_skip.py / test_block_skip.py) that backs it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

import tiny_models
from sdfp_edge.api import Model
from sdfp_edge.convert import pipeline as cv
from sdfp_edge.errors import SdfpError
from sdfp_edge.metadata import read_skip_metadata
from sdfp_edge.runtime.backend import SKIP_ARCHITECTURES, LlamaBackend
from sdfp_edge.runtime.layer_skip import DraftMask
from sdfp_edge.runtime.parallel import ParallelDecoder, Request
from skip_helpers import block_checks, fresh_context_check, graph_reuse_check, open_backend, prompt_logits, \
    shared_cache_check

# attention models whose KV cache llama_memory_seq_rm cuts back: every mode runs
ROLLBACK = ("llama", "qwen3moe", "gemma2", "phi3", "smollm3", "granite", "olmo2", "openai_moe", "llama4",
            "mistral3", "gemma4", "starcoder2")
# whose graph builders honour layer and block masks and the small head (tools/llama-layer-skip.patch)
SKIP = ("llama", "qwen3moe", "gemma2", "phi3", "smollm3", "granite", "olmo2", "openai_moe", "llama4", "mistral3",
        "gemma4")
RECURRENT = ("mamba",)  # a state that cannot be cut back: plain decoding only
PROMPT = "the cat sat on the mat and the cat sat on the mat and the cat"
CLI = str(Path(sys.executable).parent / "sdfp-edge")


@pytest.fixture(scope="session")
def converter_dir() -> Path:
    try:
        return cv.llama_cpp_source() / "vendor" / "llama.cpp"
    except SdfpError as e:
        pytest.skip(f"no llama.cpp source tree for its converter: {e}")


_built: dict[str, tuple[Path, Path]] = {}


def tiny(name: str, converter_dir: Path) -> tuple[Path, Path]:
    """(HF folder, GGUF) of the tiny `name` model (cached on disk between runs)."""
    if name not in _built:
        _built[name] = tiny_models.build(name, converter_dir)
    return _built[name]


def greedy(m: Model, mode: str, prompt: str = PROMPT, n: int = 24) -> tuple[list[int], dict]:
    out = m.generate(prompt, max_tokens=n, mode=mode, temperature=0)
    return out.tokens, m.last_stats


@pytest.mark.parametrize("name", ROLLBACK + RECURRENT)
def test_every_mode_runs_and_equals_plain_decoding(name: str, converter_dir: Path) -> None:
    """off, lookup and auto give llama.cpp's own greedy tokens; lookup drafts where the memory
    rolls back, and plain decoding (with one note) where it does not."""
    _, path = tiny(name, converter_dir)
    logged: list[str] = []
    with Model(path, n_ctx=256, n_threads=2, cost_cache=False, log=logged.append) as m:
        off, _ = greedy(m, "off")
        lookup, st_lookup = greedy(m, "lookup")
        auto, _ = greedy(m, "auto")
        assert lookup == off and auto == off
        assert len(off) == 24
        if name in RECURRENT:
            assert not m.backend.can_rollback
            assert st_lookup["drafted"] == 0
            assert [n for n in logged if "recurrent state" in n] == logged[:1] and len(logged) == 1
        else:
            assert m.backend.can_rollback
            assert st_lookup["drafted"] > 0  # the loop's drafts were really checked and cut back
        if m.backend.arch not in SKIP_ARCHITECTURES:
            assert any("layer-skip is not available" in n for n in logged) or name in RECURRENT
        # a second prompt that leaves the first: the cache is cut back (or rebuilt) right
        again, _ = greedy(m, "auto", prompt="a dog ran")
    with Model(path, n_ctx=256, n_threads=2, cost_cache=False) as fresh:
        assert greedy(fresh, "off", prompt="a dog ran")[0] == again


@pytest.mark.parametrize("name", ("starcoder2", "mamba"))
def test_parallel_sequences_run_every_architecture(name: str, converter_dir: Path) -> None:
    """Batch mode (several sequences in one context) equals one sequence at a time."""
    _, path = tiny(name, converter_dir)
    prompts = [PROMPT, "a dog ran", PROMPT + " sat"]
    with LlamaBackend(path, n_ctx=512, n_threads=2, n_seq_max=2) as b:
        toks = [b.tokenize(p) for p in prompts]
        dec = ParallelDecoder(b, seq_ctx=256, mode="lookup")
        got = {r.key: r.tokens for r in dec.run(Request(i, t, 12) for i, t in enumerate(toks))}
    with Model(path, n_ctx=256, n_threads=2, cost_cache=False) as m:
        for i, t in enumerate(toks):
            assert got[i] == m._collect(m.stream_tokens(t, max_tokens=12, mode="off", temperature=0)).tokens


@pytest.mark.parametrize("name", ("starcoder2", "mamba"))
def test_layerskip_mode_is_a_clear_error_where_unsupported(name: str, converter_dir: Path, tmp_path: Path) -> None:
    _, path = tiny(name, converter_dir)
    env = dict(os.environ, SDFP_EDGE_CACHE=str(tmp_path))  # the CLI's cost file goes here
    r = subprocess.run([CLI, "generate", "-m", str(path), "-p", "the cat", "-n", "4", "-t", "2", "--temperature", "0",
                        "--mode", "layerskip"], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    assert "does not support layer skipping" in r.stderr
    ok = subprocess.run([CLI, "generate", "-m", str(path), "-p", "the cat", "-n", "4", "-t", "2", "--temperature", "0",
                         "--mode", "auto"],
                        capture_output=True, text=True, timeout=300, env=env)
    assert ok.returncode == 0, ok.stderr
    assert ok.stderr.count("note:") == 1, ok.stderr


@pytest.mark.parametrize("name", SKIP)
def test_layer_and_block_masks(name: str, converter_dir: Path) -> None:
    """The patch's contract on each architecture: a zero mask is bitwise no mask, a mask
    changes the logits, both blocks equal the whole layer, each mask equals a fresh context
    with it, a draft and its target keep their graphs, and a draft's scratch KV (with the
    small head) leaves no trace once cut."""
    _, path = tiny(name, converter_dir)
    b = open_backend(path)
    try:
        assert b.arch in SKIP_ARCHITECTURES and b.n_layer == tiny_models.N_LAYER
        plain = prompt_logits(b, None)
        assert np.array_equal(plain, prompt_logits(b, [0] * b.n_layer))
        block_checks(b, (1,))
        graph_reuse_check(b, DraftMask.layers((1,)))
    finally:
        b.close()
    fresh_context_check(path, [0, 1, 0, 0], [0, 0, 1, 0])
    shared_cache_check(path, DraftMask(attn=(1,), ffn=(2,), small_head=True))


@pytest.mark.parametrize("name", SKIP)
def test_convert_writes_a_skip_list_that_generate_uses(name: str, converter_dir: Path, tmp_path: Path) -> None:
    """`convert` scores the HF model through transformers' own class (FIT with its block
    scores), writes valid sdfp.* metadata, and generate drafts with it: greedy layerskip,
    lookup and auto give the tokens of off."""
    hf, path = tiny(name, converter_dir)
    out = tmp_path / "annotated.gguf"
    meta = cv.convert(hf, out, gguf_in=path, n_skip=1, method="fit", n_samples=2, seq_len=12, progress=False)
    assert read_skip_metadata(out) == meta
    with LlamaBackend(path, n_ctx=64, n_threads=1) as b:
        arch = b.arch
    assert (meta.architecture, meta.n_layer, meta.score_method) == (arch, tiny_models.N_LAYER, "fit")
    assert len(meta.layer_scores) == tiny_models.N_LAYER and len(meta.skip_layers) == 1
    assert meta.skip_layers[0] in range(1, tiny_models.N_LAYER - 1)
    assert len(meta.attn_scores) == len(meta.ffn_scores) == tiny_models.N_LAYER  # sub-layer scores
    with Model(out, n_ctx=256, n_threads=2, cost_cache=False) as m:
        assert m.skip_source.startswith("GGUF metadata") and m.skip_layers == meta.skip_layers
        off, _ = greedy(m, "off")
        skip, st = greedy(m, "layerskip")
        assert st["draft_steps"] > 0  # layer-skip drafts were made (random weights: few accepted)
        assert skip == off
        assert greedy(m, "lookup")[0] == off and greedy(m, "auto")[0] == off
