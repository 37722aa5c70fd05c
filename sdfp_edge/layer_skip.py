"""ctypes binding of `llama_set_layer_skip`, the one C function this project adds to llama.cpp.

Upstream llama.cpp cannot leave decoder layers out of its compute graph; the patch in
tools/llama-layer-skip.patch adds

    // include/llama.h
    int32_t llama_set_layer_skip(struct llama_context * ctx, const uint8_t * skip, int32_t n);

`skip[i] != 0` leaves layer i out of every later decode on that context (the same weights
and KV cache as the full model); `skip == NULL` clears the mask. The mask takes part in
llama.cpp's graph-reuse check. A stock llama-cpp-python lacks the symbol: `bind` says so
and names the fix instead of failing later with an AttributeError.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from typing import Any

from sdfp_edge.errors import RuntimeBuildError, SkipListError, UnsupportedArchitectureError

# return codes, as #defined in the patched llama.h
OK = 0
ERR_N_LAYER = -1
ERR_LAST = -2
ERR_ARCH = -3

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


def bind(lib: Any = None) -> Any:
    """The typed C function from llama-cpp-python's loaded libllama (or from `lib`)."""
    lib = _default_lib() if lib is None else lib
    try:
        fn = lib.llama_set_layer_skip
    except AttributeError:
        raise RuntimeBuildError(
            "this llama-cpp-python is a stock build without layer skipping "
            f"(libllama has no llama_set_layer_skip); {FIX}"
        ) from None
    # int32_t llama_set_layer_skip(struct llama_context * ctx, const uint8_t * skip, int32_t n);
    fn.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint8), ctypes.c_int32]
    fn.restype = ctypes.c_int32
    return fn


def mask_from_layers(layers: Sequence[int], n_layer: int) -> list[int]:
    """[n_layer] 0/1 mask from a list of layer indices (range-checked)."""
    mask = [0] * n_layer
    for i in layers:
        if not 0 <= i < n_layer:
            raise SkipListError(f"layer {i} is out of range: the model has layers 0..{n_layer - 1}")
        mask[i] = 1
    return mask


def set_layer_skip(fn: Any, ctx: Any, mask: Sequence[int] | None, *, n: int | None = None) -> None:
    """Apply `mask` (None clears it) to a llama_context; raise a clear error on a bad mask.

    `n` defaults to len(mask); it is separate so that a wrong length can be passed on purpose.
    """
    if mask is None:
        rc = fn(ctx, None, 0)
    else:
        n = len(mask) if n is None else n
        arr = (ctypes.c_uint8 * max(len(mask), 1))(*[1 if m else 0 for m in mask])
        rc = fn(ctx, arr, n)
    if rc == OK:
        return
    if rc == ERR_N_LAYER:
        raise SkipListError(f"layer mask has {n} entries, which is not the model's layer count")
    if rc == ERR_LAST:
        raise SkipListError("the last layer produces the output and cannot be skipped")
    if rc == ERR_ARCH:
        raise UnsupportedArchitectureError(
            "this model's architecture does not support layer skipping "
            "(supported: llama, qwen2, qwen3, gemma3); use --mode lookup or --mode off"
        )
    raise RuntimeBuildError(f"llama_set_layer_skip returned unknown code {rc}")
