"""The workstation pipeline: score the full-precision model's layers, ship the skip list in the GGUF.

    convert(HF_DIR, OUT.gguf)                 llama.cpp's converter + quantizer, then metadata
    convert(HF_DIR, OUT.gguf, gguf_in=IN)     annotate an existing GGUF of the same model

Steps: check the options (and, when annotating, that IN is the model in HF_DIR); convert
with llama.cpp's own `convert_hf_to_gguf.py` from the patched source tree (a subprocess,
`--outtype f16`) and quantize with llama.cpp's quantizer (`llama_model_quantize`); score
the decoder layers and their attention and MLP blocks on calibration text
(sdfp_edge.convert.fit), in the same pass; write the `sdfp.*` metadata (sdfp_edge.metadata:
streamed, temporary file renamed at the end, input untouched): the whole-layer skip list,
a sub-layer choice saving the same share of a step (sdfp_edge.convert.block_choice), and the
tokens the model produced in its own calibration answers (the draft vocabulary).

PyTorch and transformers are imported inside the functions that need them: importing this
module (e.g. for `inspect`) stays light.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sdfp_edge.runtime import layer_skip
from sdfp_edge.errors import (
    ModelFileError,
    RuntimeBuildError,
    SdfpError,
    SkipListError,
    UnsupportedArchitectureError,
)
from sdfp_edge.metadata import (
    SkipMetadata,
    read_model_info,
    read_skip_metadata,
    write_skip_metadata,
)

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

METHODS = ("fit", "gate_fisher", "block_influence")  # = sdfp_edge.convert.fit.METHODS (that imports torch)
DEFAULT_SKIP_RATIO = 0.2
SOURCE_ENV = "SDFP_EDGE_LLAMA_CPP_SRC"  # a patched llama-cpp-python source tree, overrides the lookup

# Quantization types that llama.cpp's quantizer makes without an importance matrix.
QUANT_TYPES = (
    "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L",
    "Q4_K_S", "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K", "IQ4_NL", "IQ4_XS", "BF16", "F16", "F32",
)
_QUANT_ALIASES = {"Q3_K": "Q3_K_M", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M"}
_CONVERTER_OUTTYPES = {"F16": "f16", "BF16": "bf16", "F32": "f32"}  # written by the converter itself

# HF model_type -> llama.cpp architecture, where the names differ.
_GGUF_ARCH = {"mistral": "llama", "gemma3_text": "gemma3", "qwen2_moe": "qwen2moe", "qwen3_moe": "qwen3moe"}


class ConvertError(SdfpError, ValueError):
    """A convert option that cannot work, or a conversion step that failed."""


def convert(
    hf_dir: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    gguf_in: str | os.PathLike[str] | None = None,
    quant: str = "Q8_0",
    method: str = "fit",
    n_skip: int | None = None,
    skip_ratio: float | None = None,
    n_samples: int = 8,
    seq_len: int = 128,
    calibration_file: str | os.PathLike[str] | None = None,
    device: str = "cpu",
    seed: int = 0,
    progress: bool = True,
) -> SkipMetadata:
    """Score HF_DIR's layers and write out_path: a GGUF carrying the skip list.

    Args:
        hf_dir: the full-precision Hugging Face model folder (config.json, weights, tokenizer).
        out_path: the GGUF to write (never the same file as gguf_in).
        gguf_in: annotate this GGUF (same model as hf_dir) instead of converting hf_dir.
        quant: llama.cpp quantization type of the converted file (ignored with gguf_in).
        method: "fit", "gate_fisher" or "block_influence" (see sdfp_edge.convert.fit).
        n_skip: number of layers the draft skips; or skip_ratio, a fraction of the layers;
            neither: `choose_n_skip_auto`.
        n_samples, seq_len: calibration size (sequences, tokens each).
        calibration_file: text or JSONL file; default: the model's own answers to
            built-in prompts (sdfp_edge.convert.calibration).
        device, seed, progress: for scoring.

    Returns:
        The metadata written to out_path.
    """
    hf = Path(hf_dir)
    out = Path(out_path)
    config = hf_config(hf)
    count = _check_options(method=method, n_skip=n_skip, skip_ratio=skip_ratio, n_layer=config["num_hidden_layers"])
    if gguf_in is not None:
        if Path(gguf_in).resolve() == out.resolve():
            raise ModelFileError(f"{out}: refusing to overwrite the input GGUF; choose another output")
        check_gguf_matches(gguf_in, config, hf_dir=hf)
    else:
        quant = _normalize_quant(quant)

    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.convert-") as tmp:
        if gguf_in is None:
            # Convert first: an architecture llama.cpp cannot convert fails in seconds,
            # before minutes of scoring.
            _say(progress, f"converting {hf} with llama.cpp's convert_hf_to_gguf.py ({quant})")
            src = convert_to_gguf(hf, Path(tmp), quant=quant)
            check_gguf_matches(src, config, hf_dir=hf)
        else:
            src = Path(gguf_in)
        _say(progress, f"scoring {config['num_hidden_layers']} layers ({method}) on {device}")
        scored = analyze_model(
            hf, methods=(method,), n_samples=n_samples, seq_len=seq_len,
            calibration_file=calibration_file, device=device, seed=seed, progress=progress,
        )
        scores = scored.layer[method]
        n_layer = config["num_hidden_layers"]
        if count is None:
            count = _check_count(choose_n_skip_auto(scores, gguf_path=src, progress=progress), n_layer)
        from sdfp_edge.metadata import choose_skip_layers

        skip_layers = tuple(choose_skip_layers(scores, count))
        skip_attn, skip_ffn = default_block_choice(scored, method, skip_layers)
        meta = SkipMetadata(
            architecture=read_model_info(src)[0],
            n_layer=n_layer,
            skip_layers=skip_layers,
            layer_scores=_as_stored(scores),
            score_method=method,
            calibration=scored.calibration,
            attn_scores=_as_stored(scored.attn.get(method)),
            ffn_scores=_as_stored(scored.ffn.get(method)),
            skip_attn=tuple(skip_attn),
            skip_ffn=tuple(skip_ffn),
            draft_vocab=scored.draft_vocab,
        )
        write_skip_metadata(src, out, meta)
    _say(progress, f"wrote {out}: skip layers {list(meta.skip_layers)} of {n_layer}")
    if meta.skip_attn or meta.skip_ffn:
        _say(progress, f"  sub-layer draft: attention of {list(meta.skip_attn)}, MLP of {list(meta.skip_ffn)}")
    return meta


AUTO_SKIP_RATIOS = (0.1, 0.2, 0.3, 0.4)


def choose_n_skip_auto(
    scores: npt.NDArray[np.float64], *, gguf_path: Path | None = None, progress: bool = True
) -> int:
    """How many layers to skip when neither n_skip nor skip_ratio is given.

    Measured through the runtime (sdfp_edge.convert.skip_count): each candidate count's ranked list
    drafts on held-out prompts in llama.cpp, and the count with the best predicted speedup
    under the cost model wins. Without a GGUF to measure on: DEFAULT_SKIP_RATIO.
    """
    n_layer = len(scores)
    if gguf_path is None:
        return _ratio_to_count(DEFAULT_SKIP_RATIO, n_layer)
    from sdfp_edge.convert import skip_count
    from sdfp_edge.metadata import choose_skip_layers

    counts = sorted({max(1, min(n_layer - 2, round(r * n_layer))) for r in AUTO_SKIP_RATIOS})
    _say(progress, f"measuring draft acceptance for skip counts {counts} on held-out prompts")
    trials = skip_count.measure_counts(
        gguf_path, lambda n: choose_skip_layers(scores, n), counts,
        log=(lambda m: _say(progress, m)),
    )
    best = skip_count.choose_count(trials)
    _say(progress, f"chose {best.n_skip} layers")
    return best.n_skip


def default_block_choice(
    scored: ModelScores, method: str, skip_layers: tuple[int, ...]
) -> tuple[list[int], list[int]]:
    """The sub-layer draft that saves what the whole-layer list saves: (attention, MLP) layers.

    Empty for a method without block scores (block_influence).
    """
    if method not in scored.attn:
        return [], []
    from sdfp_edge.convert.block_choice import choose_skip_blocks, whole_layer_cost

    budget = whole_layer_cost(skip_layers, scored.attn_cost, scored.ffn_cost)
    return choose_skip_blocks(scored.attn[method], scored.ffn[method], scored.attn_cost, scored.ffn_cost, budget)


# --- the steps -----------------------------------------------------------------------


@dataclass(frozen=True)
class ModelScores:
    """What one scoring pass over the HF model gives convert (arrays float64, [n_layer])."""

    layer: dict[str, npt.NDArray[np.float64]]  # {method: [n_layer]} whole decoder layers
    attn: dict[str, npt.NDArray[np.float64]]  # {method: [n_layer]} attention blocks (fit, gate_fisher)
    ffn: dict[str, npt.NDArray[np.float64]]  # {method: [n_layer]} MLP blocks
    attn_cost: npt.NDArray[np.float64]  # [n_layer] each attention block's share of a step
    ffn_cost: npt.NDArray[np.float64]  # [n_layer] each MLP block's share
    draft_vocab: tuple[int, ...]  # ids the model generated in calibration; () with a calibration file
    calibration: str  # the sdfp.calibration description


def score_model(
    hf_dir: Path,
    *,
    methods: tuple[str, ...],
    n_samples: int,
    seq_len: int,
    calibration_file: str | os.PathLike[str] | None,
    device: str,
    seed: int,
    progress: bool,
) -> tuple[dict[str, npt.NDArray[np.float64]], str]:
    """Load the HF model, make calibration sequences, score the layers by each method in
    one pass (one load, one calibration set).

    The gate and block-influence hooks leave the forward values unchanged (gates are 1),
    so each method's scores are those of a pass with that method alone.

    Returns:
        ({method: scores [n_layer]}, the calibration description).
    """
    scored = analyze_model(
        hf_dir, methods=methods, n_samples=n_samples, seq_len=seq_len, calibration_file=calibration_file,
        device=device, seed=seed, progress=progress, blocks=False,
    )
    return scored.layer, scored.calibration


def analyze_model(
    hf_dir: Path,
    *,
    methods: tuple[str, ...],
    n_samples: int,
    seq_len: int,
    calibration_file: str | os.PathLike[str] | None,
    device: str,
    seed: int,
    progress: bool,
    blocks: bool = True,
) -> ModelScores:
    """`score_model` plus, in the same pass, block scores and costs and the draft vocabulary.

    blocks=False leaves attn/ffn empty (and needs no attention/MLP split of the layers).
    """
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sdfp_edge.convert import calibration as cal
    from sdfp_edge.convert.block_choice import block_costs
    from sdfp_edge.convert.fit import score_blocks, score_layers

    tokenizer = AutoTokenizer.from_pretrained(hf_dir, local_files_only=True)
    config = hf_config(hf_dir)
    dtype: Any = "auto"
    if device == "cpu" and config.get("dtype", config.get("torch_dtype")) == "float16":
        dtype = torch.bfloat16  # same memory, and CPU kernels handle bf16 better than fp16
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=dtype, local_files_only=True)
    try:
        model.to(device)  # type: ignore[arg-type]  # (transformers' typing of .to) generate there too
        vocab: tuple[int, ...] = ()
        if calibration_file is None:
            seqs = cal.self_generated(model, tokenizer, n_samples=n_samples, seq_len=seq_len, seed=seed)
            description = cal.describe_self_generated(len(seqs), seq_len, seed)
            vocab = cal.generated_vocab(tokenizer, seqs, seq_len=seq_len)
        else:
            seqs = cal.from_file(calibration_file, tokenizer, n_samples=n_samples, seq_len=seq_len)
            description = cal.describe_file(calibration_file, len(seqs), seq_len)
        options: dict[str, Any] = {"methods": methods, "device": device, "seed": seed, "progress": progress}
        if blocks:
            by_part = score_blocks(model, seqs, **options)
            attn_cost, ffn_cost = block_costs(model)
        else:
            by_part = {m: {"layer": s} for m, s in score_layers(model, seqs, **options).items()}
            attn_cost = ffn_cost = np.zeros(0)
    finally:
        del model
        gc.collect()
    return ModelScores(
        layer={m: parts["layer"] for m, parts in by_part.items()},
        attn={m: parts["attn"] for m, parts in by_part.items() if "attn" in parts},
        ffn={m: parts["ffn"] for m, parts in by_part.items() if "ffn" in parts},
        attn_cost=attn_cost, ffn_cost=ffn_cost, draft_vocab=vocab, calibration=description,
    )


def convert_to_gguf(hf_dir: Path, work_dir: Path, *, quant: str) -> Path:
    """llama.cpp's converter (then its quantizer unless quant is F16/BF16/F32) into work_dir."""
    converter = llama_cpp_source() / "vendor" / "llama.cpp" / "convert_hf_to_gguf.py"
    if not converter.is_file():
        raise RuntimeBuildError(f"{converter}: llama.cpp's converter is missing from the source tree")
    outtype = _CONVERTER_OUTTYPES.get(quant, "f16")
    converted = work_dir / f"model-{outtype}.gguf"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, str(converter), str(hf_dir), "--outfile", str(converted), "--outtype", outtype],
        env=env, capture_output=True, text=True, check=False,
    )
    if proc.returncode != 0 or not converted.is_file():
        raise _converter_error(hf_dir, proc.stderr or proc.stdout)
    if quant in _CONVERTER_OUTTYPES:
        return converted
    quantized = work_dir / f"model-{quant}.gguf"
    quantize(converted, quantized, quant)
    converted.unlink()
    return quantized


