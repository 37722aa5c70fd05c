#!/usr/bin/env bash
# Set up sdfp-edge in ./.venv: the patched llama.cpp runtime (built once, then cached),
# the package with its extras, and the default model. Safe to run again: every step is
# cached or idempotent, so a second run takes seconds.
#
#   tools/setup.sh                 runtime + convert + server + test extras + default model
#   SDFP_EXTRAS=server tools/setup.sh    a laptop: no PyTorch
#   CMAKE_ARGS="-DGGML_CUDA=on" tools/setup.sh   a CUDA build (Metal: -DGGML_METAL=on)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
EXTRAS=${SDFP_EXTRAS:-convert,server,test}
# The CPU build of PyTorch; on the project's machines this file lies on local disk.
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}

step() { printf '\n== %s\n' "$*" >&2; }

if [ ! -x .venv/bin/python ]; then
    step "virtual environment (.venv)"
    "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)

if [[ ",$EXTRAS," == *",convert,"* ]] && ! .venv/bin/python -c "import torch" 2>/dev/null; then
    step "PyTorch (CPU): $TORCH_SPEC"
    "${PIP[@]}" install "$TORCH_SPEC"
fi

step "patched llama-cpp-python (cached build)"
.venv/bin/python tools/build_runtime.py --install

step "sdfp-edge [$EXTRAS]"
"${PIP[@]}" install -e ".[$EXTRAS]"

step "default model"
.venv/bin/sdfp-edge models fetch >/dev/null
echo "setup done: .venv/bin/sdfp-edge is ready" >&2
