"""The workstation pipeline on a tiny random llama: convert, annotate, inspect, calibrate.

The tiny model is saved as an HF folder (with a byte-fallback BPE tokenizer, the kind
llama.cpp's converter reads from tokenizer.json) and converted with llama.cpp's own
converter from the patched source tree; tests that need that tree or the llama.cpp
binding skip with the reason when it is missing.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
import gguf

from sdfp_edge.convert import calibration as cal
from sdfp_edge.convert import pipeline as cv
from sdfp_edge.errors import ModelFileError, SdfpError, SkipListError
from sdfp_edge.metadata import read_skip_metadata
from tiny_models import tiny_tokenizer

N_LAYER = 4
FAST = {"n_samples": 2, "seq_len": 12, "progress": False}


def save_tiny_llama(out: Path) -> Path:
    """A tiny random llama with the tiny tokenizer, saved as an HF folder."""
    tokenizer = tiny_tokenizer()
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=N_LAYER,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
    )
    transformers.LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-hf"))


@pytest.fixture(scope="module")
def source_tree() -> Path:
    try:
        return cv.llama_cpp_source()
    except SdfpError as e:
        pytest.skip(f"no patched llama.cpp source tree for its converter: {e}")


@pytest.fixture(scope="module")
def tiny_gguf(hf_dir: Path, source_tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model converted by llama.cpp's converter, F16, no sdfp metadata."""
    return cv.convert_to_gguf(hf_dir, tmp_path_factory.mktemp("tiny-gguf"), quant="F16")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tensors(path: Path) -> dict[str, tuple[int, tuple[int, ...], bytes]]:
    reader = gguf.GGUFReader(path, "r")
    return {t.name: (int(t.tensor_type), tuple(int(x) for x in t.shape), t.data.tobytes()) for t in reader.tensors}


def fields(path: Path) -> dict[str, object]:
    reader = gguf.GGUFReader(path, "r")
    return {k: f.contents() for k, f in reader.fields.items() if not k.startswith(("sdfp.", "GGUF."))}


# --- annotate an existing GGUF ---------------------------------------------------------


def test_annotate_round_trip_keeps_tensors_and_input(hf_dir: Path, tiny_gguf: Path, tmp_path: Path) -> None:
    before = sha256(tiny_gguf)
    out = tmp_path / "annotated.gguf"
    meta = cv.convert(hf_dir, out, gguf_in=tiny_gguf, n_skip=1, seed=3, **FAST)

    assert sha256(tiny_gguf) == before
    assert read_skip_metadata(out) == meta
    assert (meta.architecture, meta.n_layer, meta.score_method) == ("llama", N_LAYER, "fit")
    assert meta.calibration == "self-generated:2x12:seed3"
    assert len(meta.layer_scores) == N_LAYER and all(s > 0 for s in meta.layer_scores)
    # the one skipped layer is the lowest-scoring of the middle layers
    middle = range(1, N_LAYER - 1)
    assert meta.skip_layers == (min(middle, key=lambda i: meta.layer_scores[i]),)
    assert tensors(out) == tensors(tiny_gguf)
    assert fields(out) == fields(tiny_gguf)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp file left


def test_annotate_again_replaces_metadata(hf_dir: Path, tiny_gguf: Path, tmp_path: Path) -> None:
    first = tmp_path / "a.gguf"
    cv.convert(hf_dir, first, gguf_in=tiny_gguf, n_skip=2, method="block_influence", **FAST)
    second = tmp_path / "b.gguf"
    meta = cv.convert(hf_dir, second, gguf_in=first, n_skip=1, method="gate_fisher", **FAST)
    assert read_skip_metadata(second) == meta
    assert meta.score_method == "gate_fisher" and len(meta.skip_layers) == 1


