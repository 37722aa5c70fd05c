"""sdfp-edge: self-speculative decoding on llama.cpp with layer-skip drafts from the same GGUF.

The import is light on purpose (no llama.cpp, no torch): laptops install only the runtime,
and `convert` imports PyTorch lazily.
"""

__version__ = "0.1.0"