def quantize(src: Path, dst: Path, quant: str, *, n_threads: int = 0, verbose: bool = False) -> None:
    """llama.cpp's quantizer (`llama_model_quantize`) through llama-cpp-python's binding."""
    try:
        import llama_cpp
        from llama_cpp import _logger
    except ImportError as e:
        raise RuntimeBuildError(f"llama-cpp-python is not installed ({e}); {layer_skip.FIX}") from e
    ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{quant}", None)
    if ftype is None:
        raise ConvertError(f"this llama-cpp-python has no quantization type {quant}")
    _logger.set_verbose(verbose)  # llama.cpp logs every tensor; errors are still printed
    llama_cpp.llama_backend_init()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = n_threads
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0 or not dst.is_file():
        raise ConvertError(f"llama.cpp's quantizer failed ({rc}) making {quant} from {src}")


def llama_cpp_source() -> Path:
    """The patched llama-cpp-python source tree (sdist root), as tools/build_runtime.py prints it.

    $SDFP_EDGE_LLAMA_CPP_SRC overrides; otherwise the repository's
    `tools/build_runtime.py --print-source` (unpacks the pinned sdist once, then instant).
    """
    if os.environ.get(SOURCE_ENV):
        return Path(os.environ[SOURCE_ENV])
    script = Path(__file__).resolve().parents[2] / "tools" / "build_runtime.py"
    if not script.is_file():
        raise RuntimeBuildError(
            f"cannot find llama.cpp's converter: run from an sdfp-edge source checkout "
            f"(tools/build_runtime.py), or set {SOURCE_ENV} to the patched source tree"
        )
    proc = subprocess.run(
        [sys.executable, str(script), "--print-source"], capture_output=True, text=True, check=False
    )
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines or not Path(lines[-1]).is_dir():
        raise RuntimeBuildError(
            f"tools/build_runtime.py --print-source failed: {(proc.stderr or proc.stdout).strip()[-500:]}"
        )
    return Path(lines[-1])


