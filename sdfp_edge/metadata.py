"""The `sdfp.*` GGUF metadata: which layers the draft leaves out, and why.

The skip list travels inside the one GGUF that ships to laptops. Keys live in their own
namespace so that llama.cpp and every other GGUF tool ignore them. `sdfp.n_layer` and
`sdfp.architecture` let the runtime refuse a list that was made for another model.

Version 2 adds optional keys for sub-layer drafts (absent = empty; version-1 files read
as before): per-block scores `sdfp.attn_scores` / `sdfp.ffn_scores` (same method as
`sdfp.score_method`), a sub-layer skip choice `sdfp.skip_attn` / `sdfp.skip_ffn`, and
`sdfp.draft_vocab`, the token ids the model produced in its calibration generations. An
empty list is not written (GGUF arrays cannot be empty).

Reading uses gguf's memory-mapped reader (no tensor is loaded). Writing uses gguf-py's
own `copy_with_new_metadata` recipe, streaming the tensors into a temporary file beside
the output that is renamed at the end: the input is never modified and a killed run
leaves no partial output.
"""

from __future__ import annotations

import math
import mmap
import os
import struct
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from sdfp_edge.errors import ModelFileError, SkipListError

FORMAT_VERSION = 2  # 1: no sub-layer keys; read the same way

KEY_VERSION = "sdfp.version"
KEY_ARCH = "sdfp.architecture"
KEY_N_LAYER = "sdfp.n_layer"
KEY_SKIP_LAYERS = "sdfp.skip_layers"
KEY_LAYER_SCORES = "sdfp.layer_scores"
KEY_SCORE_METHOD = "sdfp.score_method"
KEY_CALIBRATION = "sdfp.calibration"
KEY_ATTN_SCORES = "sdfp.attn_scores"  # version 2
KEY_FFN_SCORES = "sdfp.ffn_scores"
KEY_SKIP_ATTN = "sdfp.skip_attn"
KEY_SKIP_FFN = "sdfp.skip_ffn"
KEY_DRAFT_VOCAB = "sdfp.draft_vocab"

GGUF_MAGIC = b"GGUF"


@dataclass(frozen=True)
class SkipMetadata:
    """What `sdfp-edge convert` decided for one model."""

    architecture: str
    n_layer: int
    skip_layers: tuple[int, ...]
    layer_scores: tuple[float, ...] = ()  # [n_layer], higher = more sensitive; may be empty
    score_method: str = ""
    calibration: str = ""
    version: int = FORMAT_VERSION
    attn_scores: tuple[float, ...] = ()  # [n_layer] attention blocks, same method; may be empty
    ffn_scores: tuple[float, ...] = ()  # [n_layer] MLP blocks; may be empty
    skip_attn: tuple[int, ...] = ()  # layers whose attention block a sub-layer draft skips
    skip_ffn: tuple[int, ...] = ()  # layers whose MLP block it skips
    draft_vocab: tuple[int, ...] = ()  # token ids for the draft's logits, sorted, unique; empty = all

    def check(self, *, architecture: str | None = None, n_layer: int | None = None) -> None:
        """Refuse a list made for another model, or one the runtime cannot run."""
        if architecture is not None and architecture != self.architecture:
            raise SkipListError(
                f"sdfp metadata was made for architecture '{self.architecture}', "
                f"but the model is '{architecture}'"
            )
        if n_layer is not None and n_layer != self.n_layer:
            raise SkipListError(
                f"sdfp metadata was made for {self.n_layer} layers, but the model has {n_layer}"
            )
        if not self.skip_layers:
            raise SkipListError("empty skip list: a draft must skip at least one layer")
        validate_skip_layers(self.skip_layers, self.n_layer)
        for key, scores in ((KEY_LAYER_SCORES, self.layer_scores), (KEY_ATTN_SCORES, self.attn_scores),
                            (KEY_FFN_SCORES, self.ffn_scores)):
            if scores and len(scores) != self.n_layer:
                raise SkipListError(f"{key} has {len(scores)} entries for {self.n_layer} layers")
        for key, blocks in ((KEY_SKIP_ATTN, self.skip_attn), (KEY_SKIP_FFN, self.skip_ffn)):
            try:
                validate_skip_layers(blocks, self.n_layer)
            except SkipListError as e:
                raise SkipListError(f"{key}: {e}") from None
        bad = [t for t in self.draft_vocab if isinstance(t, bool) or not isinstance(t, int) or t < 0]
        if bad:
            raise SkipListError(f"{KEY_DRAFT_VOCAB} has invalid token ids {bad[:5]}")
        if any(a >= b for a, b in zip(self.draft_vocab, self.draft_vocab[1:])):
            raise SkipListError(f"{KEY_DRAFT_VOCAB} must be sorted and list each token id once")


