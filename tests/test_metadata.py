"""The fast GGUF metadata reader agrees with gguf's own, and fails only with ModelFileError."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sdfp_edge.errors import ModelFileError, SdfpError, SkipListError
from sdfp_edge.metadata import (VOCABULARY_KEYS, SkipMetadata, layer_parameters, read_header, read_kv,
                                read_model_info, read_skip_metadata, write_skip_metadata)


def test_read_kv_matches_gguf_reader(smollm2_plain: Path) -> None:
    import gguf

    reader = gguf.GGUFReader(smollm2_plain, "r")
    kv = read_kv(smollm2_plain)
    fields = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    assert kv.keys() == fields.keys()
    for k, v in fields.items():
        if isinstance(v, float):
            assert kv[k] == pytest.approx(v)
        else:
            assert kv[k] == v, k


def test_read_header_gives_gguf_readers_shapes_in_one_pass(smollm2_plain: Path) -> None:
    """The tensor shapes that decide libgomp's spin (backend.spin_bound), read with the metadata."""
    import gguf

    reader = gguf.GGUFReader(smollm2_plain, "r")
    kv, shapes = read_header(smollm2_plain)
    every = read_kv(smollm2_plain)
    assert "tokenizer.ggml.tokens" in every and "tokenizer.ggml.merges" in every  # left to llama.cpp
    assert kv == {k: v for k, v in every.items() if k not in VOCABULARY_KEYS}
    assert read_model_info(smollm2_plain) == ("llama", 30)
    assert shapes == {t.name: tuple(int(d) for d in t.shape) for t in reader.tensors}
    blocks = [t for t in reader.tensors if t.name.startswith("blk.")]
    assert len({t.name.split(".")[1] for t in blocks}) == kv["llama.block_count"] == 30
    assert layer_parameters(shapes) == sum(int(t.n_elements) for t in blocks) / 30
    assert 3.4e6 < layer_parameters(shapes) < 3.7e6  # d = 576, ffn 1536, 3 KV heads: about 3.5M a layer
    assert layer_parameters({"token_embd.weight": (576, 49152), "blk.x.y": (4,)}) == 0.0  # no numbered block


def test_skip_metadata_round_trip(smollm2_plain: Path, tmp_path: Path) -> None:
    meta = SkipMetadata("llama", 30, (3, 7, 11), tuple(float(i) for i in range(30)), "fit", "self:8x128")
    out = write_skip_metadata(smollm2_plain, tmp_path / "a.gguf", meta)
    assert read_skip_metadata(out) == meta
    assert read_skip_metadata(smollm2_plain) is None


def test_sub_layer_fields_round_trip(smollm2_plain: Path, tmp_path: Path) -> None:
    meta = SkipMetadata(
        "llama", 30, (3, 7, 11), tuple(float(i) for i in range(30)), "fit", "self:8x128",
        attn_scores=tuple(0.5 * i for i in range(30)), ffn_scores=tuple(0.25 * i for i in range(30)),
        skip_attn=(2, 3, 9), skip_ffn=(3, 28), draft_vocab=(0, 5, 17, 49151),
    )
    out = write_skip_metadata(smollm2_plain, tmp_path / "a.gguf", meta)
    got = read_skip_metadata(out)
    assert got == meta and got.version == 2
    kv = read_kv(out, {"sdfp.skip_attn", "sdfp.skip_ffn", "sdfp.draft_vocab", "sdfp.attn_scores"})
    assert kv["sdfp.skip_ffn"] == [3, 28] and kv["sdfp.draft_vocab"] == [0, 5, 17, 49151]
    # empty sub-layer lists are left out of the file and read back as empty
    whole = SkipMetadata("llama", 30, (3,), attn_scores=meta.attn_scores, ffn_scores=meta.ffn_scores)
    out2 = write_skip_metadata(out, tmp_path / "b.gguf", whole)  # replaces every earlier sdfp.* key
    assert read_skip_metadata(out2) == whole
    assert "sdfp.skip_attn" not in read_kv(out2) and "sdfp.draft_vocab" not in read_kv(out2)