def check_gguf_matches(gguf_path: str | os.PathLike[str], config: dict[str, Any], *, hf_dir: Path) -> None:
    """Refuse a GGUF that is not the model in hf_dir: architecture, layer count, vocabulary."""
    import gguf

    arch, n_layer = read_model_info(gguf_path)
    want_arch = hf_gguf_architecture(config)
    if arch != want_arch:
        raise SkipListError(
            f"{gguf_path} is a '{arch}' model but {hf_dir} is '{config.get('model_type')}' "
            f"(llama.cpp architecture '{want_arch}'): not the same model"
        )
    if n_layer != config["num_hidden_layers"]:
        raise SkipListError(
            f"{gguf_path} has {n_layer} layers but {hf_dir} has {config['num_hidden_layers']}: not the same model"
        )
    reader = gguf.GGUFReader(gguf_path, "r")
    field = reader.get_field(f"{arch}.vocab_size")
    if field is not None:
        n_vocab = int(field.contents())
    else:
        tokens = reader.get_field("tokenizer.ggml.tokens")
        n_vocab = len(tokens.data) if tokens is not None else -1
    if n_vocab != config["vocab_size"]:
        raise SkipListError(
            f"{gguf_path} has a vocabulary of {n_vocab} tokens but {hf_dir} has {config['vocab_size']}: "
            "not the same model"
        )


