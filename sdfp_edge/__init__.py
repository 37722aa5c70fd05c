"""sdfp-edge: self-speculative decoding on llama.cpp with layer-skip drafts from the same GGUF.

The import is light on purpose (no llama.cpp, no torch): laptops install only the runtime,
and `convert` imports PyTorch lazily.

    convert/   the workstation half: FIT layer scores (PyTorch), skip list into the GGUF
    runtime/   the llama.cpp half: layer-skip context, speculative loop, drafters, samplers
    api.py     the Python API (`Model`), used by cli/, server/ and bench/
    metadata.py, models.py, hub.py, errors.py, paths.py   shared: sdfp.* keys, models (catalogue,
                                                          Hugging Face Hub), errors, cache paths
"""

__version__ = "0.1.0"
