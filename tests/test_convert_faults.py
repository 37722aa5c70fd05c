"""Faults while writing a GGUF: a killed convert leaves a complete output or none; a full disk
is a clear error."""

from __future__ import annotations

import hashlib
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
from test_convert import save_tiny_llama  # noqa: E402

from sdfp_edge.convert import pipeline as cv  # noqa: E402
from sdfp_edge.errors import SdfpError  # noqa: E402
from sdfp_edge.metadata import read_skip_metadata  # noqa: E402

CLI = str(Path(sys.executable).parent / "sdfp-edge")


def digest(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    try:
        cv.llama_cpp_source()
    except SdfpError as e:
        pytest.skip(f"no patched llama.cpp source tree for its converter: {e}")
    hf = save_tiny_llama(tmp_path_factory.mktemp("hf"))
    gguf_in = cv.convert_to_gguf(hf, tmp_path_factory.mktemp("gguf"), quant="F16")
    return hf, gguf_in


@pytest.mark.slow
def test_convert_killed_at_any_point_leaves_no_output(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    hf, gguf_in = tiny
    before = digest(gguf_in)
    cmd = [CLI, "convert", str(hf), "--gguf", str(gguf_in), "--skip", "1", "--samples", "2", "--seq-len", "12"]
    t0 = time.monotonic()
    full = subprocess.run(cmd + ["-o", str(tmp_path / "full.gguf")], capture_output=True, text=True, timeout=600)
    duration = time.monotonic() - t0
    assert full.returncode == 0, full.stderr
    assert read_skip_metadata(tmp_path / "full.gguf") is not None
    killed = 0
    for frac in (0.1, 0.3, 0.5, 0.7, 0.85, 0.95):
        out = tmp_path / f"out-{frac}.gguf"
        proc = subprocess.Popen(cmd + ["-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(duration * frac)
        proc.send_signal(signal.SIGKILL)
        rc = proc.wait(timeout=60)
        if out.exists():  # finished (or killed after the rename): then it is complete
            assert out.stat().st_size == (tmp_path / "full.gguf").stat().st_size
            assert read_skip_metadata(out) == read_skip_metadata(tmp_path / "full.gguf")
        else:
            assert rc == -signal.SIGKILL
            killed += 1
        assert digest(gguf_in) == before
    assert killed >= 3, "too few kills landed before the output was written"
    # what a kill can leave is hidden temporary files, never a file named like the output
    assert {p.name for p in tmp_path.iterdir() if not p.name.startswith(".")} <= {
        "full.gguf", *(f"out-{f}.gguf" for f in (0.1, 0.3, 0.5, 0.7, 0.85, 0.95))}


def test_full_disk_is_a_clear_error(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    """RLIMIT_FSIZE makes writes fail like a full disk (EFBIG instead of ENOSPC)."""
    _, gguf_in = tiny
    out = tmp_path / "out.gguf"
    code = f"""
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
from sdfp_edge.errors import SdfpError
from sdfp_edge.metadata import SkipMetadata, read_model_info, write_skip_metadata
arch, n = read_model_info({str(gguf_in)!r})
try:
    write_skip_metadata({str(gguf_in)!r}, {str(out)!r}, SkipMetadata(arch, n, (1,)))
except SdfpError as e:
    print(e)
    sys.exit(2)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "could not write" in r.stdout and "Traceback" not in r.stderr
    assert not out.exists()
    assert not list(tmp_path.glob(".*.tmp")), "the temporary file was left behind"
