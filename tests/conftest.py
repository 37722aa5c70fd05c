"""Shared fixtures: real models from the offline catalogue (fetched once into the cache)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

# The suite runs several model processes at once on two cores (a test and the server it
# drives); OpenMP's default spinning then starves the busy one. This is the tests' own
# setting, for this process and the ones it starts; the product sets nothing.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# Backend selection (docs/gpu-backends.md): SDFP_EDGE_RUNTIME_DIR names a folder holding
# another build of the patched runtime (`tools/build_runtime.py --target DIR`, e.g. the
# Vulkan one), used instead of the one installed in this Python, by these tests and the
# processes they start; SDFP_EDGE_TEST_NGL is the number of layers the tests offload to
# that backend (unset: llama.cpp's default of all layers where a GPU backend is built).
RUNTIME_DIR = os.environ.get("SDFP_EDGE_RUNTIME_DIR")
if RUNTIME_DIR:
    import sys

    sys.path.insert(0, RUNTIME_DIR)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [RUNTIME_DIR, os.environ.get("PYTHONPATH")]))

import pytest

from sdfp_edge import models


@pytest.fixture(scope="session", autouse=True)
def _own_cost_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The suite keeps the controller's cost files (runtime/cost_store.py) in a directory of its
    own, never the user's cache (issue 36: `make test` left files there that later runs read);
    models, data and the runtime build are still found in the cache (SDFP_EDGE_CACHE is left
    alone). A user's SDFP_EDGE_NO_STORED_COSTS would turn off what the tests check: unset here."""
    saved = {k: os.environ.get(k) for k in ("SDFP_EDGE_COST_DIR", "SDFP_EDGE_NO_STORED_COSTS")}
    path = tmp_path_factory.mktemp("costs")
    os.environ["SDFP_EDGE_COST_DIR"] = str(path)
    os.environ.pop("SDFP_EDGE_NO_STORED_COSTS", None)
    try:
        yield path
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _fetch(name: str) -> Path:
    # SDFP_EDGE_TEST_MODEL_DIR/<name>.gguf stands in for a catalogue model where nothing can be
    # downloaded (tools/gpu_check.py on a lent GPU machine sends a re-quantized SmolLM2)
    override = Path(os.environ.get("SDFP_EDGE_TEST_MODEL_DIR") or "/nonexistent") / f"{name}.gguf"
    if override.is_file():
        return override
    return models.fetch(name, log=lambda m: None)


@pytest.fixture(scope="session")
def smollm2() -> Path:
    return _fetch("smollm2-135m")


@pytest.fixture(scope="session")
def qwen05() -> Path:
    return _fetch("qwen2.5-coder-0.5b")


@pytest.fixture(scope="session")
def gemma3() -> Path:
    return _fetch("gemma3-270m")


@pytest.fixture(scope="session")
def smollm2_plain(smollm2: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2 without any sdfp.* metadata (the fetched file may carry a committed skip list)."""
    import gguf
    from gguf.scripts.gguf_new_metadata import copy_with_new_metadata

    reader = gguf.GGUFReader(smollm2, "r")
    sdfp_keys = [k for k in reader.fields if k.startswith("sdfp.")]
    if not sdfp_keys:
        return smollm2
    out = tmp_path_factory.mktemp("plain") / "smollm2-plain.gguf"
    writer = gguf.GGUFWriter(out, arch="llama")
    copy_with_new_metadata(reader, writer, {}, sdfp_keys)
    return out


@pytest.fixture(scope="session")
def foreign_arch_gguf(smollm2: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2's weights relabelled as EXAONE (llama's tensors and hyperparameters): an
    architecture llama.cpp loads and runs, whose graph builder does not honour layer masks
    (so llama_set_layer_skip must refuse it)."""
    import gguf
    from gguf.scripts.gguf_new_metadata import MetadataDetails, copy_with_new_metadata

    reader = gguf.GGUFReader(smollm2, "r")
    out = tmp_path_factory.mktemp("foreign") / "smollm2-as-exaone.gguf"
    writer = gguf.GGUFWriter(out, arch="exaone")
    renamed = {}
    for name, field in reader.fields.items():
        if name.startswith("llama."):
            t = field.types[0]
            sub = field.types[-1] if t == gguf.GGUFValueType.ARRAY else None
            renamed["exaone." + name[len("llama."):]] = MetadataDetails(t, field.contents(), sub_type=sub)
    drop = [n for n in reader.fields if n.startswith(("llama.", "sdfp."))]
    copy_with_new_metadata(reader, writer, renamed, drop)
    return out


@pytest.fixture(scope="session")
def qwen3_gguf(smollm2: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2's weights relabelled as a Qwen3 model (plus unit q/k norms, which Qwen3 has):
    no Qwen3 GGUF ships offline, and this is enough to run llama.cpp's qwen3 graph."""
    import gguf
    import numpy as np
    from gguf.scripts.gguf_new_metadata import MetadataDetails

    reader = gguf.GGUFReader(smollm2, "r")
    out = tmp_path_factory.mktemp("qwen3") / "smollm2-as-qwen3.gguf"
    writer = gguf.GGUFWriter(out, arch="qwen3")
    head_dim = int(reader.get_field("llama.rope.dimension_count").contents())
    n_layer = int(reader.get_field("llama.block_count").contents())
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture" or name.startswith("sdfp."):
            continue
        t = field.types[0]
        sub = field.types[-1] if t == gguf.GGUFValueType.ARRAY else None
        key = "qwen3." + name[len("llama."):] if name.startswith("llama.") else name
        d = MetadataDetails(t, field.contents(), sub_type=sub)
        writer.add_key_value(key, d.value, d.type, sub_type=d.sub_type)
    norms = {f"blk.{i}.attn_{qk}_norm.weight": np.ones(head_dim, dtype=np.float32)
             for i in range(n_layer) for qk in ("q", "k")}
    for t in reader.tensors:
        writer.add_tensor_info(t.name, t.data.shape, t.data.dtype, t.data.nbytes, t.tensor_type)
    for name, arr in norms.items():
        writer.add_tensor_info(name, arr.shape, arr.dtype, arr.nbytes, gguf.GGMLQuantizationType.F32)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for t in reader.tensors:
        writer.write_tensor_data(t.data)
    for arr in norms.values():
        writer.write_tensor_data(arr)
    writer.close()
    return out