def test_version_1_file_still_reads(smollm2_plain: Path, tmp_path: Path) -> None:
    """A file written before the sub-layer keys existed: exactly the version-1 keys."""
    import gguf
    from gguf.scripts.gguf_new_metadata import MetadataDetails, copy_with_new_metadata

    T = gguf.GGUFValueType
    v1 = {
        "sdfp.version": MetadataDetails(T.UINT32, 1),
        "sdfp.architecture": MetadataDetails(T.STRING, "llama"),
        "sdfp.n_layer": MetadataDetails(T.UINT32, 30),
        "sdfp.skip_layers": MetadataDetails(T.ARRAY, [23, 25, 26], sub_type=T.INT32),
        "sdfp.layer_scores": MetadataDetails(T.ARRAY, [1.0] * 30, sub_type=T.FLOAT32),
        "sdfp.score_method": MetadataDetails(T.STRING, "fit"),
        "sdfp.calibration": MetadataDetails(T.STRING, "self-generated:8x128:seed0"),
    }
    out = tmp_path / "v1.gguf"
    reader = gguf.GGUFReader(smollm2_plain, "r")
    copy_with_new_metadata(reader, gguf.GGUFWriter(out, arch="llama"), v1, [])
    meta = read_skip_metadata(out)
    assert meta == SkipMetadata("llama", 30, (23, 25, 26), (1.0,) * 30, "fit", "self-generated:8x128:seed0", version=1)
    assert (meta.attn_scores, meta.ffn_scores, meta.skip_attn, meta.skip_ffn, meta.draft_vocab) == ((),) * 5
    meta.check(architecture="llama", n_layer=30)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"attn_scores": (1.0,) * 5}, "sdfp.attn_scores has 5 entries for 6 layers"),
        ({"ffn_scores": (1.0,) * 7}, "sdfp.ffn_scores has 7 entries"),
        ({"skip_attn": (6,)}, "sdfp.skip_attn: layer 6 is out of range"),
        ({"skip_ffn": (5,)}, "sdfp.skip_ffn: layer 5 is the last layer"),
        ({"skip_ffn": (2, 2)}, "sdfp.skip_ffn: layer 2 appears twice"),
        ({"skip_attn": (-1,)}, "out of range"),
        ({"draft_vocab": (3, -1)}, "invalid token ids"),
        ({"draft_vocab": (3, 3)}, "sorted and list each token id once"),
        ({"draft_vocab": (5, 3)}, "sorted"),
    ],
)
def test_check_refuses_bad_sub_layer_fields(fields: dict, message: str) -> None:
    SkipMetadata("llama", 6, (2,), skip_attn=(0, 1, 4), skip_ffn=(2,), draft_vocab=(0, 9)).check(n_layer=6)
    with pytest.raises(SkipListError, match=message):
        SkipMetadata("llama", 6, (2,), **fields).check(n_layer=6)


@pytest.fixture(scope="module")
def header(smollm2_plain: Path) -> bytes:
    with open(smollm2_plain, "rb") as f:
        return f.read(4096)


FUZZ_COUNT = {"n": 0}


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(0, 4096), flips=st.lists(st.tuples(st.integers(0, 4095), st.integers(0, 255)), max_size=8))
def test_fuzzed_headers_fail_cleanly(header: bytes, tmp_path_factory, cut: int, flips) -> None:
    FUZZ_COUNT["n"] += 1
    read_or_fail_cleanly(read_kv, fuzzed(header, cut, flips, tmp_path_factory))


def fuzzed(data: bytes, cut: int, flips: list[tuple[int, int]], tmp_path_factory) -> Path:
    """A file of data's first `cut` bytes with some of them changed."""
    out = bytearray(data[:cut])
    for pos, val in flips:
        if pos < len(out):
            out[pos] = val
    p = tmp_path_factory.mktemp("fuzz") / "f.gguf"
    p.write_bytes(bytes(out))
    return p


def read_or_fail_cleanly(read, p: Path):
    """read(p), or None where it raised ModelFileError: any other error type is a bug."""
    try:
        return read(p)
    except ModelFileError:
        return None
    except SdfpError as e:  # pragma: no cover - any other user error type is a bug here
        pytest.fail(f"unexpected error type {type(e).__name__}: {e}")


@pytest.fixture(scope="module")
def small_gguf(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A whole GGUF of a few hundred bytes, so that cuts and flips reach its tensor infos."""
    import gguf
    import numpy as np

    path = tmp_path_factory.mktemp("small") / "s.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(2)
    for name, shape in (("token_embd.weight", (8, 4)), ("blk.0.attn_q.weight", (4, 4)),
                        ("blk.1.attn_q.weight", (4, 4))):
        w.add_tensor(name, np.zeros(shape, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path.read_bytes()


def test_small_gguf_reads(small_gguf: bytes, tmp_path: Path) -> None:
    p = tmp_path / "s.gguf"
    p.write_bytes(small_gguf)
    kv, shapes = read_header(p)
    assert kv["llama.block_count"] == 2 and shapes["blk.1.attn_q.weight"] == (4, 4)
    assert layer_parameters(shapes) == 16.0


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(0, 1024), flips=st.lists(st.tuples(st.integers(0, 1023), st.integers(0, 255)), max_size=8))
def test_fuzzed_tensor_infos_fail_cleanly(small_gguf: bytes, tmp_path_factory, cut: int, flips) -> None:
    FUZZ_COUNT["tensors"] = FUZZ_COUNT.get("tensors", 0) + 1
    got = read_or_fail_cleanly(read_header, fuzzed(small_gguf, cut, flips, tmp_path_factory))
    if got is not None:
        assert layer_parameters(got[1]) >= 0.0  # whatever was read: a count, no exception


def test_fuzz_ran() -> None:
    assert FUZZ_COUNT["n"] >= 400 and FUZZ_COUNT["tensors"] >= 300