def test_annotate_records_sub_layer_choice_and_draft_vocab(hf_dir: Path, tiny_gguf: Path, tmp_path: Path) -> None:
    from sdfp_edge.convert.block_choice import block_costs, whole_layer_cost

    out = tmp_path / "annotated.gguf"
    meta = cv.convert(hf_dir, out, gguf_in=tiny_gguf, n_skip=1, seed=3, **FAST)
    assert read_skip_metadata(out) == meta and meta.version == 2
    assert len(meta.attn_scores) == len(meta.ffn_scores) == N_LAYER
    assert all(s > 0 for s in meta.attn_scores + meta.ffn_scores)
    # the sub-layer draft saves at least what the whole-layer list saves, never in the first or last layer
    blocks = set(meta.skip_attn) | set(meta.skip_ffn)
    assert blocks and blocks <= set(range(1, N_LAYER - 1))
    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir)
    attn_cost, ffn_cost = block_costs(model)
    saved = attn_cost[list(meta.skip_attn)].sum() + ffn_cost[list(meta.skip_ffn)].sum()
    assert saved >= whole_layer_cost(meta.skip_layers, attn_cost, ffn_cost) * (1 - 1e-6)
    # the draft vocabulary: what the model wrote in its own calibration answers
    tokenizer = transformers.AutoTokenizer.from_pretrained(hf_dir)
    seqs = cal.self_generated(model, tokenizer, n_samples=2, seq_len=12, seed=3)
    assert meta.draft_vocab == cal.generated_vocab(tokenizer, seqs, seq_len=12)
    assert meta.draft_vocab and list(meta.draft_vocab) == sorted(set(meta.draft_vocab))

    text = cv.inspect(out)
    assert f"skip attn:    {', '.join(map(str, meta.skip_attn)) or '(none)'}" in text
    assert f"draft vocab:  {len(meta.draft_vocab)} tokens" in text


def test_block_influence_has_no_sub_layer_scores(hf_dir: Path, tiny_gguf: Path, tmp_path: Path) -> None:
    meta = cv.convert(hf_dir, tmp_path / "bi.gguf", gguf_in=tiny_gguf, n_skip=1, method="block_influence", **FAST)
    assert (meta.attn_scores, meta.ffn_scores, meta.skip_attn, meta.skip_ffn) == ((), (), (), ())
    assert meta.draft_vocab  # the vocabulary does not depend on the method


def test_calibration_file_has_no_draft_vocab(hf_dir: Path, tiny_gguf: Path, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog " * 4)
    meta = cv.convert(hf_dir, tmp_path / "f.gguf", gguf_in=tiny_gguf, n_skip=1, calibration_file=corpus, **FAST)
    assert meta.draft_vocab == () and len(meta.attn_scores) == N_LAYER


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"num_hidden_layers": N_LAYER + 1}, "layers"),
        ({"vocab_size": 1000}, "vocabulary"),
        ({"model_type": "qwen2"}, "architecture|is a 'llama' model"),
    ],
)
def test_annotate_refuses_another_model(
    hf_dir: Path, tiny_gguf: Path, tmp_path: Path, change: dict, message: str
) -> None:
    other = tmp_path / "other-hf"
    other.mkdir()
    config = json.loads((hf_dir / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, **change}))
    out = tmp_path / "out.gguf"
    with pytest.raises(SkipListError, match=message):
        cv.convert(other, out, gguf_in=tiny_gguf, n_skip=1, **FAST)
    assert not out.exists()


def test_annotate_refuses_to_overwrite_input(hf_dir: Path, tiny_gguf: Path) -> None:
    before = sha256(tiny_gguf)
    with pytest.raises(ModelFileError, match="overwrite"):
        cv.convert(hf_dir, tiny_gguf, gguf_in=tiny_gguf, n_skip=1, **FAST)
    assert sha256(tiny_gguf) == before


