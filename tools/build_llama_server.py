#!/usr/bin/env python3
"""Build (or take from the cache) llama.cpp's own `llama-server`, the bench's strongest peer.

Figures: Builds the `llama-server` peers of docs/results.md and docs/batch.md; its build time is
quoted in docs/results.md ('How the bench measures'). Measures nothing itself.

It is built from the UNPATCHED llama.cpp vendored in the very llama-cpp-python sdist the
runtime pins (same sha256 check, same cache directory as tools/build_runtime.py), so the
peer runs the same kernels as sdfp-edge, with llama.cpp's own speculative decoding
(`--spec-type ngram-*`, draft models) on top. Only the `llama-server` target is built
(4-5 minutes on 2 idle cores, 12 on 2 shared ones), with llama.cpp's libraries linked in
statically, and the binary alone is cached under `<cache>/llama-server/<key>/llama-server`,
where the key covers the sdist hash, the CMake flags and the CPU; a second run takes a
second. The last line of stdout is the binary's path.

    python tools/build_llama_server.py               # build once, print the binary's path
    python tools/build_llama_server.py --print-path  # print it if built, else exit 3

GPU backends use llama.cpp's ordinary CMake flags, as for the runtime:
CMAKE_ARGS="-DGGML_CUDA=on" python tools/build_llama_server.py

Standard library only.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_runtime import (  # noqa: E402  (a sibling script, not a package)
    DEFAULT_CMAKE_ARGS as RUNTIME_CMAKE_ARGS,
    SDIST_SHA256,
    VERSION,
    cache_root,
    cpu_fingerprint,
    fetch_sdist,
)

BINARY = "llama-server.exe" if sys.platform == "win32" else "llama-server"
EXIT_NOT_BUILT = 3

# The server lives under llama.cpp's tools; everything else there stays off. No web UI
# (it would be downloaded from Hugging Face at build time) and no HTTPS: the bench talks
# to the server over loopback. Static, so the cached binary needs nothing beside it.
SERVER_CMAKE_ARGS = [
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DLLAMA_BUILD_TOOLS=ON",
    "-DLLAMA_BUILD_SERVER=ON",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
    "-DLLAMA_OPENSSL=OFF",
]
# The runtime's compiler flags (no AMX on x86), so both binaries run the same kernels.
SERVER_CMAKE_ARGS += [a for a in RUNTIME_CMAKE_ARGS if a.startswith(("-DCMAKE_C_FLAGS", "-DCMAKE_CXX_FLAGS"))]


def build_key(cmake_args: list[str]) -> str:
    """Everything that changes the binary: the sdist, the flags, the platform and the CPU."""
    h = hashlib.sha256()
    for part in (SDIST_SHA256, shlex.join(cmake_args), platform.system(), platform.machine(), cpu_fingerprint()):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def cmake_args_from_env() -> list[str]:
    return SERVER_CMAKE_ARGS + shlex.split(os.environ.get("CMAKE_ARGS", ""))


def binary_path(cmake_args: list[str] | None = None) -> Path:
    """Where the binary for these flags is (or will be) cached."""
    return cache_root() / "llama-server" / build_key(cmake_args or cmake_args_from_env()) / BINARY


def unpack_llama_cpp(sdist: Path, dest: Path) -> Path:
    """Extract only the sdist's vendored llama.cpp, unpatched, under dest."""
    prefix = f"llama_cpp_python-{VERSION}/vendor/llama.cpp/"
    with tarfile.open(sdist) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(prefix)]
        tar.extractall(dest, members=members, filter="data")
    return dest / prefix


def build(cmake_args: list[str], final: Path) -> float:
    """Configure and build the llama-server target in a scratch dir; move the binary to final.

    Returns:
        Seconds the build took.
    """
    started = time.monotonic()
    sdist = fetch_sdist(cache_root())
    final.parent.mkdir(parents=True, exist_ok=True)
    jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL") or str(os.cpu_count() or 2)
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    with tempfile.TemporaryDirectory(dir=final.parent, prefix=".build-") as tmp:
        src = unpack_llama_cpp(sdist, Path(tmp) / "src")
        out = Path(tmp) / "build"
        # the build's output goes to stderr: stdout carries only the binary's path
        subprocess.run(["cmake", "-S", str(src), "-B", str(out), *generator, *cmake_args], check=True,
                       stdout=sys.stderr)
        subprocess.run(
            ["cmake", "--build", str(out), "--target", "llama-server", "--config", "Release", "--parallel", jobs],
            check=True, stdout=sys.stderr,
        )
        (built,) = [p for p in out.rglob(BINARY) if p.is_file()]
        os.replace(built, final)  # same filesystem: the cached binary appears whole or not at all
    return time.monotonic() - started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--print-path", action="store_true",
                    help=f"print the cached binary's path; exit {EXIT_NOT_BUILT} if not built")
    ap.add_argument("--rebuild", action="store_true", help="ignore a cached binary")
    args = ap.parse_args()

    cmake_args = cmake_args_from_env()
    final = binary_path(cmake_args)
    if args.print_path:
        if not final.is_file():
            print("llama-server is not built: run `python tools/build_llama_server.py`", file=sys.stderr)
            sys.exit(EXIT_NOT_BUILT)
        print(final)
        return
    if final.is_file() and not args.rebuild:
        print(f"llama-server: cached {final}", file=sys.stderr)
    else:
        if shutil.which("cmake") is None:
            sys.exit("error: cmake is not installed; llama-server needs cmake and a C++17 compiler")
        print(f"llama-server: building from llama-cpp-python {VERSION}'s vendored llama.cpp, "
              f"CMake flags: {shlex.join(cmake_args)}", file=sys.stderr)
        seconds = build(cmake_args, final)
        print(f"llama-server: built in {seconds:.0f} s", file=sys.stderr)
    print(final)


if __name__ == "__main__":
    main()