def validate_skip_layers(skip_layers: tuple[int, ...] | list[int], n_layer: int) -> None:
    """The runtime's rules for a skip list: in range, unique, never the last layer."""
    seen: set[int] = set()
    for i in skip_layers:
        if not isinstance(i, int) or isinstance(i, bool):
            raise SkipListError(f"layer index {i!r} is not an integer")
        if i < 0 or i >= n_layer:
            raise SkipListError(f"layer {i} is out of range: the model has layers 0..{n_layer - 1}")
        if i in seen:
            raise SkipListError(f"layer {i} appears twice in the skip list")
        if i == n_layer - 1:
            raise SkipListError(
                f"layer {i} is the last layer, which produces the output and cannot be skipped"
            )
        seen.add(i)


def check_gguf_file(path: str | os.PathLike[str]) -> Path:
    """Clear errors for what llama.cpp would only report as 'failed to load'."""
    p = Path(path)
    if not p.exists():
        raise ModelFileError(f"{p}: no such file")
    if not p.is_file():
        raise ModelFileError(f"{p}: not a file")
    with open(p, "rb") as f:
        head = f.read(4)
    if len(head) < 4:
        raise ModelFileError(f"{p}: empty or truncated file, not a GGUF model")
    if head != GGUF_MAGIC:
        raise ModelFileError(f"{p}: not a GGUF file (starts with {head!r}, expected b'GGUF')")
    return p


# GGUF value types (gguf.GGUFValueType) -> struct format of one scalar
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9
# per-token arrays of the tokenizer: most of a header, and nothing sdfp-edge checks
VOCABULARY_KEYS = frozenset({"tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type",
                             "tokenizer.ggml.merges", "tokenizer.ggml.precompiled_charsmap"})


def read_kv(path: str | os.PathLike[str], keys: set[str] | None = None) -> dict[str, Any]:
    """The GGUF's key/value metadata (only `keys`, when given), without touching tensors.

    gguf's GGUFReader builds an object per array element (about 10 s for a 49k-token
    vocabulary on the project's machines); this streams the header and skips what it does
    not need: 20-50 ms for the catalogue's models without their vocabulary (read_header),
    70-330 ms with it, decoded (2026-12-07, Zen 4 VM).
    """
    return _read_header(path, (lambda _: True) if keys is None else keys.__contains__, tensors=False)[0]


def read_header(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, tuple[int, ...]]]:
    """The metadata but the vocabulary (VOCABULARY_KEYS: llama.cpp reads it itself) and every
    tensor's name and shape (ggml's order, fastest dimension first), in one pass: everything
    that is checked before llama.cpp loads a model, and what it computes per layer."""
    return _read_header(path, _not_vocabulary, tensors=True)


def layer_parameters(shapes: dict[str, tuple[int, ...]]) -> float:
    """The mean number of weights in a repeated block (the `blk.N.*` tensors), 0.0 without
    any: the work of one layer, which sets how long llama.cpp's threads compute between two
    of their barriers (backend.spin_bound). A mixture of experts counts every expert."""
    blocks: set[str] = set()
    total = 0
    for name, dims in shapes.items():
        parts = name.split(".", 2)
        if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit():
            blocks.add(parts[1])
            total += math.prod(dims)
    return total / len(blocks) if blocks else 0.0