def test_annotate_refuses_a_non_gguf(hf_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a model at all")
    with pytest.raises(ModelFileError, match="not a GGUF"):
        cv.convert(hf_dir, tmp_path / "out.gguf", gguf_in=bad, n_skip=1, **FAST)


# --- convert with llama.cpp's converter and quantizer ------------------------------------


def test_convert_quantizes_and_annotates(hf_dir: Path, source_tree: Path, tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp", reason="llama-cpp-python (the quantizer) is not installed")
    out = tmp_path / "tiny-q8.gguf"
    meta = cv.convert(hf_dir, out, quant="Q8_0", skip_ratio=0.5, **FAST)
    assert read_skip_metadata(out) == meta
    assert len(meta.skip_layers) == 2 and 0 not in meta.skip_layers and N_LAYER - 1 not in meta.skip_layers
    types = {name: t for name, (t, _, _) in tensors(out).items()}
    assert types["blk.0.attn_q.weight"] == gguf.GGMLQuantizationType.Q8_0
    assert types["blk.0.attn_norm.weight"] == gguf.GGMLQuantizationType.F32
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # temporary files removed


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"quant": "Q9_9"}, cv.ConvertError, "unknown quantization type"),
        ({"method": "magic"}, cv.ConvertError, "unknown scoring method"),
        ({"n_skip": 1, "skip_ratio": 0.2}, cv.ConvertError, "not both"),
        ({"n_skip": N_LAYER - 1}, SkipListError, "cannot skip"),
        ({"skip_ratio": 1.5}, SkipListError, "skip ratio"),
        ({"n_skip": 0}, SkipListError, "at least 1"),
        ({"skip_ratio": 0.1}, SkipListError, r"cannot skip 0 layers \(0.1 of 4\)"),
    ],
)
def test_bad_options_fail_before_any_work(hf_dir: Path, tmp_path: Path, kwargs: dict, error: type,
                                          message: str) -> None:
    with pytest.raises(error, match=message):
        cv.convert(hf_dir, tmp_path / "out.gguf", **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_not_an_hf_folder(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="no config.json"):
        cv.convert(tmp_path, tmp_path / "out.gguf")
    with pytest.raises(ModelFileError, match="no such directory"):
        cv.convert(tmp_path / "missing", tmp_path / "out.gguf")


def test_automatic_count_is_the_default_ratio() -> None:
    assert cv.choose_n_skip_auto(np.ones(30)) == 6
    assert cv.choose_n_skip_auto(np.ones(4)) == 1


def test_importing_convert_does_not_import_torch() -> None:
    code = "import sys, sdfp_edge.convert.pipeline; sys.exit(int('torch' in sys.modules or 'transformers' in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent.parent, check=False).returncode == 0


# --- inspect and plot --------------------------------------------------------------------


def test_inspect_ranks_layers_and_plot_draws(hf_dir: Path, tiny_gguf: Path, tmp_path: Path) -> None:
    out = tmp_path / "annotated.gguf"
    meta = cv.convert(hf_dir, out, gguf_in=tiny_gguf, n_skip=1, **FAST)
    text = cv.inspect(out)
    assert f"skip layers:  {meta.skip_layers[0]} (1 of {N_LAYER})" in text
    assert "score method: fit" in text and meta.calibration in text
    rows = [line.split() for line in text.splitlines() if line.strip()[:1].isdigit()]
    ranked = [int(r[1]) for r in rows]
    assert ranked == sorted(range(N_LAYER), key=lambda i: meta.layer_scores[i])
    assert [r[1] for r in rows if r[-1] == "yes"] == [str(meta.skip_layers[0])]

    png = cv.plot_scores(meta, tmp_path / "scores.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_inspect_plain_gguf(tiny_gguf: Path) -> None:
    assert "none (a plain GGUF" in cv.inspect(tiny_gguf)


# --- calibration ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_lm(hf_dir: Path) -> tuple[torch.nn.Module, transformers.PreTrainedTokenizerFast]:
    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir)
    tokenizer = transformers.AutoTokenizer.from_pretrained(hf_dir)
    tokenizer.chat_template = "{% for m in messages %}<s>{{ m['role'] }} {{ m['content'] }}\n{% endfor %}"
    return model, tokenizer


def test_held_out_prompts_are_not_calibration_prompts() -> None:
    from sdfp_edge.convert import skip_count

    assert not set(skip_count.HELD_OUT_PROMPTS) & set(cal.PROMPTS)


def test_auto_count_prefers_a_paying_count_and_breaks_ties_by_measurement() -> None:
    from sdfp_edge.convert.skip_count import CountTrial, choose_count

    def trial(n: int, predicted: float, drafting: float) -> CountTrial:
        return CountTrial(n, tuple(range(n)), 0.5, 2.0, 0.9, 0, predicted, 1.0, drafting)

    # nothing pays on a compute-bound CPU: the count closest to paying, not the first listed
    assert choose_count([trial(3, 1.0, 0.70), trial(6, 1.0, 0.75), trial(9, 1.0, 0.60)]).n_skip == 6
    assert choose_count([trial(3, 1.0, 0.70), trial(9, 1.2, 1.2)]).n_skip == 9


def test_self_generated_continues_the_rendered_prompts(tiny_lm: tuple) -> None:
    model, tokenizer = tiny_lm
    seqs = cal.self_generated(model, tokenizer, n_samples=2, seq_len=96, seed=0)
    assert len(seqs) == 2
    for i, s in enumerate(seqs):
        prompt = tokenizer(
            tokenizer.apply_chat_template([{"role": "user", "content": cal.PROMPTS[i]}], tokenize=False,
                                          add_generation_prompt=True),
            add_special_tokens=False,
        )["input_ids"]
        assert s.dtype == torch.long and s.dim() == 1
        assert len(prompt) < len(s) <= 96
        assert s[: len(prompt)].tolist() == prompt
    again = cal.self_generated(model, tokenizer, n_samples=2, seq_len=96, seed=0)
    other = cal.self_generated(model, tokenizer, n_samples=2, seq_len=96, seed=1)
    assert all(torch.equal(a, b) for a, b in zip(seqs, again))
    assert not all(torch.equal(a, b) for a, b in zip(seqs, other))


def test_generated_vocab_is_what_the_model_wrote(tiny_lm: tuple) -> None:
    model, tokenizer = tiny_lm
    seqs = cal.self_generated(model, tokenizer, n_samples=3, seq_len=128, seed=0)
    written: set[int] = set()
    for i, s in enumerate(seqs):
        prompt = tokenizer(
            tokenizer.apply_chat_template([{"role": "user", "content": cal.PROMPTS[i]}], tokenize=False,
                                          add_generation_prompt=True),
            add_special_tokens=False,
        )["input_ids"][:127]  # a long prompt is cut to leave room for one generated token
        assert len(s) > len(prompt)
        written |= set(s[len(prompt):].tolist())
    vocab = cal.generated_vocab(tokenizer, seqs, seq_len=128)
    assert vocab == tuple(sorted(written)) and len(vocab) > 3


def test_from_text_file_chunks(tiny_lm: tuple, tmp_path: Path) -> None:
    _, tokenizer = tiny_lm
    path = tmp_path / "corpus.txt"
    path.write_text("the quick brown fox jumps over the lazy dog " * 20)
    seqs = cal.from_file(path, tokenizer, n_samples=3, seq_len=16)
    assert [len(s) for s in seqs] == [16, 16, 16]
    body = tokenizer(path.read_text(), add_special_tokens=False)["input_ids"]
    assert [t for s in seqs for t in s.tolist()] == body[:48]  # this tokenizer adds no BOS
    assert cal.describe_file(path, len(seqs), 16) == "file:corpus.txt:3x16"


def test_from_jsonl_text_and_messages(tiny_lm: tuple, tmp_path: Path) -> None:
    _, tokenizer = tiny_lm
    path = tmp_path / "data.jsonl"
    chat = [{"role": "user", "content": "hi there"}, {"role": "assistant", "content": "hello"}]
    path.write_text("\n".join([json.dumps({"text": "some plain text"}), "", json.dumps({"messages": chat}),
                               json.dumps({"text": "a third one"})]))
    seqs = cal.from_file(path, tokenizer, n_samples=2, seq_len=64)
    assert len(seqs) == 2
    assert seqs[0].tolist() == tokenizer("some plain text")["input_ids"]
    rendered = tokenizer.apply_chat_template(chat, tokenize=False)
    assert seqs[1].tolist() == tokenizer(rendered, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"text": "ok"}\n{not json}\n', r"data.jsonl:2: not valid JSON"),
        ('{"prompt": "no text field"}\n', r'expected an object with "text"'),
        ("\n\n", "no calibration sequence"),
    ],
)
def test_from_file_errors(tiny_lm: tuple, tmp_path: Path, content: str, message: str) -> None:
    _, tokenizer = tiny_lm
    path = tmp_path / "data.jsonl"
    path.write_text(content)
    with pytest.raises(cal.CalibrationError, match=message):
        cal.from_file(path, tokenizer, n_samples=4, seq_len=16)
    with pytest.raises(cal.CalibrationError, match="not found"):
        cal.from_file(tmp_path / "missing.txt", tokenizer, n_samples=4, seq_len=16)