def hf_gguf_architecture(config: dict[str, Any]) -> str:
    """llama.cpp's architecture name for an HF config (e.g. "llama" for mistral)."""
    model_type = str(config.get("model_type", ""))
    # the class transformers loads for this model_type (what convert scores), else the config's
    try:
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

        hf_class = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_type)
    except ImportError:
        hf_class = None
    hf_class = hf_class or next(iter(config.get("architectures") or []), None)
    if hf_class:
        try:  # llama.cpp's converter knows what it writes for each HF class
            return _converter_arch(str(hf_class))
        except Exception:  # an older source tree, or a class it does not convert
            pass
    return _GGUF_ARCH.get(model_type, model_type.replace("_", ""))


def _converter_arch(hf_class: str) -> str:
    """The GGUF architecture llama.cpp's pinned converter writes for an HF model class (asked
    in a subprocess: the converter needs its own gguf-py, which may be newer than the installed one)."""
    root = llama_cpp_source() / "vendor" / "llama.cpp"
    code = ("import sys; sys.path[0:0] = sys.argv[1:3]; import gguf; from conversion import get_model_class; "
            "print(gguf.MODEL_ARCH_NAMES[get_model_class(sys.argv[3]).model_arch])")
    proc = subprocess.run([sys.executable, "-c", code, str(root), str(root / "gguf-py"), hf_class],
                          capture_output=True, text=True, check=True)
    return proc.stdout.strip().splitlines()[-1]


