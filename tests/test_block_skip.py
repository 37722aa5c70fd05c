"""The C contract of llama_set_block_skip and of the small draft head, on real models."""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np
import pytest

from sdfp_edge.runtime import draft_vocab, layer_skip
from sdfp_edge.runtime.backend import LlamaBackend
from sdfp_edge.errors import ModelFileError, SkipListError, UnsupportedArchitectureError
from sdfp_edge.runtime.layer_skip import ATTN, FFN, DraftMask
from skip_helpers import PROMPT, block_checks, open_backend, prompt_logits, shared_cache_check

@pytest.fixture(scope="module")
def smol(smollm2: Path):
    b = open_backend(smollm2)
    yield b
    b.close()


def test_blocks_llama_arch(smol: LlamaBackend, smollm2: Path) -> None:
    block_checks(smol, (3, 10))
    shared_cache_check(smollm2, DraftMask(attn=(2, 5, 9), ffn=(4, 9, 20), small_head=True))


def test_blocks_qwen3_arch(qwen3_gguf: Path) -> None:
    b = open_backend(qwen3_gguf)
    try:
        block_checks(b, (6, 13))
    finally:
        b.close()
    shared_cache_check(qwen3_gguf, DraftMask(attn=(6,), ffn=(13, 17)))


@pytest.mark.slow
def test_blocks_qwen2_arch(qwen05: Path) -> None:
    b = open_backend(qwen05)
    try:
        block_checks(b, (6, 13))
    finally:
        b.close()
    shared_cache_check(qwen05, DraftMask(attn=(6, 10), ffn=(13,), small_head=True))


@pytest.mark.slow
def test_blocks_gemma3_arch(gemma3: Path) -> None:
    b = open_backend(gemma3)
    try:
        block_checks(b, (4, 9))
    finally:
        b.close()
    shared_cache_check(gemma3, DraftMask(attn=(4,), ffn=(9, 12), small_head=True))


def test_bad_block_masks_are_refused_and_keep_the_previous_mask(smol: LlamaBackend) -> None:
    n = smol.n_layer
    fns = layer_skip.bind()
    bad_bits = (ctypes.c_uint8 * n)(*([4] + [0] * (n - 1)))
    assert fns.block_skip(smol._ctx.ctx, bad_bits, n) == layer_skip.ERR_BITS
    for bit in (ATTN, FFN):
        last = (ctypes.c_uint8 * n)(*([0] * (n - 1) + [bit]))
        assert fns.block_skip(smol._ctx.ctx, last, n) == layer_skip.ERR_LAST
    assert fns.block_skip(smol._ctx.ctx, (ctypes.c_uint8 * n)(), n - 1) == layer_skip.ERR_N_LAYER
    with pytest.raises(SkipListError, match="bits other than"):
        smol.set_raw_mask([8] + [0] * (n - 1), blocks=True)
    with pytest.raises(SkipListError, match="out of range"):
        smol.set_mask(DraftMask(attn=(n,)))
    plain = prompt_logits(smol, None)
    assert np.array_equal(plain, prompt_logits(smol, DraftMask()))


def test_small_head_keeps_its_tokens_logits_and_masks_the_rest(smol: LlamaBackend) -> None:
    ids = draft_vocab.choose(smol.n_vocab, size=2048, recorded=[40000, 45000], is_eog=smol.is_eog)
    assert len(ids) == 2048 and 40000 in ids and 45000 in ids and smol.eos_token in ids
    smol.load_draft_vocab(ids)
    try:
        full = prompt_logits(smol, None)
        small = prompt_logits(smol, DraftMask(small_head=True))
        inside = np.zeros(smol.n_vocab, dtype=bool)
        inside[ids] = True
        assert np.isneginf(small[:, ~inside]).all()
        np.testing.assert_allclose(small[:, inside], full[:, inside], rtol=1e-5, atol=1e-4)
        # toggling reuses nothing stale: full, small, full, small on one context
        assert np.array_equal(prompt_logits(smol, None), full)
        np.testing.assert_array_equal(prompt_logits(smol, DraftMask(small_head=True)), small)
        # with a layer mask too: the masked model's logits, restricted
        masked = prompt_logits(smol, DraftMask.layers((4, 9)))
        both = prompt_logits(smol, DraftMask((4, 9), (4, 9), small_head=True))
        np.testing.assert_allclose(both[:, inside], masked[:, inside], rtol=1e-5, atol=1e-4)
    finally:
        smol.load_draft_vocab(None)
    assert np.array_equal(prompt_logits(smol, None), full)


def test_draft_vocab_errors(smol: LlamaBackend, qwen05: Path) -> None:
    with pytest.raises(SkipListError, match="multiple of 32"):
        smol.load_draft_vocab(list(range(33)))
    with pytest.raises(SkipListError, match="multiple of 32"):
        smol.load_draft_vocab(list(range(31)) + [smol.n_vocab])
    with pytest.raises(ModelFileError, match="output matrix"):  # another model's file
        layer_skip.set_draft_vocab(layer_skip.bind(), smol._ctx.ctx, str(qwen05), list(range(64)))
    with pytest.raises(ModelFileError):
        layer_skip.set_draft_vocab(layer_skip.bind(), smol._ctx.ctx, "/nonexistent.gguf", list(range(64)))
    with pytest.raises(SkipListError, match="no draft vocabulary"):
        layer_skip.set_draft_head(layer_skip.bind(), smol._ctx.ctx, True)
    with pytest.raises(ValueError, match="load_draft_vocab"):
        smol.set_mask(DraftMask(small_head=True))


def test_draft_head_refused_on_unsupported_architecture(foreign_arch_gguf: Path) -> None:
    b = open_backend(foreign_arch_gguf)
    try:
        with pytest.raises(UnsupportedArchitectureError):
            b.load_draft_vocab(list(range(64)))
    finally:
        b.close()


def test_choose_draft_vocab() -> None:
    ids = draft_vocab.choose(1000, size=100, recorded=[999, 500, 500, -3, 5000], is_eog=lambda t: t == 998)
    assert len(ids) == 96 and ids == sorted(ids) and {998, 999, 500} <= set(ids)
    assert draft_vocab.choose(70, size=1000) == list(range(64))
    with pytest.raises(ValueError):
        draft_vocab.choose(20, size=100)
    with pytest.raises(ValueError):
        draft_vocab.choose(1000, size=0)
