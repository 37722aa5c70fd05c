"""ctypes binding of the C functions this project adds to llama.cpp (tools/llama-layer-skip.patch).

Upstream llama.cpp cannot leave parts of the model out of its compute graph; the patch adds

    // include/llama.h
    int32_t llama_set_layer_skip (struct llama_context * ctx, const uint8_t * skip, int32_t n);
    int32_t llama_set_block_skip (struct llama_context * ctx, const uint8_t * blocks, int32_t n);
    int32_t llama_set_draft_vocab(struct llama_context * ctx, const char * path_model,
                                  const llama_token * ids, int32_t n);
    int32_t llama_set_draft_head (struct llama_context * ctx, bool enable);
    // ggml/include/ggml.h
    void    ggml_set_huge_page_advice(bool enable);

`skip[i] != 0` leaves layer i out of every later decode on that context (the same weights
and KV cache as the full model); `blocks[i]` leaves out its attention (bit ATTN) and/or its
feed-forward block (bit FFN) on their own; NULL clears the mask. A draft vocabulary is a
second, smaller output matrix (the rows of the listed tokens, read from the GGUF) that the
context uses while the draft head is on: logits of other tokens are -inf. Masks and head
take part in llama.cpp's graph-reuse check. A stock llama-cpp-python, or one built with an
older patch, lacks the symbols: `bind` says so and names the fix instead of failing later
with an AttributeError. `ggml_set_huge_page_advice` has ggml put its later CPU buffers of
2 MiB or more on transparent huge pages (madvise), which the system's THP setting still
governs; it is off unless a program asks (sdfp-edge: SDFP_EDGE_HUGE_PAGES=1), so plain
llama-cpp-python on this wheel allocates as upstream does.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sdfp_edge.errors import ModelFileError, RuntimeBuildError, SkipListError, UnsupportedArchitectureError

# return codes and flags, as #defined in the patched llama.h
OK = 0
ERR_N_LAYER = -1
ERR_LAST = -2
ERR_ARCH = -3
ERR_BITS = -4
ERR_VOCAB_IDS = -5
ERR_VOCAB_FILE = -6
ATTN = 1
FFN = 2
DRAFT_VOCAB_MULTIPLE = 32  # llama_set_draft_vocab takes a multiple of 32 ids (the CPU's repacked kernels)

FIX = (
    "install the patched runtime: `python tools/build_runtime.py --install` "
    "from the sdfp-edge source tree (or `make setup`)"
)


def _default_lib() -> Any:
    try:
        import llama_cpp.llama_cpp as bindings
    except ImportError as e:
        raise RuntimeBuildError(f"llama-cpp-python is not installed ({e}); {FIX}") from e
    return bindings._lib


@dataclass(frozen=True)
class Functions:
    """The patch's C functions, typed."""

    layer_skip: Any
    block_skip: Any
    draft_vocab: Any
    draft_head: Any
    huge_page_advice: Any


def bind(lib: Any = None) -> Functions:
    """The typed C functions from llama-cpp-python's loaded libllama (or from `lib`)."""
    lib = _default_lib() if lib is None else lib
    try:
        layer, block = lib.llama_set_layer_skip, lib.llama_set_block_skip
        vocab, head = lib.llama_set_draft_vocab, lib.llama_set_draft_head
        huge = lib.ggml_set_huge_page_advice  # in libggml-base, found through libllama's dependencies
    except AttributeError as e:
        what = "a stock build without layer skipping" if not hasattr(lib, "llama_set_layer_skip") else \
            "built with an older layer-skip patch"
        raise RuntimeBuildError(f"this llama-cpp-python is {what} (libllama has no {e.name or e}); {FIX}") from None
    # int32_t llama_set_layer_skip(struct llama_context * ctx, const uint8_t * skip, int32_t n);
    # int32_t llama_set_block_skip(struct llama_context * ctx, const uint8_t * blocks, int32_t n);
    for fn in (layer, block):
        fn.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint8), ctypes.c_int32]
        fn.restype = ctypes.c_int32
    # int32_t llama_set_draft_vocab(struct llama_context * ctx, const char * path_model, const llama_token * ids, int32_t n);
    vocab.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_int32), ctypes.c_int32]
    vocab.restype = ctypes.c_int32
    # int32_t llama_set_draft_head(struct llama_context * ctx, bool enable);
    head.argtypes = [ctypes.c_void_p, ctypes.c_bool]
    head.restype = ctypes.c_int32
    # void ggml_set_huge_page_advice(bool enable);
    huge.argtypes = [ctypes.c_bool]
    huge.restype = None
    return Functions(layer, block, vocab, head, huge)


