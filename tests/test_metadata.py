"""The fast GGUF metadata reader agrees with gguf's own, and fails only with ModelFileError."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sdfp_edge.errors import ModelFileError, SdfpError
from sdfp_edge.metadata import SkipMetadata, read_kv, read_skip_metadata, write_skip_metadata


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


def test_skip_metadata_round_trip(smollm2_plain: Path, tmp_path: Path) -> None:
    meta = SkipMetadata("llama", 30, (3, 7, 11), tuple(float(i) for i in range(30)), "fit", "self:8x128")
    out = write_skip_metadata(smollm2_plain, tmp_path / "a.gguf", meta)
    assert read_skip_metadata(out) == meta
    assert read_skip_metadata(smollm2_plain) is None


@pytest.fixture(scope="module")
def header(smollm2_plain: Path) -> bytes:
    with open(smollm2_plain, "rb") as f:
        return f.read(4096)


FUZZ_COUNT = {"n": 0}


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(0, 4096), flips=st.lists(st.tuples(st.integers(0, 4095), st.integers(0, 255)), max_size=8))
def test_fuzzed_headers_fail_cleanly(header: bytes, tmp_path_factory, cut: int, flips) -> None:
    data = bytearray(header[:cut])
    for pos, val in flips:
        if pos < len(data):
            data[pos] = val
    p = tmp_path_factory.mktemp("fuzz") / "f.gguf"
    p.write_bytes(bytes(data))
    FUZZ_COUNT["n"] += 1
    try:
        read_kv(p)
    except ModelFileError:
        pass
    except SdfpError as e:  # pragma: no cover - any other user error type is a bug here
        pytest.fail(f"unexpected error type {type(e).__name__}: {e}")


def test_fuzz_ran() -> None:
    assert FUZZ_COUNT["n"] >= 400
