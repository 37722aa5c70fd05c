#!/usr/bin/env python3
"""Build (or take from the cache) the patched llama-cpp-python wheel, and install it.

Figures: The cold build times in README.md's Quick start and docs/testing.md are of this tool
(`tools/build_runtime.py --install`). Measures nothing itself.

The runtime is llama-cpp-python 0.3.36 from its PyPI sdist, checked by sha256, with
tools/llama-layer-skip.patch applied to its vendored llama.cpp. Building takes 6-9
minutes on 2 cores, so the wheel is cached under a key made of the sdist hash, the
patch hash, the CMake flags and the Python/platform tags: a second setup takes seconds.

GPU backends use llama.cpp's ordinary CMake flags, passed through unchanged:

    CMAKE_ARGS="-DGGML_CUDA=on"  python tools/build_runtime.py --install
    CMAKE_ARGS="-DGGML_METAL=on" python tools/build_runtime.py --install

The patched source tree is kept beside the wheel: `sdfp-edge convert` runs llama.cpp's
own converter (convert_hf_to_gguf.py) from it.

Standard library only: this runs before anything else is installed.
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
import sysconfig
import tarfile
import tempfile
from pathlib import Path

PACKAGE = "llama-cpp-python"
VERSION = "0.3.36"
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
PATCH = Path(__file__).resolve().parent / "llama-layer-skip.patch"

# What the project does not use: multimodal (mtmd/llava), llama.cpp's tools, server,
# examples and tests. Leaving them out roughly halves the build.
DEFAULT_CMAKE_ARGS = [
    "-DLLAVA_BUILD=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_TOOLS=OFF",
    "-DLLAMA_BUILD_SERVER=OFF",
]

# -march=native turns on AMX on Xeon (Sapphire Rapids and later), and ggml's AMX kernels
# crash (SIGSEGV in ggml_backend_amx_mul_mat) on the project's machines. AMX exists only
# on servers, not on the laptops and consumer GPUs this project targets: leave it out.
if platform.machine().lower() in ("x86_64", "amd64") and sys.platform != "win32":
    _NO_AMX = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
    DEFAULT_CMAKE_ARGS += [f"-DCMAKE_C_FLAGS={_NO_AMX}", f"-DCMAKE_CXX_FLAGS={_NO_AMX}"]


def cache_root() -> Path:
    """Same rule as sdfp_edge.paths.cache_dir (duplicated: this runs before install)."""
    if os.environ.get("SDFP_EDGE_CACHE"):
        return Path(os.environ["SDFP_EDGE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "sdfp-edge"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cpu_fingerprint() -> str:
    """The CPU's feature flags: a -march=native build must not be reused on another CPU."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return " ".join(sorted(line.split(":", 1)[1].split()))
    except OSError:
        pass
    return platform.processor()


def build_key(cmake_args: list[str]) -> str:
    """Everything that changes the binary: sources, flags, interpreter, platform and CPU."""
    h = hashlib.sha256()
    for part in (
        SDIST_SHA256,
        sha256_file(PATCH),
        shlex.join(cmake_args),
        sys.implementation.cache_tag or "",
        sysconfig.get_platform(),
        platform.machine(),
        cpu_fingerprint(),
    ):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def fetch_sdist(cache: Path) -> Path:
    """Download the sdist once with pip, and refuse it unless its sha256 is the pinned one."""
    dest = cache / "sdist"
    dest.mkdir(parents=True, exist_ok=True)
    name = f"llama_cpp_python-{VERSION}.tar.gz"
    path = dest / name
    if not path.exists():
        with tempfile.TemporaryDirectory(dir=dest) as tmp:
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                 f"{PACKAGE}=={VERSION}", "-d", tmp],
                check=True,
            )
            os.replace(Path(tmp) / name, path)
    digest = sha256_file(path)
    if digest != SDIST_SHA256:
        path.unlink()
        sys.exit(f"error: {name} has sha256 {digest}, expected {SDIST_SHA256}; deleted it.")
    return path


def prepare_source(sdist: Path, dest: Path) -> Path:
    """Unpack the sdist and apply the layer-skip patch; dest is created atomically."""
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=".src-"))
    try:
        with tarfile.open(sdist) as tar:
            tar.extractall(tmp, filter="data")
        root = tmp / f"llama_cpp_python-{VERSION}"
        subprocess.run(
            ["git", "apply", "-p1", "--directory=vendor/llama.cpp", str(PATCH)],
            cwd=root, check=True,
        )
        os.replace(root, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def build_wheel(src: Path, out_dir: Path, cmake_args: list[str]) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["CMAKE_ARGS"] = shlex.join(cmake_args)
    env.setdefault("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 2))
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".build-") as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", tmp, str(src)],
            env=env, check=True,
        )
        (wheel,) = Path(tmp).glob("llama_cpp_python-*.whl")
        final = out_dir / wheel.name
        os.replace(wheel, final)
    return final


def install_target(wheel: Path, key: str, target: Path, rebuild: bool) -> None:
    """pip install --target into a fresh folder beside `target`, then swap it in whole."""
    marker = target / ".sdfp-edge-runtime"
    if marker.exists() and marker.read_text() == wheel.name + key and not rebuild:
        print(f"runtime: already installed in {target}")
        return
    target = target.resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    try:
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--no-deps", "--no-compile", "--target", str(tmp), str(wheel)],
            check=True,
        )
        (tmp / ".sdfp-edge-runtime").write_text(wheel.name + key)
        old = None
        if target.exists():
            old = target.parent / f".{target.name}-old-{os.getpid()}"
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        print(f"runtime: installed {wheel.name} into {target}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--install", action="store_true", help="pip install the wheel into this Python")
    ap.add_argument("--target", type=Path, metavar="DIR",
                    help="install the wheel into folder DIR instead (a second runtime beside this Python's, "
                         "e.g. a Vulkan build: put DIR first on PYTHONPATH, or SDFP_EDGE_RUNTIME_DIR for the tests)")
    ap.add_argument("--rebuild", action="store_true", help="ignore a cached wheel")
    ap.add_argument("--print-source", action="store_true", help="print the patched source dir and exit")
    args = ap.parse_args()

    cmake_args = DEFAULT_CMAKE_ARGS + shlex.split(os.environ.get("CMAKE_ARGS", ""))
    cache = cache_root()
    key = build_key(cmake_args)
    sdist_key = f"{SDIST_SHA256[:12]}-{sha256_file(PATCH)[:12]}"
    wheel_dir = cache / "runtime" / key
    src = cache / "src" / sdist_key

    if args.print_source:
        prepare_source(fetch_sdist(cache), src)
        print(src)
        return

    wheels = sorted(wheel_dir.glob("llama_cpp_python-*.whl"))
    if wheels and not args.rebuild:
        wheel = wheels[-1]
        print(f"runtime: cached wheel {wheel}")
    else:
        prepare_source(fetch_sdist(cache), src)
        print(f"runtime: building {PACKAGE} {VERSION} + layer-skip patch, CMAKE_ARGS={shlex.join(cmake_args)}")
        wheel = build_wheel(src, wheel_dir, cmake_args)
        print(f"runtime: built {wheel}")
    if args.target:
        install_target(wheel, key, args.target, args.rebuild)
    if args.install:
        marker = Path(sys.prefix) / ".sdfp-edge-runtime"  # which cached wheel this env holds
        if marker.exists() and marker.read_text() == wheel.name + key and not args.rebuild:
            print("runtime: already installed in this environment")
            return
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--no-deps", "--force-reinstall", str(wheel)],
            check=True,
        )
        marker.write_text(wheel.name + key)


if __name__ == "__main__":
    main()
