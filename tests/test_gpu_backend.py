"""That a run of the tests against another runtime build (SDFP_EDGE_RUNTIME_DIR, e.g. the
Vulkan one on Mesa's lavapipe; docs/gpu-backends.md) really ran on it: the runtime loaded
is that build's, and the layers it was asked to offload went to its GPU device.

Without SDFP_EDGE_RUNTIME_DIR these tests are skipped: the CPU runtime offloads nothing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sdfp_edge.runtime import layer_skip
from sdfp_edge.runtime.backend import LlamaBackend
from skip_helpers import offload_layers

RUNTIME_DIR = os.environ.get("SDFP_EDGE_RUNTIME_DIR")
pytestmark = pytest.mark.skipif(not RUNTIME_DIR, reason="SDFP_EDGE_RUNTIME_DIR is not set: the installed runtime is tested")


def test_the_runtime_under_test_is_the_selected_patched_gpu_build() -> None:
    import llama_cpp

    assert Path(llama_cpp.__file__).resolve().is_relative_to(Path(RUNTIME_DIR).resolve()), llama_cpp.__file__
    assert llama_cpp.llama_supports_gpu_offload()
    layer_skip.bind()  # the patched library: raises RuntimeBuildError on a stock build


def test_the_layers_asked_for_are_offloaded(smollm2: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """All layers, or (SDFP_EDGE_TEST_NGL) part of them, so the scheduler splits each graph
    between the GPU backend and the CPU."""
    capfd.readouterr()
    b = LlamaBackend(smollm2, n_ctx=256, n_threads=2, n_gpu_layers=offload_layers(), verbose=True)
    try:
        n_out = b.n_layer + 1  # llama.cpp counts the output layer too
        ngl = offload_layers()
        want = n_out if ngl is None or ngl < 0 else min(ngl, n_out)
        err = capfd.readouterr().err
        assert f"offloaded {want}/{n_out} layers to GPU" in err, err[-2000:]
        assert "using device" in err
    finally:
        b.close()
