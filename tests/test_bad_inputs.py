"""Bad input gets one clear line (no traceback), exit code 2, and changes no file."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sdfp_edge.metadata import SkipMetadata, write_skip_metadata

CLI = str(Path(sys.executable).parent / "sdfp-edge")


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, *args], capture_output=True, text=True, input=stdin, timeout=300)


def digest(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def assert_clean_error(r: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    for n in needles:
        assert n in r.stderr, (n, r.stderr)


GEN = ("generate", "-p", "Hello", "-n", "4", "-t", "2")


def test_missing_file_and_directory(tmp_path: Path) -> None:
    assert_clean_error(run(*GEN, "-m", str(tmp_path / "nope.gguf")), "no such file")
    assert_clean_error(run(*GEN, "-m", str(tmp_path) + "/"), "not a file")


def test_empty_and_foreign_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    assert_clean_error(run(*GEN, "-m", str(empty)), "empty or truncated")
    foreign = tmp_path / "weights.gguf"
    foreign.write_bytes(b"PK\x03\x04" + b"\0" * 100)
    assert_clean_error(run(*GEN, "-m", str(foreign)), "not a GGUF file")
    assert foreign.read_bytes() == b"PK\x03\x04" + b"\0" * 100


@pytest.mark.parametrize("keep", [64, 2_000_000])
def test_truncated_gguf(smollm2_plain: Path, tmp_path: Path, keep: int) -> None:
    """Cut in the header, or in the tensor data."""
    cut = tmp_path / "cut.gguf"
    with open(smollm2_plain, "rb") as f:
        cut.write_bytes(f.read(keep))
    before = digest(cut)
    r = run(*GEN, "-m", str(cut))
    assert_clean_error(r, str(cut))
    assert "corrupt or truncated" in r.stderr or "could not load" in r.stderr
    assert digest(cut) == before


def annotated(src: Path, dst: Path, **kw) -> Path:
    meta = dict(architecture="llama", n_layer=30, skip_layers=(4, 9), score_method="test")
    meta.update(kw)
    # written through the gguf writer directly, bypassing write_skip_metadata's own checks
    import gguf
    from gguf.scripts.gguf_new_metadata import MetadataDetails, copy_with_new_metadata

    T = gguf.GGUFValueType
    reader = gguf.GGUFReader(src, "r")
    writer = gguf.GGUFWriter(dst, arch="llama")
    copy_with_new_metadata(reader, writer, {
        "sdfp.version": MetadataDetails(T.UINT32, 1),
        "sdfp.architecture": MetadataDetails(T.STRING, meta["architecture"]),
        "sdfp.n_layer": MetadataDetails(T.UINT32, meta["n_layer"]),
        "sdfp.skip_layers": MetadataDetails(T.ARRAY, list(meta["skip_layers"]), sub_type=T.INT32),
        "sdfp.score_method": MetadataDetails(T.STRING, meta["score_method"]),
    }, [])
    return dst


@pytest.mark.parametrize("kw, needle", [
    ({"n_layer": 28}, "made for 28 layers"),
    ({"architecture": "qwen2"}, "made for architecture 'qwen2'"),
    ({"skip_layers": (4, 29)}, "last layer"),
    ({"skip_layers": (4, 30)}, "out of range"),
    ({"skip_layers": (4, 4)}, "appears twice"),
])
def test_metadata_that_does_not_fit_the_model(smollm2_plain: Path, tmp_path: Path, kw: dict, needle: str) -> None:
    bad = annotated(smollm2_plain, tmp_path / "bad.gguf", **kw)
    assert_clean_error(run(*GEN, "-m", str(bad)), needle)


@pytest.mark.parametrize("value, needle", [
    ("4,29", "last layer"), ("4,31", "out of range"), ("4,4", "appears twice"), ("a,b", "comma-separated"),
    (":\r", "got ':\\r'"),  # found by test_cli_fuzz: a raw CR split the one-line error in two
])
def test_bad_skip_layers_option(smollm2_plain: Path, value: str, needle: str) -> None:
    assert_clean_error(run(*GEN, "-m", str(smollm2_plain), "--skip-layers", value), needle)


def test_no_metadata_works_and_says_so_once(smollm2_plain: Path) -> None:
    r = run(*GEN, "-m", str(smollm2_plain), "--json")
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("no sdfp.* skip list") == 1
    r = run(*GEN, "-m", str(smollm2_plain), "--mode", "layerskip")
    assert_clean_error(r, "mode 'layerskip' is not available", "no skip list")


def test_unsupported_architecture(foreign_arch_gguf: Path) -> None:
    r = run(*GEN, "-m", str(foreign_arch_gguf), "--skip-layers", "3,5")
    assert_clean_error(r, "does not support layer skipping")
    r = run(*GEN, "-m", str(foreign_arch_gguf), "--json")  # still works without layer skipping
    assert r.returncode == 0, r.stderr


def test_prompt_longer_than_the_context(smollm2_plain: Path) -> None:
    r = run("generate", "-m", str(smollm2_plain), "-c", "64", "-n", "4", "-t", "2", stdin="word " * 200)
    assert_clean_error(r, "the prompt has", "context holds 64")


@pytest.mark.parametrize("args, needle", [
    (("-n", "0"), "max_tokens"), (("-n", "-5"), "max_tokens"), (("-n", str(10**9)), "max_tokens"),
    (("--temperature", "-1"), "temperature"), (("--temperature", "nan"), "temperature"),
    (("--top-p", "0"), "top_p"), (("--top-p", "1.5"), "top_p"), (("--top-p", "nan"), "top_p"),
    (("--min-p", "2"), "min_p"), (("--top-k", "-1"), "top_k"),
])
def test_bad_sampling_values(smollm2_plain: Path, args: tuple[str, ...], needle: str) -> None:
    r = run("generate", "-m", str(smollm2_plain), "-p", "Hi", "-t", "2", *args)
    assert_clean_error(r, needle)


def test_write_skip_metadata_refuses_in_place_and_mismatch(smollm2_plain: Path, tmp_path: Path) -> None:
    from sdfp_edge.errors import ModelFileError, SkipListError

    before = digest(smollm2_plain)
    meta = SkipMetadata(architecture="llama", n_layer=30, skip_layers=(3,))
    with pytest.raises(ModelFileError, match="overwrite the input"):
        write_skip_metadata(smollm2_plain, smollm2_plain, meta)
    with pytest.raises(SkipListError, match="made for 24 layers"):
        write_skip_metadata(smollm2_plain, tmp_path / "x.gguf", SkipMetadata("llama", 24, (3,)))
    assert not (tmp_path / "x.gguf").exists()
    assert not list(tmp_path.glob(".*.tmp"))
    assert digest(smollm2_plain) == before


@pytest.mark.parametrize("command", [
    ("generate", "-p", "hi", "-n", "4"), ("chat",), ("serve", "--port", "0"),
    ("bench", "--quick", "--systems", "off", "--no-progress"),
])
def test_context_too_large_for_memory(smollm2: Path, tmp_path: Path, command: tuple[str, ...]) -> None:
    extra = ("--out", str(tmp_path)) if command[0] == "bench" else ()
    r = run(*command, *extra, "-m", str(smollm2), "-t", "2", "-c", "100000000", stdin="")
    assert_clean_error(r, "context of 100,000,000 tokens", "KV cache would need about 2.1 TiB (f16)",
                       "trained with a context of 8,192 tokens", "--ctx-size")
    lines = r.stderr.strip().splitlines()  # bench says what it will run first
    assert lines[-1].startswith("error: ") and sum(line.startswith("error:") for line in lines) == 1


NOT_UTF8 = b"caf\xe9 \xff\xfe"


def run_bytes(*args: bytes | str, stdin: bytes | None = None) -> tuple[int, str, str]:
    """Arguments and stdin as raw bytes, in a UTF-8 locale whose stdio is strict (a desktop's)."""
    env = {**os.environ, "LC_ALL": "C.UTF-8", "PYTHONIOENCODING": "utf-8:strict"}
    r = subprocess.run([CLI, *args], capture_output=True, input=stdin, timeout=300, env=env)
    return r.returncode, r.stdout.decode("utf-8", "replace"), r.stderr.decode("utf-8", "replace")


def test_prompt_that_is_not_utf8_goes_to_the_tokenizer_as_given(smollm2: Path) -> None:
    """As llama.cpp's CLI: the bytes reach llama_tokenize, which reads each invalid one as U+FFFD."""
    gen = ("generate", "-m", str(smollm2), "-n", "8", "-t", "2", "--mode", "off", "--json", "--temperature", "0")
    code, out, err = run_bytes(*gen, "-p", "caf\ufffd \ufffd\ufffd")
    assert code == 0, err
    same_tokens = json.loads(out)
    for args, stdin in (((b"-p", NOT_UTF8), None), ((), NOT_UTF8)):
        code, out, err = run_bytes(*gen, *args, stdin=stdin)
        assert code == 0 and "Traceback" not in err, err
        assert "the prompt is not valid UTF-8 (bytes e9 ff fe)" in err
        assert json.loads(out)["tokens"] == same_tokens["tokens"]


def test_chat_line_that_is_not_utf8(smollm2: Path) -> None:
    code, out, err = run_bytes("chat", "-m", str(smollm2), "-n", "4", "-t", "2",
                               stdin=NOT_UTF8 + b"\n/mode \xff\n/exit\n")
    assert code == 0 and "Traceback" not in err, err
    assert "this message is not valid UTF-8 (bytes e9 ff fe)" in err
    assert "unknown mode '?'" in out  # echoed with the byte replaced, not a UnicodeEncodeError
