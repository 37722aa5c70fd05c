"""The C contract of llama_set_layer_skip, on the real patched build and real models."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sdfp_edge.runtime import draft_vocab, layer_skip
from sdfp_edge.runtime.backend import LlamaBackend
from sdfp_edge.bench.runner import thp_mode
from sdfp_edge.errors import RuntimeBuildError, SkipListError, UnsupportedArchitectureError
from sdfp_edge.runtime.layer_skip import DraftMask
from skip_helpers import (PROMPT, batch_switch_reuse_check, fresh_context_check, graph_reuse_check,
                          open_backend, prompt_logits, shared_cache_check)

@pytest.fixture(scope="module")
def smol(smollm2: Path):
    b = open_backend(smollm2)
    yield b
    b.close()


def test_zero_mask_is_bitwise_no_mask_and_a_real_mask_changes_logits(smol: LlamaBackend) -> None:
    n = smol.n_layer
    plain = prompt_logits(smol, None)
    zeros = prompt_logits(smol, [0] * n)
    assert np.array_equal(plain, zeros)
    mask = [0] * n
    mask[3] = mask[10] = 1
    skipped = prompt_logits(smol, mask)
    assert skipped.shape == plain.shape
    assert np.abs(skipped - plain).max() > 1e-2


def test_switching_masks_matches_a_fresh_context_per_mask(smollm2: Path) -> None:
    n = 30
    fresh_context_check(smollm2, [1 if i in (2, 5, 8) else 0 for i in range(n)],
                        [1 if i in (12, 20) else 0 for i in range(n)])


def test_a_draft_and_its_target_each_keep_their_graph(smol: LlamaBackend) -> None:
    graph_reuse_check(smol, DraftMask.layers((2, 5, 9)))


def test_single_tokens_and_verify_batches_each_keep_their_graph(smol: LlamaBackend) -> None:
    batch_switch_reuse_check(smol)


def test_more_masks_than_kept_graphs_stay_exact(smol: LlamaBackend) -> None:
    """Seven masks in turn, twice: the second round (graphs reused or rebuilt after eviction)
    is bit for bit the first, and a draft head replaced under a kept graph is the new one."""
    prompt = smol.tokenize(PROMPT)
    smol.reset()
    smol.decode(prompt[:-1], logits="last")
    start = smol.n_past
    masks = [None] + [DraftMask.layers((i, i + 7)) for i in range(1, 7)] + [DraftMask(ffn=(3, 4))]

    def round_() -> list[np.ndarray]:
        out = []
        for mask in masks:
            smol.set_mask(mask)
            out.append(smol.decode(prompt[-1:], logits="last")[0])
            smol.truncate(start)
        smol.set_mask(None)
        return out

    first, second = round_(), round_()
    for i, (a, b) in enumerate(zip(first, second)):
        assert np.array_equal(a, b), f"mask {masks[i]} gave other logits in the second round"
    assert len({a.tobytes() for a in first}) == len(masks)

    head = DraftMask(ffn=(3, 4), small_head=True)
    small = [draft_vocab.choose(smol.n_vocab, size=1024, recorded=[t], is_eog=smol.is_eog) for t in (40000, 45000)]
    try:
        for ids in small:  # the second vocabulary replaces the head of a graph kept for this mask
            smol.load_draft_vocab(ids)
            smol.set_mask(head)
            got = smol.decode(prompt[-1:], logits="last")[0]
            smol.truncate(start)
            smol.set_mask(None)
            inside = np.zeros(smol.n_vocab, dtype=bool)
            inside[ids] = True
            assert np.isneginf(got[~inside]).all() and np.isfinite(got[inside]).all()
            np.testing.assert_allclose(got[inside], first[-1][inside], rtol=1e-5, atol=1e-4)
    finally:
        smol.load_draft_vocab(None)


def test_shared_kv_cache_smollm2(smollm2: Path) -> None:
    shared_cache_check(smollm2, DraftMask.layers([4, 9, 14, 19]))


@pytest.mark.slow
def test_qwen2_layer_skip(qwen05: Path) -> None:
    b = open_backend(qwen05)
    assert (b.arch, b.n_layer) == ("qwen2", 24)
    plain = prompt_logits(b, None)
    assert np.array_equal(plain, prompt_logits(b, [0] * 24))
    assert np.abs(prompt_logits(b, [1 if i in (6, 13) else 0 for i in range(24)]) - plain).max() > 1e-2
    b.close()
    shared_cache_check(qwen05, DraftMask.layers([6, 13, 17]))


@pytest.mark.slow
def test_gemma3_layer_skip(gemma3: Path) -> None:
    b = open_backend(gemma3)
    assert (b.arch, b.n_layer) == ("gemma3", 18)
    plain = prompt_logits(b, None)
    assert np.array_equal(plain, prompt_logits(b, [0] * 18))
    assert np.abs(prompt_logits(b, [1 if i in (4, 9) else 0 for i in range(18)]) - plain).max() > 1e-2
    b.close()
    shared_cache_check(gemma3, DraftMask.layers([4, 9, 12]))


def test_wrong_length_and_last_layer_are_refused(smol: LlamaBackend) -> None:
    fn = layer_skip.bind().layer_skip
    n = smol.n_layer
    for bad_n in (n - 1, n + 1, 0):
        arr = (ctypes.c_uint8 * (n + 1))()
        assert fn(smol._ctx.ctx, arr, bad_n) == layer_skip.ERR_N_LAYER
    last = (ctypes.c_uint8 * n)(*([0] * (n - 1) + [1]))
    assert fn(smol._ctx.ctx, last, n) == layer_skip.ERR_LAST
    with pytest.raises(SkipListError, match="entries"):
        smol.set_raw_mask([0] * (n - 1))
    with pytest.raises(SkipListError, match="last layer"):
        smol.set_raw_mask([0] * (n - 1) + [1])
    # a refused mask leaves the previous one in force: here none, so logits are the model's own
    assert np.array_equal(prompt_logits(smol, None), prompt_logits(smol, [0] * n))


def test_unsupported_architecture_is_refused(foreign_arch_gguf: Path) -> None:
    b = open_backend(foreign_arch_gguf)
    try:
        fn = layer_skip.bind().layer_skip
        mask = (ctypes.c_uint8 * b.n_layer)(*([1] + [0] * (b.n_layer - 1)))
        assert fn(b._ctx.ctx, mask, b.n_layer) == layer_skip.ERR_ARCH
        with pytest.raises(UnsupportedArchitectureError, match="does not support layer skipping"):
            b.set_skip([0])
        fn(b._ctx.ctx, None, 0)  # clearing is always allowed
    finally:
        b.close()


def test_stock_build_is_named_with_the_fix() -> None:
    stub = ctypes.CDLL(None)  # the process itself: a library without llama_set_layer_skip
    with pytest.raises(RuntimeBuildError) as e:
        layer_skip.bind(stub)
    msg = str(e.value)
    assert "stock build" in msg and "tools/build_runtime.py --install" in msg


def test_qwen3_layer_skip(qwen3_gguf: Path) -> None:
    b = open_backend(qwen3_gguf)
    assert (b.arch, b.n_layer) == ("qwen3", 30)
    plain = prompt_logits(b, None)
    assert np.isfinite(plain).all()
    assert np.array_equal(plain, prompt_logits(b, [0] * 30))
    assert np.abs(prompt_logits(b, [1 if i in (6, 13) else 0 for i in range(30)]) - plain).max() > 1e-2
    b.close()
    shared_cache_check(qwen3_gguf, DraftMask.layers([6, 13, 17]))


def _anon_huge_pages_mb(model: Path, env_value: str | None) -> float:
    """AnonHugePages of a fresh process that opened `model` (the advice is process-wide)."""
    code = (
        "import re, sys; from sdfp_edge.runtime.backend import LlamaBackend; "
        "b = LlamaBackend(sys.argv[1], n_ctx=4096, n_threads=1); "
        "print(re.search(r'AnonHugePages:\\s+(\\d+)', open('/proc/self/smaps_rollup').read()).group(1))"
    )
    env = {k: v for k, v in os.environ.items() if k != "SDFP_EDGE_HUGE_PAGES"}
    if env_value is not None:
        env["SDFP_EDGE_HUGE_PAGES"] = env_value
    out = subprocess.run([sys.executable, "-c", code, str(model)], env=env, capture_output=True, text=True,
                         check=True, timeout=300)
    return int(out.stdout.split()[-1]) / 1024


def test_huge_page_advice_is_opt_in_and_takes_effect(smollm2: Path) -> None:
    """With THP "madvise" only advised memory gets huge pages: SDFP_EDGE_HUGE_PAGES=1 must put
    ggml's large buffers there (SmolLM2's 4096-token KV cache alone is 94 MB); unset or 0
    must leave them on small pages, as upstream ggml does (why it is not the default:
    backend.huge_pages_wanted)."""
    if thp_mode() != "madvise":
        pytest.skip("transparent huge pages are not in 'madvise' mode here: advice changes nothing to see")
    advised = _anon_huge_pages_mb(smollm2, "1")
    default, off = _anon_huge_pages_mb(smollm2, None), _anon_huge_pages_mb(smollm2, "0")
    assert default < 16 and off < 16, (default, off)
    assert advised >= max(default, off) + 64, (advised, default, off)