def _read_header(path: str | os.PathLike[str], keep: Callable[[str], bool],
                 *, tensors: bool) -> tuple[dict[str, Any], dict[str, tuple[int, ...]]]:
    """The metadata whose keys `keep` accepts, and the tensor shapes when `tensors`, parsed from
    the memory-mapped file: a vocabulary's 50-150k strings are walked in a tight loop, where
    a read and a seek each cost 0.35 s of a SmolLM2 load (2026-12-07)."""
    p = check_gguf_file(path)
    with open(p, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        size = len(mm)
        pos = 4  # past the magic

        def truncated() -> ModelFileError:
            return ModelFileError(f"{p}: corrupt or truncated GGUF (header runs past the end of the file)")

        def take(n: int) -> bytes:
            nonlocal pos
            if n < 0 or pos + n > size:
                raise truncated()
            pos += n
            return mm[pos - n : pos]

        (version,) = struct.unpack("<I", take(4))
        end = "<" if version < 0x10000 else ">"  # a byte-swapped version means a big-endian file
        if end == ">":
            (version,) = struct.unpack(">I", struct.pack("<I", version))
        if version not in (2, 3):
            raise ModelFileError(f"{p}: unsupported GGUF version {version}")
        formats = {f: struct.Struct(end + f) for f in set(_SCALARS.values())}
        u64 = formats["Q"]

        def unpack(fmt: str) -> Any:
            nonlocal pos
            st = formats[fmt]
            if pos + st.size > size:
                raise truncated()
            pos += st.size
            return st.unpack_from(mm, pos - st.size)[0]

        def string() -> str:
            return take(unpack("Q")).decode("utf-8", errors="replace")

        def skip_strings(count: int) -> None:
            nonlocal pos
            at = pos
            for _ in range(count):
                if at + 8 > size:
                    raise truncated()
                at += 8 + u64.unpack_from(mm, at)[0]
            if at > size:
                raise truncated()
            pos = at

        def value(vtype: int, keep: bool) -> Any:
            if vtype in _SCALARS:
                return unpack(_SCALARS[vtype])
            if vtype == _STRING:
                return string()
            if vtype == _ARRAY:
                itype, count = unpack("I"), unpack("Q")
                if itype in _SCALARS:
                    raw = take(count * formats[_SCALARS[itype]].size)
                    return list(struct.unpack(f"{end}{count}{_SCALARS[itype]}", raw)) if keep else None
                if itype == _STRING:
                    if keep:
                        return [string() for _ in range(count)]
                    skip_strings(count)
                    return None
                raise ModelFileError(f"{p}: corrupt GGUF (array of type {itype})")
            raise ModelFileError(f"{p}: corrupt GGUF (value type {vtype})")

        n_tensors = unpack("Q")
        n_kv = unpack("Q")
        out: dict[str, Any] = {}
        for _ in range(n_kv):
            key = string()
            wanted = keep(key)
            v = value(unpack("I"), wanted)
            if wanted:
                out[key] = v
        shapes: dict[str, tuple[int, ...]] = {}
        for _ in range(n_tensors if tensors else 0):
            name = string()
            n_dims = unpack("I")
            if n_dims > 8:  # GGML_MAX_DIMS is 4
                raise ModelFileError(f"{p}: corrupt GGUF (tensor '{name}' has {n_dims} dimensions)")
            shapes[name] = tuple(unpack("Q") for _ in range(n_dims))
            unpack("I"), unpack("Q")  # its type and offset
    return out, shapes


def read_model_info(path: str | os.PathLike[str]) -> tuple[str, int]:
    """The model's architecture and layer count, from llama.cpp's own keys."""
    return model_info(_read_header(path, _not_vocabulary, tensors=False)[0], path)


def read_skip_metadata(path: str | os.PathLike[str]) -> SkipMetadata | None:
    """The file's `sdfp.*` metadata, or None when it has none (plain GGUF)."""
    return skip_metadata(_read_header(path, _not_vocabulary, tensors=False)[0], path)


def _not_vocabulary(key: str) -> bool:
    return key not in VOCABULARY_KEYS


def model_info(kv: dict[str, Any], source: object) -> tuple[str, int]:
    """(architecture, layer count) from a `read_kv` result (one header read serves both)."""
    arch = kv.get("general.architecture")
    if not isinstance(arch, str):
        raise ModelFileError(f"{source}: GGUF has no general.architecture")
    n_layer = kv.get(f"{arch}.block_count")
    if not isinstance(n_layer, int):
        raise ModelFileError(f"{source}: GGUF has no {arch}.block_count")
    return arch, n_layer


def skip_metadata(kv: dict[str, Any], source: object) -> SkipMetadata | None:
    """The `sdfp.*` metadata in a `read_kv` result, or None."""
    if KEY_SKIP_LAYERS not in kv:
        return None
    try:
        return SkipMetadata(
            architecture=str(kv.get(KEY_ARCH)),
            n_layer=int(kv[KEY_N_LAYER]),
            skip_layers=tuple(int(i) for i in kv[KEY_SKIP_LAYERS]),
            layer_scores=tuple(float(x) for x in (kv.get(KEY_LAYER_SCORES) or [])),
            score_method=str(kv.get(KEY_SCORE_METHOD) or ""),
            calibration=str(kv.get(KEY_CALIBRATION) or ""),
            version=int(kv.get(KEY_VERSION) or 0),
            attn_scores=tuple(float(x) for x in (kv.get(KEY_ATTN_SCORES) or [])),
            ffn_scores=tuple(float(x) for x in (kv.get(KEY_FFN_SCORES) or [])),
            skip_attn=tuple(int(i) for i in (kv.get(KEY_SKIP_ATTN) or [])),
            skip_ffn=tuple(int(i) for i in (kv.get(KEY_SKIP_FFN) or [])),
            draft_vocab=tuple(int(t) for t in (kv.get(KEY_DRAFT_VOCAB) or [])),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise SkipListError(f"{source}: malformed sdfp metadata ({e})") from e


def write_skip_metadata(
    src: str | os.PathLike[str], dst: str | os.PathLike[str], meta: SkipMetadata
) -> Path:
    """Copy src to dst with `meta` added (replacing any earlier sdfp.* keys).

    The model in src must match meta (architecture and layer count). dst is written to
    a temporary file in its directory and renamed, so it is complete or absent.
    """
    import gguf
    from gguf.scripts.gguf_new_metadata import MetadataDetails, copy_with_new_metadata

    src_p, dst_p = Path(src), Path(dst)
    if src_p.resolve() == dst_p.resolve():
        raise ModelFileError(f"{dst_p}: refusing to overwrite the input file; choose another output")
    arch, n_layer = read_model_info(src_p)
    meta.check(architecture=arch, n_layer=n_layer)

    try:
        reader = gguf.GGUFReader(src_p, "r")
    except Exception as e:  # gguf raises ValueError, IndexError, struct errors...
        raise ModelFileError(f"{src_p}: corrupt or truncated GGUF ({type(e).__name__}: {e})") from e
    T = gguf.GGUFValueType
    new: dict[str, Any] = {
        KEY_VERSION: MetadataDetails(T.UINT32, meta.version),
        KEY_ARCH: MetadataDetails(T.STRING, meta.architecture),
        KEY_N_LAYER: MetadataDetails(T.UINT32, meta.n_layer),
        KEY_SKIP_LAYERS: MetadataDetails(T.ARRAY, list(meta.skip_layers), sub_type=T.INT32),
        KEY_SCORE_METHOD: MetadataDetails(T.STRING, meta.score_method),
        KEY_CALIBRATION: MetadataDetails(T.STRING, meta.calibration),
    }
    for key, scores in ((KEY_LAYER_SCORES, meta.layer_scores), (KEY_ATTN_SCORES, meta.attn_scores),
                        (KEY_FFN_SCORES, meta.ffn_scores)):
        if scores:
            new[key] = MetadataDetails(T.ARRAY, [float(s) for s in scores], sub_type=T.FLOAT32)
    for key, ids in ((KEY_SKIP_ATTN, meta.skip_attn), (KEY_SKIP_FFN, meta.skip_ffn),
                     (KEY_DRAFT_VOCAB, meta.draft_vocab)):
        if ids:  # absent = empty
            new[key] = MetadataDetails(T.ARRAY, list(ids), sub_type=T.INT32)
    old_sdfp = [name for name in reader.fields if name.startswith("sdfp.")]

    dst_p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dst_p.parent, prefix=f".{dst_p.name}.", suffix=".tmp")
    os.close(fd)
    try:
        writer = gguf.GGUFWriter(tmp_name, arch=arch, endianess=reader.endianess)
        alignment = reader.get_field("general.alignment")
        if alignment is not None:
            writer.data_alignment = int(alignment.contents())
        copy_with_new_metadata(reader, writer, new, old_sdfp)
        os.replace(tmp_name, dst_p)
    except OSError as e:
        Path(tmp_name).unlink(missing_ok=True)
        raise ModelFileError(f"{dst_p}: could not write ({e.strerror or e})") from e
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return dst_p


def choose_skip_layers(
    scores: npt.ArrayLike, n_skip: int, *, keep_first: bool = True
) -> list[int]:
    """The `n_skip` least sensitive layers, sorted by index.

    Never the last layer (it produces the output), nor layer 0 unless keep_first=False.
    Ties go to the lower index.

    Args:
        scores: [n_layer], higher = more sensitive.
        n_skip: how many layers to skip, 0 <= n_skip <= number of candidates.
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1 or s.size == 0:
        raise SkipListError(f"layer scores must be a non-empty 1-D array, got shape {s.shape}")
    if not np.all(np.isfinite(s)):
        raise SkipListError(f"layer scores contain NaN or infinity at layers {np.flatnonzero(~np.isfinite(s)).tolist()}")
    n_layer = s.size
    candidates = [i for i in range(n_layer - 1) if i > 0 or not keep_first]
    if isinstance(n_skip, bool) or not isinstance(n_skip, (int, np.integer)):
        raise SkipListError(f"the number of layers to skip must be an integer, got {n_skip!r}")
    if not 0 <= n_skip <= len(candidates):
        rule = "the first and the last" if keep_first else "the last"
        raise SkipListError(
            f"cannot skip {n_skip} of {n_layer} layers: {rule} layer are kept, "
            f"so at most {len(candidates)} can be skipped"
        )
    ranked = sorted(candidates, key=lambda i: (s[i], i))
    return sorted(ranked[: int(n_skip)])


# general.sampling.* (the model maker's recommended settings, read by llama.cpp's
# common_params_sampling_from_model) -> this project's option names
SAMPLING_KEYS = {
    "general.sampling.temp": "temperature", "general.sampling.top_k": "top_k", "general.sampling.top_p": "top_p",
    "general.sampling.min_p": "min_p", "general.sampling.xtc_probability": "xtc_probability",
    "general.sampling.xtc_threshold": "xtc_threshold", "general.sampling.penalty_last_n": "repeat_last_n",
    "general.sampling.penalty_repeat": "repeat_penalty", "general.sampling.mirostat": "mirostat",
    "general.sampling.mirostat_tau": "mirostat_tau", "general.sampling.mirostat_eta": "mirostat_eta",
    "general.sampling.sequence": "samplers",
}
_INT_SAMPLING = {"top_k", "repeat_last_n", "mirostat"}


def sampling_metadata(kv: dict[str, Any]) -> dict[str, Any]:
    """The GGUF's recommended sampling settings under this project's names ({} when none).

    As llama.cpp reads them: a value that does not parse as a number is ignored (strtof /
    strtol on the key's text), the sequence is a ';'-separated list of sampler names."""
    out: dict[str, Any] = {}
    for key, name in SAMPLING_KEYS.items():
        if key not in kv:
            continue
        v = kv[key]
        if name == "samplers":
            if isinstance(v, str) and v.strip():
                out[name] = v
            continue
        try:
            num = float(v) if not isinstance(v, bool) else None
        except (TypeError, ValueError):
            num = None
        if num is None or num != num:
            continue
        out[name] = int(num) if name in _INT_SAMPLING else float(num)
    return out