# --- real model ------------------------------------------------------------------------------


@pytest.mark.slow
def test_smollm2_end_to_end(smollm2: Path, source_tree: Path, tmp_path: Path) -> None:
    """Dequantize SmolLM2 to an HF folder, convert it, load it in the runtime, draft with the list."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    from sdfp_edge.api import Model

    model = transformers.AutoModelForCausalLM.from_pretrained(
        smollm2.parent, gguf_file=smollm2.name, dtype=torch.float32
    )
    tokenizer = transformers.AutoTokenizer.from_pretrained(smollm2.parent, gguf_file=smollm2.name)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    hf = tmp_path / "smollm2-hf"
    model.save_pretrained(hf)
    tokenizer.save_pretrained(hf)
    del model

    out = tmp_path / "smollm2-q8.gguf"
    meta = cv.convert(hf, out, quant="Q8_0", n_skip=6, n_samples=2, seq_len=64, progress=False)
    shutil.rmtree(hf)
    assert read_skip_metadata(out) == meta and meta.n_layer == 30 and len(meta.skip_layers) == 6
    with Model(out, n_ctx=512, mode="layerskip", threshold=0.0) as m:  # draft even when unsure
        assert m.skip_layers == meta.skip_layers
        done = m.generate("The capital of France is", max_tokens=24, temperature=0)
        assert done.tokens and m.last_stats["per_drafter"]["layerskip"]["drafted"] > 0