# --- inspect -------------------------------------------------------------------------


def inspect(path: str | os.PathLike[str]) -> str:
    """The sdfp metadata of a GGUF and its layers ranked from least to most sensitive."""
    arch, n_layer = read_model_info(path)
    meta = read_skip_metadata(path)
    head = [f"{path}", f"  model:        {arch}, {n_layer} layers"]
    if meta is None:
        return "\n".join(head + ["  sdfp:         none (a plain GGUF: no skip list)"])
    skipped = set(meta.skip_layers)
    lines = head + [
        f"  sdfp.version: {meta.version}",
        (
            f"  skip layers:  {', '.join(map(str, meta.skip_layers)) or '(none)'} "
            f"({len(meta.skip_layers)} of {meta.n_layer})"
        ),
        f"  score method: {meta.score_method or '(unknown)'}",
        f"  calibration:  {meta.calibration or '(unknown)'}",
    ]
    if meta.skip_attn or meta.skip_ffn:
        for label, chosen in (("skip attn:   ", meta.skip_attn), ("skip ffn:    ", meta.skip_ffn)):
            lines.append(f"  {label} {', '.join(map(str, chosen)) or '(none)'} ({len(chosen)} of {meta.n_layer})")
    if meta.draft_vocab:
        vocab = meta.draft_vocab
        lines.append(f"  draft vocab:  {len(vocab)} tokens (ids {vocab[0]}..{vocab[-1]})")
    if (meta.architecture, meta.n_layer) != (arch, n_layer):
        lines.append(f"  WARNING: made for {meta.architecture}, {meta.n_layer} layers: not this model")
    if meta.layer_scores:
        blocks = len(meta.attn_scores) == len(meta.ffn_scores) == len(meta.layer_scores)
        header = "  rank  layer  score       " + ("  attn          ffn         " if blocks else "")
        lines += ["", header + "  skipped" + (" (* = block skipped)" if blocks else "")]
        order = sorted(range(len(meta.layer_scores)), key=lambda i: (meta.layer_scores[i], i))
        for rank, i in enumerate(order, 1):
            row = f"  {rank:4d}  {i:5d}  {meta.layer_scores[i]:<12.6g}"
            if blocks:
                attn = f"{meta.attn_scores[i]:.6g}{'*' if i in meta.skip_attn else ''}"
                ffn = f"{meta.ffn_scores[i]:.6g}{'*' if i in meta.skip_ffn else ''}"
                row += f"  {attn:<12}  {ffn:<12}"
            lines.append(f"{row}  {'yes' if i in skipped else ''}".rstrip())
    return "\n".join(lines)


def plot_scores(meta: SkipMetadata, png_path: str | os.PathLike[str]) -> Path:
    """Bar chart of the per-layer scores, skipped layers in another colour (log scale if wide)."""
    if not meta.layer_scores:
        raise SkipListError("this model's sdfp metadata has no layer scores to plot")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    scores = list(meta.layer_scores)
    skipped = set(meta.skip_layers)
    colors = ["tab:orange" if i in skipped else "tab:blue" for i in range(len(scores))]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.25 * len(scores)), 3.5))
    try:
        ax.bar(range(len(scores)), scores, color=colors)
        positive = [s for s in scores if s > 0]
        if len(positive) == len(scores) and max(positive) / min(positive) > 100:
            ax.set_yscale("log")
        ax.set_xlabel("layer")
        ax.set_ylabel(f"{meta.score_method or 'score'} (higher = more sensitive)")
        ax.set_title(f"{meta.architecture}, {meta.n_layer} layers: {len(skipped)} skipped")
        ax.legend(handles=[Patch(color="tab:orange", label="skipped"), Patch(color="tab:blue", label="kept")])
        fig.tight_layout()
        out = Path(png_path)
        fig.savefig(out, dpi=120)
    finally:
        plt.close(fig)
    return out