@dataclass(frozen=True)
class DraftMask:
    """What a draft leaves out of the model: attention and FFN blocks per layer, and the full
    output head (`small_head`: logits over the draft vocabulary only). Empty: the target."""

    attn: tuple[int, ...] = ()  # layers whose attention block is left out, sorted
    ffn: tuple[int, ...] = ()  # layers whose feed-forward block is left out, sorted
    small_head: bool = False

    @staticmethod
    def layers(layers: Sequence[int], *, small_head: bool = False) -> DraftMask:
        """Whole layers left out (both blocks)."""
        t = tuple(sorted(set(layers)))
        return DraftMask(t, t, small_head)

    @property
    def whole_layers(self) -> tuple[int, ...]:
        return tuple(sorted(set(self.attn) & set(self.ffn)))

    def __bool__(self) -> bool:
        return bool(self.attn or self.ffn or self.small_head)

    def describe(self) -> str:
        """e.g. "layers 6,10 + attn 3 + ffn 20 + small head"."""
        whole = set(self.whole_layers)
        parts = [f"{name} {','.join(map(str, xs))}" for name, xs in (
            ("layers", sorted(whole)), ("attn", [i for i in self.attn if i not in whole]),
            ("ffn", [i for i in self.ffn if i not in whole])) if xs]
        if self.small_head:
            parts.append("small head")
        return " + ".join(parts) or "full model"


def block_mask(attn: Sequence[int], ffn: Sequence[int], n_layer: int) -> list[int]:
    """[n_layer] ATTN | FFN bits from the layers whose attention and whose FFN are left out."""
    mask = [0] * n_layer
    for layers, bit in ((attn, ATTN), (ffn, FFN)):
        for i in layers:
            if not 0 <= i < n_layer:
                raise SkipListError(f"layer {i} is out of range: the model has layers 0..{n_layer - 1}")
            mask[i] |= bit
    return mask


def set_layer_skip(fns: Functions, ctx: Any, mask: Sequence[int] | None, *, n: int | None = None) -> None:
    """Apply a whole-layer `mask` (None clears it) to a llama_context; raise a clear error on a bad mask.

    `n` defaults to len(mask); it is separate so that a wrong length can be passed on purpose.
    """
    _set_mask(fns.layer_skip, ctx, None if mask is None else [1 if m else 0 for m in mask], n)


def set_block_skip(fns: Functions, ctx: Any, mask: Sequence[int] | None, *, n: int | None = None) -> None:
    """Apply a mask of ATTN | FFN bits per layer (None clears it)."""
    _set_mask(fns.block_skip, ctx, mask, n)


def _set_mask(fn: Any, ctx: Any, mask: Sequence[int] | None, n: int | None) -> None:
    if mask is None:
        rc = fn(ctx, None, 0)
    else:
        n = len(mask) if n is None else n
        arr = (ctypes.c_uint8 * max(len(mask), 1))(*[int(m) & 0xFF for m in mask])
        rc = fn(ctx, arr, n)
    if rc == OK:
        return
    if rc == ERR_N_LAYER:
        raise SkipListError(f"layer mask has {n} entries, which is not the model's layer count")
    if rc == ERR_LAST:
        raise SkipListError("the last layer produces the output and cannot be skipped")
    if rc == ERR_BITS:
        raise SkipListError("a block mask entry has bits other than attention (1) and feed-forward (2)")
    if rc == ERR_ARCH:
        raise UnsupportedArchitectureError(
            "this model's architecture does not support layer skipping "
            "(supported: llama, qwen2, qwen3, gemma3); use --mode lookup or --mode off"
        )
    raise RuntimeBuildError(f"llama_set_layer_skip returned unknown code {rc}")


def set_draft_vocab(fns: Functions, ctx: Any, path: str | None, ids: Sequence[int] | None) -> None:
    """Give the context a draft head over `ids` (None frees it); see draft_vocab.py for the choice."""
    if ids is None:
        rc = fns.draft_vocab(ctx, None, None, 0)
    else:
        arr = (ctypes.c_int32 * max(len(ids), 1))(*ids)
        rc = fns.draft_vocab(ctx, None if path is None else os.fsencode(path), arr, len(ids))
    if rc == OK:
        return
    if rc == ERR_VOCAB_IDS:
        raise SkipListError(f"a draft vocabulary needs a positive multiple of {DRAFT_VOCAB_MULTIPLE} ids "
                            "inside the model's vocabulary")
    if rc == ERR_VOCAB_FILE:
        raise ModelFileError(f"{path}: cannot read the output matrix's rows for a draft head "
                             "(not the file this model was loaded from?)")
    if rc == ERR_ARCH:
        raise UnsupportedArchitectureError("this model's output head (its architecture, or a bias or "
                                           "scale on it) does not support a draft head")
    raise RuntimeBuildError(f"llama_set_draft_vocab returned unknown code {rc}")


def set_draft_head(fns: Functions, ctx: Any, enable: bool) -> None:
    rc = fns.draft_head(ctx, enable)
    if rc == ERR_VOCAB_IDS:
        raise SkipListError("no draft vocabulary is set (set_draft_vocab first)")
    if rc != OK:
        raise RuntimeBuildError(f"llama_set_draft_head returned unknown code {rc}")
