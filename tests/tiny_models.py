"""Tiny random-weight models of many architectures, built from transformers' own configs and
converted to GGUF by llama.cpp's pinned converter, cached between test runs.

Each is a few hundred KB: 4 layers (hidden size 64, vocabulary of 286 byte-fallback tokens),
weights from a fixed seed, saved as an HF folder (what `sdfp-edge convert` reads) beside its
F32 GGUF. Nothing is downloaded. The cache key holds the spec, transformers' version and the
converter's source tree, so a change of any rebuilds. Tests skip with the reason when
transformers/torch or the converter's source tree are missing.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

N_LAYER = 4
HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Spec:
    """One architecture: transformers' config class and causal-LM class, and the config's
    arguments beyond the shared tiny sizes. `gguf_arch` is llama.cpp's name for it."""

    gguf_arch: str
    config: str
    model: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    converter_args: tuple[str, ...] = ()


COMMON: dict[str, Any] = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=N_LAYER, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=256, bos_token_id=1, eos_token_id=2,
    pad_token_id=0, tie_word_embeddings=False,
)
MOE = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=64)

SPECS: dict[str, Spec] = {
    "llama": Spec("llama", "LlamaConfig", "LlamaForCausalLM"),
    "qwen3moe": Spec("qwen3moe", "Qwen3MoeConfig", "Qwen3MoeForCausalLM", dict(head_dim=16, **MOE)),
    "gemma2": Spec("gemma2", "Gemma2Config", "Gemma2ForCausalLM", dict(head_dim=16, sliding_window=32)),
    "phi3": Spec("phi3", "Phi3Config", "Phi3ForCausalLM"),
    "smollm3": Spec("smollm3", "SmolLM3Config", "SmolLM3ForCausalLM"),
    "granite": Spec("granite", "GraniteConfig", "GraniteForCausalLM"),
    "olmo2": Spec("olmo2", "Olmo2Config", "Olmo2ForCausalLM"),
    "openai_moe": Spec("gpt-oss", "GptOssConfig", "GptOssForCausalLM",
                       dict(head_dim=16, num_local_experts=4, num_experts_per_tok=2, sliding_window=32)),
    "llama4": Spec("llama4", "Llama4TextConfig", "Llama4ForCausalLM",
                   dict(head_dim=16, num_local_experts=2, num_experts_per_tok=1, intermediate_size_mlp=128,
                        interleave_moe_layer_step=2)),
    "mistral3": Spec("mistral3", "Ministral3Config", "Ministral3ForCausalLM", dict(head_dim=16)),
    "gemma4": Spec("gemma4", "Gemma4TextConfig", "Gemma4ForCausalLM",
                   dict(head_dim=16, global_head_dim=32, sliding_window=32, vocab_size_per_layer_input=286,
                        hidden_size_per_layer_input=8)),
    # Qwen3.5's config names a multi-token-prediction layer that the causal LM does not hold
    "qwen35": Spec("qwen35", "Qwen3_5TextConfig", "Qwen3_5ForCausalLM",
                   dict(head_dim=256, linear_key_head_dim=16, linear_value_head_dim=16, linear_num_key_heads=2,
                        linear_num_value_heads=4,
                        rope_parameters=dict(rope_type="default", rope_theta=10000.0, partial_rotary_factor=0.25,
                                             mrope_section=[11, 11, 10], mrope_interleaved=True)),
                   converter_args=("--no-mtp",)),
    # an attention model whose graph builder has no layer-skip check
    "starcoder2": Spec("starcoder2", "Starcoder2Config", "Starcoder2ForCausalLM"),
    "mamba": Spec("mamba", "MambaConfig", "MambaForCausalLM",
                  dict(hidden_size=64, state_size=8, num_hidden_layers=N_LAYER)),
}


def tiny_tokenizer() -> Any:
    import transformers
    from tokenizers import Tokenizer, decoders, models, normalizers

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({f"<0x{b:02X}>": 3 + b for b in range(256)})
    vocab.update({ch: len(vocab) + i for i, ch in enumerate("▁abcdefghijklmnopqrstuvwxyz")})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def save_hf(name: str, out: Path) -> Path:
    """The tiny random model `name` (a key of SPECS) with the tiny tokenizer, as an HF folder."""
    import torch
    import transformers

    spec = SPECS[name]
    tokenizer = tiny_tokenizer()
    kwargs = {**COMMON, "vocab_size": len(tokenizer), **spec.kwargs}
    config_cls = getattr(transformers, spec.config)
    config = config_cls(**kwargs)
    torch.manual_seed(0)
    model = getattr(transformers, spec.model)(config)
    with torch.no_grad():  # random norms/biases too: a unit norm would hide a wrong mask
        for n, p in model.named_parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def cache_root() -> Path:
    from sdfp_edge.paths import cache_dir

    return cache_dir() / "tiny-models"


def key(name: str, converter_dir: Path) -> str:
    import transformers

    h = hashlib.sha256()
    spec = SPECS[name]
    for part in (json.dumps([spec.config, spec.model, spec.kwargs, spec.converter_args, COMMON], sort_keys=True, default=str),
                 transformers.__version__, str(converter_dir.resolve()),
                 (HERE / "tiny_models.py").read_text(), (HERE / "tiny_convert.py").read_text()):
        h.update(part.encode())
    return f"{name}-{h.hexdigest()[:12]}"


def build(name: str, converter_dir: Path) -> tuple[Path, Path]:
    """(HF folder, GGUF) of the tiny `name` model, built once and then taken from the cache."""
    spec = SPECS[name]
    dest = cache_root() / key(name, converter_dir)
    hf, gguf_path = dest / "hf", dest / "model.gguf"
    if gguf_path.is_file():
        return hf, gguf_path
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{name}-"))
    try:
        save_hf(name, tmp / "hf")
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
        proc = subprocess.run(
            [sys.executable, str(HERE / "tiny_convert.py"), str(converter_dir), str(tmp / "hf"),
             str(tmp / "model.gguf"), *spec.converter_args], env=env, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"converting tiny {name} failed:\n{(proc.stderr or proc.stdout)[-3000:]}")
        try:
            os.replace(tmp, dest)
        except OSError:  # another process built it first
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return hf, gguf_path