# --- helpers -------------------------------------------------------------------------


def hf_config(hf_dir: Path) -> dict[str, Any]:
    """config.json (its text_config for multimodal wrappers), checked for what convert needs."""
    path = hf_dir / "config.json"
    if not hf_dir.is_dir():
        raise ModelFileError(f"{hf_dir}: no such directory (expected a Hugging Face model folder)")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelFileError(f"{hf_dir}: no config.json, not a Hugging Face model folder") from None
    except (OSError, ValueError) as e:
        raise ModelFileError(f"{path}: unreadable ({e})") from e
    if isinstance(config.get("text_config"), dict) and "num_hidden_layers" not in config:
        config = {**config["text_config"], "model_type": config["text_config"].get("model_type", config.get("model_type"))}
    for key in ("model_type", "num_hidden_layers", "vocab_size"):
        if key not in config:
            raise ModelFileError(f"{path}: no '{key}'")
    return config


def _check_options(
    *, method: str, n_skip: int | None, skip_ratio: float | None, n_layer: int
) -> int | None:
    """Refuse what cannot work before any slow step; the number of layers to skip, None = automatic."""
    if method not in METHODS:
        raise ConvertError(f"unknown scoring method '{method}'; choose from {', '.join(METHODS)}")
    if n_skip is not None and skip_ratio is not None:
        raise ConvertError("give the number of layers to skip or a skip ratio, not both")
    if skip_ratio is not None:
        if not 0.0 < skip_ratio < 1.0:
            raise SkipListError(f"the skip ratio must be between 0 and 1 (exclusive), got {skip_ratio}")
        return _check_count(_ratio_to_count(skip_ratio, n_layer), n_layer, f" ({skip_ratio} of {n_layer})")
    if n_skip is not None:
        return _check_count(n_skip, n_layer)
    return None


def _check_count(count: int, n_layer: int, why: str = "") -> int:
    max_skip = n_layer - 2  # never the first nor the last
    if isinstance(count, bool) or not isinstance(count, int):
        raise SkipListError(f"the number of layers to skip must be an integer, got {count!r}")
    if count < 1:
        # gguf cannot store an empty array, and a draft that skips nothing is the model itself
        raise SkipListError(f"cannot skip {count} layers{why}: skip at least 1")
    if count > max_skip:
        raise SkipListError(f"cannot skip {count} of {n_layer} layers{why}: at most {max_skip} "
                            "(the first and the last layers are kept)")
    return count


def _as_stored(scores: npt.NDArray[np.float64] | None) -> tuple[float, ...]:
    """Scores as GGUF stores them (float32), () for none."""
    return () if scores is None else tuple(float(s) for s in scores.astype("float32"))


def _normalize_quant(quant: str) -> str:
    q = _QUANT_ALIASES.get(quant.upper(), quant.upper())
    if q not in QUANT_TYPES:
        raise ConvertError(f"unknown quantization type '{quant}'; choose from {', '.join(QUANT_TYPES)}")
    return q


def _ratio_to_count(ratio: float, n_layer: int) -> int:
    return round(ratio * n_layer)


def _say(enabled: bool, message: str) -> None:
    if enabled:
        print(f"convert: {message}", file=sys.stderr, flush=True)


def _converter_error(hf_dir: Path, log: str) -> SdfpError:
    tail = "\n".join(log.strip().splitlines()[-8:])
    if "No module named" in log:
        return RuntimeBuildError(
            f"llama.cpp's converter needs a Python package that is not installed:\n{tail}\n"
            "install sdfp-edge's convert extra (`pip install 'sdfp-edge[convert]'`)"
        )
    if "is not supported" in log:
        return UnsupportedArchitectureError(f"llama.cpp's converter does not support {hf_dir}:\n{tail}")
    return ModelFileError(f"llama.cpp's converter failed on {hf_dir}:\n{tail}")
