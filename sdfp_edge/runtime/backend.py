"""One llama.cpp model and context, as the speculative loop needs them.

This is the only module that drives llama.cpp's low-level API (through llama-cpp-python's
ctypes bindings and owning wrappers). It exposes what draft and verify need and nothing
more: decode tokens at explicit positions with logits for chosen rows, cut the KV cache
back to a position, and switch the draft's mask. Draft and target are the same object:
`set_mask(draft)` before drafting, `set_mask(None)` before verifying.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from sdfp_edge.runtime import context_memory, layer_skip
from sdfp_edge.runtime.prefill_splits import SplitRule, batches
from sdfp_edge.errors import (
    BackendError,
    ContextOverflowError,
    InvalidRequestError,
    ModelFileError,
    RuntimeBuildError,
    UnsupportedArchitectureError,
)
from sdfp_edge.metadata import check_gguf_file, layer_parameters, model_info, read_header

# GGUF architectures whose graph builders honour layer/block masks and the small head
# (llm_arch_supports_layer_skip in tools/llama-layer-skip.patch; docs/architectures.md)
SKIP_ARCHITECTURES = ("llama", "qwen2", "qwen3", "gemma3", "qwen3moe", "gemma2", "phi3", "mistral3", "smollm3",
                      "granite", "olmo2", "gpt-oss", "llama4", "gemma4")
# libgomp's spin at llama.cpp's barriers, bounded where a layer's work per thread is large: the
# bound, chosen by tools/thread_matrix.py (docs/threads-and-memory.md), sped Qwen2.5-Coder 0.5B and
# 1.5B (15M and 47M weights a layer) under contention, up to 2.1x; it slowed SmolLM2-135M (3.5M)
# to 0.5-0.7x with one core busy and to 0.4-0.5x beside a second model (Zen 4 and Zen 5 EPYCs) and
# changed nothing for Gemma 3 270M (5.6M). All at 2 threads: how long the threads compute between
# two barriers is what differs, so the threshold is per thread (other thread counts not measured).
GOMP_SPINCOUNT = "3000"
SPIN_BOUND_MIN_WEIGHTS = 4_000_000  # a layer's weights per thread: 2.8M (Gemma) gained nothing, 7.5M did
MAX_THREADS = 512  # GGML_MAX_N_THREADS
# Prefills end their batches at multiples of n_batch positions, as llama.cpp's own do: a prompt
# prefilled into an empty cache gets the KV that llama.cpp itself computes (llama-cpp-python's
# Llama, llama-server), so plain decoding gives llama.cpp's output, at its speed. Where a batch may
# be split or a prefix reused without changing that KV: prefill_splits.py (`split_rule`).
INT32_MAX = 2**31 - 1

# llama_decode's return codes (llama.h)
DECODE_ERRORS = {
    1: "no free slot in the KV cache",
    2: "aborted",
    -1: "invalid batch",
}


def spin_bound(layer_weights: float, n_threads: int) -> str | None:
    """GOMP_SPINCOUNT for a model whose layers hold `layer_weights` weights, decoded on
    n_threads, or None: libgomp's own default, as plain llama.cpp runs.

    ggml's CPU threads meet at an OpenMP barrier after every op. libgomp's default spins
    ~300k iterations there, which starves a decode whenever another process wants the cores
    (Qwen 1.5B, 2 threads: 64 ms/token idle, 260-430 with one core busy or a second model
    decoding); PASSIVE sleeps at once and costs 1.4-3x idle. A bounded spin is within 1-4% of
    the default idle and 1.0-2.1x faster under contention for Qwen 1.5B on four machines, but
    where a layer's ops are short (SmolLM2) it was up to 2.8x slower under contention and 2%
    slower idle (GOMP_SPINCOUNT above)."""
    return GOMP_SPINCOUNT if layer_weights >= SPIN_BOUND_MIN_WEIGHTS * max(1, n_threads) else None


def _import_llama_cpp(spin: str | None = None) -> tuple[Any, Any]:
    """llama-cpp-python, loaded with libgomp's spin bounded at `spin` (spin_bound) unless the
    user set OMP_WAIT_POLICY or GOMP_SPINCOUNT (theirs wins) or llama.cpp is loaded already
    (libgomp reads its settings once: setting them later would only misreport them)."""
    if (spin is not None and "llama_cpp" not in sys.modules
            and "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ):
        os.environ["GOMP_SPINCOUNT"] = spin
    try:
        import llama_cpp
        from llama_cpp import _internals
    except ImportError as e:
        raise RuntimeBuildError(f"llama-cpp-python is not installed ({e}); {layer_skip.FIX}") from e
    return llama_cpp, _internals


def huge_pages_wanted() -> bool:
    """Whether ggml should put its large CPU buffers on transparent huge pages: only with
    SDFP_EDGE_HUGE_PAGES=1. Most of a Q4_K model's weights are repacked for the CPU into such
    buffers and a decode streams them all: alone on a 2-vCPU Xeon with THP "madvise",
    Qwen2.5-Coder-1.5B decoded 4% faster with them. But beside other model processes the
    advised ones slowed down when another process started (the bench: `off` 0.89x of plain,
    per prompt 9.8-17.2 tok/s against plain's steady 14-16.6), so it is not the default
    (docs/threads-and-memory.md). The system's THP setting still decides."""
    return os.environ.get("SDFP_EDGE_HUGE_PAGES") == "1"


def check_skip_supported(arch: str) -> None:
    """Refuse, before llama.cpp is asked, an architecture whose graph ignores layer masks."""
    if arch not in SKIP_ARCHITECTURES:
        raise UnsupportedArchitectureError(
            f"architecture '{arch}' does not support layer skipping "
            f"(supported: {', '.join(SKIP_ARCHITECTURES)}); use --mode lookup or --mode off"
        )


def encode_text(text: str) -> bytes:
    """UTF-8 bytes for llama.cpp; surrogate escapes (U+DC80..U+DCFF) become the bytes they stand for.

    Python decodes command-line arguments and stdin that are not UTF-8 with surrogateescape;
    those bytes go to the tokenizer as given, as llama.cpp's own CLI passes them (its
    tokenizer reads each invalid byte as U+FFFD). Any other lone surrogate is not text.
    """
    try:
        data = text.encode("utf-8", errors="surrogateescape")
    except UnicodeEncodeError as e:
        raise InvalidRequestError(
            f"the text has a lone surrogate U+{ord(text[e.start]):04X} at character {e.start}, "
            "which is not Unicode; send UTF-8 text"
        ) from None
    if len(data) > INT32_MAX:
        raise InvalidRequestError(f"the text has {len(data):,} bytes; llama.cpp tokenizes at most {INT32_MAX:,}")
    return data


def common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    if n == 0:
        return 0
    diff = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(diff[0]) if len(diff) else n


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def default_threads() -> int:
    """llama.cpp's own default: the physical cores, approximated by the usable CPUs."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:
        n = os.cpu_count() or 1
    return min(max(1, n), MAX_THREADS)


class LlamaBackend:
    """A GGUF opened once: tokenizer, one context, one KV cache (sequence 0), a layer mask."""

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        *,
        n_ctx: int = 4096,
        n_threads: int | None = None,
        n_gpu_layers: int | None = None,
        n_batch: int = 512,
        verbose: bool = False,
        header: tuple[dict[str, Any], dict[str, tuple[int, ...]]] | None = None,
        n_seq_max: int = 1,
    ) -> None:
        """`header` is metadata.read_header's (metadata, tensor shapes) when the caller read it.
        `n_seq_max`: sequences sharing the context (parallel.py); each gets its own KV stream
        of n_ctx / n_seq_max cells (why not a unified cache: parallel.py)."""
        if n_threads is not None and not 1 <= n_threads <= MAX_THREADS:
            raise InvalidRequestError(f"threads must be in 1..{MAX_THREADS} (llama.cpp's limit), got {n_threads}")
        path = check_gguf_file(model_path)
        self.path = path
        kv, shapes = header if header is not None else read_header(path)
        self.arch, self.n_layer = model_info(kv, path)
        n_threads = n_threads or default_threads()

        llama_cpp, internals = _import_llama_cpp(spin_bound(layer_parameters(shapes), n_threads))
        self._llama_cpp = llama_cpp
        llama_cpp._logger.set_verbose(verbose)
        self._skip_fns = layer_skip.bind()
        self._skip_fns.huge_page_advice(huge_pages_wanted())  # before the model's buffers exist

        if n_gpu_layers is None:  # all layers when a GPU backend is built, as llama.cpp users expect
            n_gpu_layers = -1 if llama_cpp.llama_supports_gpu_offload() else 0
        mparams = llama_cpp.llama_model_default_params()
        mparams.n_gpu_layers = INT32_MAX if n_gpu_layers < 0 else min(n_gpu_layers, INT32_MAX)
        try:
            self._model = internals.LlamaModel(path_model=str(path), params=mparams, verbose=verbose)
        except ValueError as e:
            raise ModelFileError(
                f"{path}: llama.cpp could not load this model ({e}); architecture '{self.arch}' may be "
                "unsupported by this llama.cpp, the file damaged, or the weights too large for memory"
            ) from e

        n_ctx_train = self._model.n_ctx_train()
        if n_ctx <= 0:
            n_ctx = n_ctx_train
        kv_in_ram = mparams.n_gpu_layers == 0 or not llama_cpp.llama_supports_gpu_offload()
        try:
            self._create_context(internals, n_ctx, n_ctx_train, n_batch, n_threads, kv_in_ram=kv_in_ram,
                                 n_seq_max=n_seq_max, verbose=verbose, kv=kv)
        except BaseException:
            self.close()
            raise
        # llama.cpp may round the KV cache up (to a multiple of 256); the limit is what was asked
        self.n_ctx = min(n_ctx, self._ctx.n_ctx())
        self.n_batch = n_batch
        self._gpu = mparams.n_gpu_layers > 0 and llama_cpp.llama_supports_gpu_offload()
        # how prefills may be split and reused exactly (parallel.py): measured on CPU kernels only
        self.split_rule = SplitRule.whole(n_batch) if self._gpu else SplitRule.cpu()
        self.n_threads = n_threads
        self.n_gpu_layers = n_gpu_layers
        self.n_vocab = self._model.n_vocab()
        self.n_seq_max = n_seq_max
        m = self._model.model
        # recurrent layers (mamba, rwkv) and hybrids of them with attention (qwen35, jamba,
        # granitehybrid...) keep a state per sequence that llama_memory_seq_rm cannot cut back:
        # no draft can be rejected, and a prompt that leaves the cached one starts over
        self.can_rollback = not (llama_cpp.llama_model_is_recurrent(m) or llama_cpp.llama_model_is_hybrid(m))
        self.mask = layer_skip.DraftMask()  # what later decodes leave out
        self.draft_vocab: tuple[int, ...] = ()  # the small head's tokens (draft_vocab.py); () none
        self.kv_tokens: list[int] = []  # the tokens at positions 0.. of sequence 0 in the KV cache
        self._logit_views: dict[tuple[int | None, int], npt.NDArray[np.float32]] = {}  # _logits

    def _create_context(self, internals: Any, n_ctx: int, n_ctx_train: int, n_batch: int, n_threads: int, *,
                        kv_in_ram: bool, n_seq_max: int, verbose: bool, kv: dict[str, Any]) -> None:
        size = context_memory.kv_cache_size(self.path, self.arch, n_ctx_train, kv)
        context_memory.check_context(self.path, size, n_ctx, kv_in_ram=kv_in_ram)
        cparams = self._llama_cpp.llama_context_default_params()
        cparams.n_ctx = n_ctx
        cparams.n_batch = n_batch
        cparams.n_ubatch = n_batch
        cparams.n_seq_max = n_seq_max
        cparams.kv_unified = False  # one KV stream per sequence (see parallel.py)
        cparams.n_threads = n_threads
        cparams.n_threads_batch = n_threads
        cparams.no_perf = True
        try:
            self._ctx = internals.LlamaContext(model=self._model, params=cparams, verbose=verbose)
        except ValueError:  # llama_init_from_model returned NULL: almost always the KV cache's allocation
            raise context_memory.context_error(self.path, size, n_ctx, "and llama.cpp could not allocate it") from None
        try:
            self._batch = internals.LlamaBatch(n_tokens=n_batch, embd=0, n_seq_max=1, verbose=verbose)
        except ValueError as e:
            raise BackendError(f"llama.cpp could not allocate a batch of {n_batch} tokens ({e})") from None

    @property
    def n_past(self) -> int:
        return len(self.kv_tokens)

    @property
    def graphs_reused(self) -> int:
        """How many decodes llama.cpp ran on an already built graph (the patch keeps one per mask)."""
        return int(self._llama_cpp.llama_perf_context(self._ctx.ctx).n_reused)

    # --- tokenizer ---------------------------------------------------------------------
    def tokenize(self, text: str, *, add_special: bool = True, parse_special: bool = False) -> list[int]:
        """See `encode_text` for text that is not valid UTF-8; NULs and any length are fine."""
        data = encode_text(text)
        try:
            return self._model.tokenize(data, add_special, parse_special)
        except (RuntimeError, ctypes.ArgumentError) as e:  # llama_tokenize < 0 twice
            raise BackendError(f"llama.cpp could not tokenize {len(data):,} bytes of text ({str(e)[:200]})") from None

    def token_bytes(self, token: int, *, special: bool = False) -> bytes:
        """The token's text as raw bytes (may be part of a UTF-8 character); a special
        token's text is empty unless `special`.

        llama-cpp-python's detokenize reads at most 32 bytes per token and silently returns
        less for a longer piece (SmolLM2 has a newline + 80 spaces token); this asks again
        with the size llama.cpp says it needs.
        """
        if not 0 <= token < self.n_vocab:  # llama.cpp would throw std::out_of_range and abort
            raise InvalidRequestError(f"token id {token} is outside the vocabulary (0..{self.n_vocab - 1})")
        size = 64
        for _ in range(2):
            buf = ctypes.create_string_buffer(size)
            n = self._llama_cpp.llama_token_to_piece(self._model.vocab, token, buf, size, 0, special)
            if n >= 0:
                return buf.raw[:n]
            size = -n
        raise BackendError(f"llama.cpp could not detokenize token {token} (llama_token_to_piece returned {n})")

    def detokenize(self, tokens: Sequence[int]) -> str:
        out = b"".join(self.token_bytes(t) for t in tokens)
        if tokens and tokens[0] == self.bos_token and out.startswith(b" "):  # SentencePiece's space prefix
            out = out[1:]
        return out.decode("utf-8", errors="replace")

    def is_eog(self, token: int) -> bool:
        return bool(self._llama_cpp.llama_vocab_is_eog(self._model.vocab, token))

    def token_text(self, token: int) -> str:
        return self._model.token_get_text(token)

    @property
    def bos_token(self) -> int:
        return self._model.token_bos()

    @property
    def eos_token(self) -> int:
        return self._model.token_eos()

    @property
    def vocab(self) -> Any:
        """llama.cpp's vocabulary handle (for grammar.py's sampler)."""
        return self._model.vocab

    def metadata(self) -> dict[str, str]:
        return self._model.metadata()

    def identity(self) -> dict[str, Any]:
        """What the speed of a decode depends on: the file, the build, the settings, the CPU."""
        st = Path(self.path).stat()
        return {"model": [str(Path(self.path).resolve()), st.st_size, st.st_mtime_ns],
                "runtime": runtime_identity(), "n_threads": self.n_threads,
                "n_gpu_layers": self.n_gpu_layers, "n_batch": self.n_batch, "cpu": cpu_name()}

    # --- layer mask and draft head ----------------------------------------------------
    def set_mask(self, mask: layer_skip.DraftMask | None) -> None:
        """Leave `mask`'s blocks (and the full head) out of later decodes; None: the full model."""
        mask = mask or layer_skip.DraftMask()
        if (mask.attn, mask.ffn) != (self.mask.attn, self.mask.ffn):
            bits = layer_skip.block_mask(mask.attn, mask.ffn, self.n_layer) if mask.attn or mask.ffn else None
            layer_skip.set_block_skip(self._skip_fns, self._ctx.ctx, bits)
        if mask.small_head != self.mask.small_head:
            if mask.small_head and not self.draft_vocab:
                raise ValueError("a small-head draft needs load_draft_vocab() first")
            layer_skip.set_draft_head(self._skip_fns, self._ctx.ctx, mask.small_head)
        self.mask = mask

    def set_skip(self, layers: Sequence[int] | None) -> None:
        """Leave whole `layers` out of later decodes (None or empty: the full model)."""
        self.set_mask(layer_skip.DraftMask.layers(layers) if layers else None)

    def set_raw_mask(self, mask: Sequence[int] | None, n: int | None = None, *, blocks: bool = False) -> None:
        """Pass a mask to C unchanged (tests of the C contract): 0/1 per layer, or bits with `blocks`."""
        setter = layer_skip.set_block_skip if blocks else layer_skip.set_layer_skip
        setter(self._skip_fns, self._ctx.ctx, mask, n=n)
        if blocks:
            bits = list(mask or [])
            attn = tuple(i for i, m in enumerate(bits) if m & layer_skip.ATTN)
            ffn = tuple(i for i, m in enumerate(bits) if m & layer_skip.FFN)
        else:
            attn = ffn = tuple(i for i, m in enumerate(mask or []) if m)
        self.mask = layer_skip.DraftMask(attn, ffn, self.mask.small_head)

    def load_draft_vocab(self, ids: Sequence[int] | None) -> None:
        """Build the small output head over `ids` (a multiple of 32, see draft_vocab.py); None frees it."""
        if ids is None and self.mask.small_head:
            self.set_mask(layer_skip.DraftMask(self.mask.attn, self.mask.ffn))
        layer_skip.set_draft_vocab(self._skip_fns, self._ctx.ctx, str(self.path), ids)
        self.draft_vocab = tuple(ids) if ids is not None else ()

    def check_skip_supported(self) -> None:
        check_skip_supported(self.arch)

    # --- decoding ----------------------------------------------------------------------
    def decode(self, tokens: Sequence[int], *, logits: str = "all") -> npt.NDArray[np.float32]:
        """Append `tokens` at positions n_past.. and return their logits.

        Args:
            tokens: token ids, placed at positions n_past, n_past+1, ...
            logits: "all" (one row per token) or "last" (only the last token's row).
        Returns:
            float32 array [n_rows, n_vocab], a copy.
        """
        n = len(tokens)
        if n == 0:
            raise ValueError("decode needs at least one token")
        if self.n_past + n > self.n_ctx:
            raise ContextOverflowError(
                f"{self.n_past + n} tokens do not fit in the context of {self.n_ctx}; "
                "use a larger --ctx-size or a shorter prompt"
            )
        if logits == "all" and n > self.n_batch:
            raise ValueError(f"cannot return all logits for more than n_batch={self.n_batch} tokens")
        b = self._batch.batch
        out = None
        bounds = [(0, n)] if logits == "all" else self.prefill_batches(range(self.n_past, self.n_past + n))
        for start, stop in bounds:
            chunk = tokens[start:stop]
            last_chunk = stop == n
            b.n_tokens = len(chunk)
            for i, tok in enumerate(chunk):
                b.token[i] = tok
                b.pos[i] = self.n_past + i
                b.seq_id[i][0] = 0
                b.n_seq_id[i] = 1
                b.logits[i] = last_chunk and (logits == "all" or i == len(chunk) - 1)
            try:
                rc = self._llama_cpp.llama_decode(self._ctx.ctx, b)
                if rc != 0:
                    raise BackendError(
                        f"llama.cpp could not decode {len(chunk)} tokens at position {self.n_past}: "
                        f"{DECODE_ERRORS.get(rc, 'fatal error (out of memory?)')} (llama_decode returned {rc})"
                    )
                self.kv_tokens.extend(chunk)
            except BaseException:
                # e.g. KeyboardInterrupt between the decode and the bookkeeping: the cache
                # may no longer match kv_tokens, so drop it rather than trust it
                self.reset()
                raise
            if last_chunk:
                n_rows = len(chunk) if logits == "all" else 1
                out = self._logits(n_rows)
        assert out is not None
        return out

    def _logits(self, n_rows: int) -> npt.NDArray[np.float32]:
        """A copy of the last decode's n_rows rows of logits. The numpy view of llama.cpp's
        output buffer is made once per buffer address and row count: numpy.ctypeslib.as_array
        builds a ctypes array type per call: about 20 us per decoded token in a generation
        (SmolLM2, Xeon VM, 2026-12-07; issue 34). A view is keyed by the address the context
        reports now, so a reallocated buffer gets a new one."""
        ptr = self._llama_cpp.llama_get_logits(self._ctx.ctx)
        key = (ctypes.cast(ptr, ctypes.c_void_p).value, n_rows)
        view = self._logit_views.get(key)
        if view is None:
            if len(self._logit_views) >= 64:
                self._logit_views.clear()
            view = self._logit_views[key] = np.ctypeslib.as_array(ptr, shape=(n_rows, self.n_vocab))
        return view.copy()

    def truncate(self, n_past: int) -> None:
        """Forget KV positions >= n_past (rejected drafts, or a new conversation)."""
        if n_past < self.n_past:
            ok = self._ctx.kv_cache_seq_rm(0, n_past, -1)
            if not ok:
                raise BackendError(f"llama.cpp could not remove KV cache positions >= {n_past}")
            del self.kv_tokens[n_past:]

    # --- several sequences (parallel.py keeps each sequence's tokens; kv_tokens is sequence 0's
    # single-sequence bookkeeping and is not touched here) -----------------------------------
    def decode_seqs(self, tokens: Sequence[int], positions: Sequence[int], seq_ids: Sequence[int], *,
                    logits: str = "all", cuts: AbstractSet[int] = frozenset()) -> npt.NDArray[np.float32]:
        """Decode tokens of several sequences, each at its own position, in one llama_batch.

        Args:
            tokens, positions, seq_ids: one entry per token.
            logits: "all": one row per token (at most n_batch tokens), one batch;
                "last": only the last token's row, decoding in prefill chunks (a prompt's prefill).
            cuts: positions where a prefill must also start a new batch (parallel.prefill_cuts).
        Returns:
            float32 array [n_rows, n_vocab], a copy.
        """
        n = len(tokens)
        if n == 0 or not len(positions) == len(seq_ids) == n:
            raise ValueError("decode_seqs needs one position and one sequence id per token")
        if logits not in ("all", "last"):
            raise ValueError(f"logits must be 'all' or 'last', got {logits!r}")
        if logits == "all" and n > self.n_batch:
            raise ValueError(f"cannot return logits for more than n_batch={self.n_batch} tokens")
        b = self._batch.batch
        for start, stop in [(0, n)] if logits == "all" else self.prefill_batches(positions, cuts):
            b.n_tokens = stop - start
            for i in range(start, stop):
                j = i - start
                b.token[j] = tokens[i]
                b.pos[j] = positions[i]
                b.seq_id[j][0] = seq_ids[i]
                b.n_seq_id[j] = 1
                b.logits[j] = logits == "all" or i == n - 1
            rc = self._llama_cpp.llama_decode(self._ctx.ctx, b)
            if rc != 0:
                raise RuntimeError(f"llama_decode failed with code {rc} (KV cache full?)")
        rows = n if logits == "all" else 1
        return self._logits(rows)  # rows in batch order

    def prefill_batches(self, positions: Sequence[int], cuts: AbstractSet[int] = frozenset()) -> list[tuple[int, int]]:
        """[start, stop) index ranges: llama.cpp's own batches (multiples of n_batch), and a new
        one at each of `cuts` (prefill_splits.batches)."""
        return batches(positions, cuts, self.n_batch)

    def seq_remove(self, seq_id: int, p0: int) -> None:
        """Forget sequence `seq_id`'s KV positions >= p0."""
        if not self._ctx.kv_cache_seq_rm(seq_id, p0, -1):
            raise RuntimeError(f"could not remove positions >= {p0} of sequence {seq_id}")

    def seq_copy(self, src: int, dst: int, n: int) -> None:
        """Make sequence `dst` hold the KV of `src`'s positions 0..n-1.

        Each sequence has its own KV stream, which llama.cpp copies whole (at the next
        decode); the positions from n on are then dropped."""
        self._ctx.kv_cache_seq_cp(src, dst, -1, -1)
        self.seq_remove(dst, n)

    def sync(self, context: Sequence[int]) -> int:
        """Make the KV cache hold exactly `context`, reusing the longest common prefix.

        Returns how many tokens were reused (a chat turn reuses the whole earlier history).
        """
        keep = self._rewind(common_prefix_len(self.kv_tokens, context))
        if len(context) > keep:
            self.decode(list(context[keep:]), logits="last")
        return keep

    def prefill(self, prompt: Sequence[int]) -> tuple[int, npt.NDArray[np.float32]]:
        """Make the KV cache hold exactly `prompt` and return the logits after its last token.

        Returns (tokens reused from the cache, logits [n_vocab]). The whole prompt goes through
        llama.cpp's own prefill batches, its last token included, so the first generated token
        and the KV it leaves are llama.cpp's own (a prompt fully in the cache decodes its last
        token again, as llama.cpp does, to get its logits).
        """
        if not prompt:
            raise ValueError("prefill needs at least one token")
        keep = self._rewind(min(common_prefix_len(self.kv_tokens, prompt), len(prompt) - 1))
        return keep, self.decode(list(prompt[keep:]), logits="last")[-1]

    def _rewind(self, keep: int) -> int:
        """Cut the cache back to its first `keep` tokens; returns how many it still holds
        (0 where the memory cannot be cut back: a recurrent state is cleared and rebuilt)."""
        if keep < self.n_past and not self.can_rollback:
            self.reset()
            return 0
        self.truncate(keep)
        return keep

    def reset(self) -> None:
        self._ctx.kv_cache_clear()
        self.kv_tokens.clear()

    def close(self) -> None:
        for obj in ("_batch", "_ctx", "_model"):
            o = getattr(self, obj, None)
            if o is not None:
                o.close()
                setattr(self, obj, None)

    def __enter__(self) -> LlamaBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def runtime_identity() -> dict[str, Any]:
    """What identifies the llama.cpp build in use: its version, libraries and CPU features.

    The libraries are those llama-cpp-python loaded: its own lib folder, or the folder that
    LLAMA_CPP_LIB_PATH names (another build, e.g. Vulkan), whose costs are not the wheel's."""
    llama_cpp, _ = _import_llama_cpp()
    lib_dir = Path(getattr(llama_cpp.llama_cpp, "_base_path", Path(llama_cpp.__file__).parent / "lib"))
    libs = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in lib_dir.glob("*") if p.is_file())
    info = llama_cpp.llama_print_system_info()
    return {"version": llama_cpp.__version__, "libs": libs,
            "system_info": info.decode() if isinstance(info, bytes) else str(info)}


def describe(backend: LlamaBackend) -> dict[str, Any]:
    """What a benchmark or a bug report needs to know about the loaded model."""
    md = backend.metadata()
    return {
        "model": Path(backend.path).name,
        "architecture": backend.arch,
        "n_layer": backend.n_layer,
        "n_vocab": backend.n_vocab,
        "n_ctx": backend.n_ctx,
        "n_threads": backend.n_threads,
        "n_gpu_layers": backend.n_gpu_layers,
        "file_type": md.get("general.file_type", ""),
    }
