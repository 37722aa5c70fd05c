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


def block_checks(b: LlamaBackend, layers: tuple[int, ...]) -> None:
    """Both blocks = the whole layer (bitwise); one block alone differs from none and from the other."""
    plain = prompt_logits(b, None)
    whole = prompt_logits(b, DraftMask.layers(layers))
    b.reset()
    b.set_raw_mask([1 if i in layers else 0 for i in range(b.n_layer)])
    try:
        via_layer_api = b.decode(b.tokenize(PROMPT), logits="all")
    finally:
        b.set_raw_mask(None)
    assert np.array_equal(whole, via_layer_api)
    attn = prompt_logits(b, DraftMask(attn=layers))
    ffn = prompt_logits(b, DraftMask(ffn=layers))
    for x in (attn, ffn, whole):
        assert np.isfinite(x).all() and np.abs(x - plain).max() > 1e-2
    assert np.abs(attn - ffn).max() > 1e-2 and np.abs(attn - whole).max() > 1e-2
    assert np.array_equal(prompt_logits(b, None), plain)  # cleared: the full graph again


def fresh_context_check(path: Path, a: list[int], b_: list[int]) -> None:
    """None, A, None, B, A on one context: each step equals a fresh context with that mask.

    Single-token decodes at the same position have the same graph shape, so llama.cpp
    would reuse the previous graph if the mask did not take part in the reuse check.
    """
    schedule = [None, a, None, b_, a]
    ctx = open_backend(path)
    prompt = ctx.tokenize(PROMPT)
    ctx.decode(prompt[:-1], logits="last")
    got = []
    for mask in schedule:
        ctx.truncate(len(prompt) - 1)
        ctx.set_raw_mask(mask)
        got.append(ctx.decode(prompt[-1:], logits="all")[0])
    ctx.close()

    expected = {}
    for key, mask in (("none", None), ("a", a), ("b", b_)):
        fresh = open_backend(path)
        fresh.decode(prompt[:-1], logits="last")
        fresh.set_raw_mask(mask)
        expected[key] = fresh.decode(prompt[-1:], logits="all")[0]
        fresh.close()
    for mask, logits in zip(schedule, got):
        key = "none" if mask is None else ("a" if mask is a else "b")
        assert np.array_equal(logits, expected[key]), f"step with mask {key} reused a stale graph"
    assert not np.array_equal(expected["a"], expected["none"])
    assert not np.array_equal(expected["b"], expected["a"])


def graph_reuse_check(b: LlamaBackend, draft: DraftMask) -> None:
    """Alternating masked and full decodes (draft, verify, draft...) reuse both graphs.

    With one graph per context each change of mask rebuilds and reallocates it (about 1 ms
    a switch on SmolLM2 here).
    """
    prompt = b.tokenize(PROMPT)
    b.reset()
    b.decode(prompt[:-1], logits="last")
    start = b.n_past

    def reused(masks: list[DraftMask | None]) -> int:
        before = b.graphs_reused
        try:
            for mask in masks:
                b.set_mask(mask)
                b.decode(prompt[-1:], logits="last")
                b.truncate(start)
        finally:
            b.set_mask(None)
        return b.graphs_reused - before

    # llama.cpp itself rebuilds every graph of a model whose inputs cannot be reused (llama4's
    # and mistral3's attention temperature): there the masks must not change that either
    alternating = reused([draft if i % 2 == 0 else None for i in range(10)])
    plain = reused([None] * 10)  # its graph is built by now
    if plain == 10:
        assert alternating == 8  # all but the first decode of each mask
    else:
        assert plain == alternating == 0


def batch_switch_reuse_check(b: LlamaBackend, n_verify: int = 3) -> None:
    """Single-token decodes alternating with verify batches of n_verify tokens (speculative
    decoding's rhythm) reuse both graphs, as plain decoding reuses its one, and give the logits
    they give without the other kind in between.

    With one graph per mask each switch rebuilt and reallocated it: 1-1.5 ms per switch on
    SmolLM2 here, about 12% of a token (issue 34).
    """
    prompt = b.tokenize(PROMPT)
    b.reset()
    b.decode(prompt[:-n_verify], logits="last")
    start = b.n_past
    single, verify = prompt[-n_verify:-n_verify + 1], prompt[-n_verify:]

    def run(sizes: list[int]) -> tuple[int, list[np.ndarray]]:
        before, out = b.graphs_reused, []
        for n in sizes:
            out.append(b.decode(single if n == 1 else verify, logits="all")[-1])
            b.truncate(start)
        return b.graphs_reused - before, out

    run([n_verify, 1])  # builds both graphs (the prompt's batch had another size)
    plain, ones = run([1] * 6)
    batches, many = run([n_verify] * 6)
    alternating, mixed = run([1, n_verify] * 5)
    for i, got in enumerate(mixed):
        assert np.array_equal(got, (ones if i % 2 == 0 else many)[0]), f"decode {i} gave other logits"
    if plain == 6:
        assert batches == 6 and alternating == 10
    else:
        assert plain == batches == alternating == 0
