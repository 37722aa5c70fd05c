"""What a context of n tokens costs in memory, read from the GGUF header before llama.cpp is asked.

llama.cpp reports a context it cannot allocate only as a NULL pointer (llama-cpp-python:
"Failed to create llama_context"). Worse, on Linux a KV cache larger than the free memory
but within the overcommit limit is allocated, then touched when llama.cpp clears it, and
the kernel kills the process. The cache's size follows from a few header keys, so both
cases end in one sentence: what was asked, the model's training context, what the cache
needs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdfp_edge.errors import ContextSizeError
from sdfp_edge.metadata import read_kv

KV_TYPE_BYTES = 2  # f16: llama.cpp's default type_k and type_v
N_CTX_MAX = 2**31 - 1  # llama.cpp's positions are int32
_KEYS = ("block_count", "embedding_length", "attention.head_count", "attention.head_count_kv",
         "attention.key_length", "attention.value_length")


@dataclass(frozen=True)
class KVCacheSize:
    """One sequence's f16 KV cache: bytes per token of context, and the training context."""

    bytes_per_token: int | None  # None: the header lacks the attention shapes
    n_ctx_train: int

    def total(self, n_ctx: int) -> int | None:
        return None if self.bytes_per_token is None else self.bytes_per_token * n_ctx


def _per_layer(value: Any, n_layer: int) -> list[int] | None:
    """A head count given once for all layers, or per layer (an array)."""
    if isinstance(value, int):
        return [value] * n_layer
    if isinstance(value, list) and len(value) == n_layer and all(isinstance(v, int) for v in value):
        return value
    return None


def bytes_per_token(kv: dict[str, Any], arch: str) -> int | None:
    """Sum over layers of n_head_kv * (key_length + value_length) * 2 bytes, as llama.cpp sizes it.

    The head sizes default to n_embd / n_head (llama.cpp's default); a layer without KV heads
    (recurrent layers of hybrid models) holds nothing. None when the header says too little.
    """
    get = {k: kv.get(f"{arch}.{k}") for k in _KEYS}
    n_layer, n_embd = get["block_count"], get["embedding_length"]
    if not isinstance(n_layer, int) or not isinstance(n_embd, int):
        return None
    heads = _per_layer(get["attention.head_count"], n_layer)
    heads_kv = _per_layer(get["attention.head_count_kv"], n_layer) if get["attention.head_count_kv"] else heads
    if heads is None or heads_kv is None:
        return None
    total = 0
    for h, h_kv in zip(heads, heads_kv):
        head_dim = n_embd // h if h > 0 else 0
        k_len = get["attention.key_length"] or head_dim
        v_len = get["attention.value_length"] or head_dim
        total += max(h_kv, 0) * (k_len + v_len) * KV_TYPE_BYTES
    return total


def kv_cache_size(path: str | os.PathLike[str], arch: str, n_ctx_train: int,
                  kv: dict[str, Any] | None = None) -> KVCacheSize:
    """`kv`: the file's metadata, when the caller read it (metadata.read_header)."""
    kv = read_kv(path, {f"{arch}.{k}" for k in _KEYS}) if kv is None else kv
    return KVCacheSize(bytes_per_token(kv, arch), n_ctx_train)


def available_memory() -> int | None:
    """Bytes an allocation can take without the OOM killer: MemAvailable + SwapFree on Linux,
    the physical memory elsewhere, None when the system does not say."""
    try:
        with open("/proc/meminfo") as f:
            info = {k: int(v.split()[0]) * 1024 for k, _, v in (line.partition(":") for line in f)}
        return info["MemAvailable"] + info.get("SwapFree", 0)
    except (OSError, KeyError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):
        return None


def human_bytes(n: float) -> str:
    units = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")
    i = 0
    while n >= 1024 and i < len(units) - 1:
        n, i = n / 1024, i + 1
    return f"{n:.1f} {units[i]}"


def context_error(path: str | os.PathLike[str], size: KVCacheSize, n_ctx: int, why: str) -> ContextSizeError:
    """The sentence for a context that cannot be made: asked, why not, the training context, the fix."""
    need = size.total(n_ctx)
    cache = (f"its KV cache would need about {human_bytes(need)} (f16)" if need is not None
             else "the size of its KV cache is unknown for this architecture")
    return ContextSizeError(
        f"cannot create a context of {n_ctx:,} tokens: {cache}, {why}; {Path(path).name} was trained "
        f"with a context of {size.n_ctx_train:,} tokens: use a smaller --ctx-size "
        f"(-c 0 for the training context)"
    )


def check_context(path: str | os.PathLike[str], size: KVCacheSize, n_ctx: int, *, kv_in_ram: bool) -> None:
    """Refuse, before llama.cpp allocates, a context it cannot address or that memory cannot hold.

    `kv_in_ram`: the cache lives in system memory (CPU only); a GPU's memory is llama.cpp's to judge.
    """
    if n_ctx > N_CTX_MAX:
        raise context_error(path, size, n_ctx, f"and llama.cpp addresses at most {N_CTX_MAX:,} positions")
    need = size.total(n_ctx)
    if not kv_in_ram or need is None:
        return
    available = available_memory()
    if available is not None and need > available:
        raise context_error(path, size, n_ctx, f"but {human_bytes(available)} of memory is available")
