"""What the tests of the layer-skip patch share: a small context, a prompt, and the check
that a draft's scratch KV leaves no trace once it is cut."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from sdfp_edge.runtime import draft_vocab
from sdfp_edge.runtime.backend import LlamaBackend
from sdfp_edge.runtime.layer_skip import DraftMask

PROMPT = "The quick brown fox jumps over the lazy dog. Then it"


def offload_layers() -> int | None:
    """Layers to offload in the tests (SDFP_EDGE_TEST_NGL; conftest.py): None is llama.cpp's default."""
    value = os.environ.get("SDFP_EDGE_TEST_NGL")
    return int(value) if value else None


def open_backend(path: Path) -> LlamaBackend:
    return LlamaBackend(path, n_ctx=256, n_threads=2, n_gpu_layers=offload_layers())


def prompt_logits(b: LlamaBackend, mask: DraftMask | list[int] | None) -> np.ndarray:
    """The prompt's logits with `mask` set: a DraftMask, or a raw 0/1 list passed to C unchanged."""
    b.reset()
    if isinstance(mask, list):
        b.set_raw_mask(mask)
    else:
        b.set_mask(mask)
    try:
        return b.decode(b.tokenize(PROMPT), logits="all")
    finally:
        b.set_mask(None)


def shared_cache_check(path: Path, mask: DraftMask) -> None:
    """Draft with `mask` (and the small head), cut those positions, verify: as if never drafted."""
    drafted = open_backend(path)
    plain = open_backend(path)
    try:
        if mask.small_head:
            drafted.load_draft_vocab(draft_vocab.choose(drafted.n_vocab, size=4096, is_eog=drafted.is_eog))
        prompt = plain.tokenize(PROMPT)
        cont = plain.tokenize(" went home and slept", add_special=False)
        for b in (drafted, plain):
            b.decode(prompt, logits="last")
        start = drafted.n_past
        drafted.set_mask(mask)
        for t in cont:  # draft steps write scratch KV at positions start..
            drafted.decode([t], logits="last")
        drafted.set_mask(None)
        drafted.truncate(start)
        assert np.array_equal(drafted.decode(cont, logits="all"), plain.decode(cont, logits="all"))
    finally:
        drafted.close()
        plain.close()
