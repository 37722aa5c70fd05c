"""Errors users can act on.

Every error a user can cause (a bad file, a bad option, a stock runtime) is an
`SdfpError` with a message that says what is wrong and how to fix it. The CLI prints
the message without a traceback; the server turns it into an OpenAI-style 400 (500 for a
`BackendError`, which is llama.cpp failing on input it should have taken).
"""

from __future__ import annotations


class SdfpError(Exception):
    """Base of all user-facing errors."""


class ModelFileError(SdfpError):
    """The model file is missing, not a GGUF, corrupt or truncated."""


class SkipListError(SdfpError, ValueError):
    """A skip list (from metadata or the command line) that the model cannot run."""


class UnsupportedArchitectureError(SdfpError):
    """The model's architecture does not honour layer masks in the patched llama.cpp."""


class RuntimeBuildError(SdfpError):
    """llama-cpp-python is missing or is a stock build without llama_set_layer_skip."""


class ModelNotFoundError(SdfpError):
    """A model name that the manifest does not know, or a model not fetched yet."""


class ContextOverflowError(SdfpError, ValueError):
    """A prompt that does not fit in the context window."""


class InvalidRequestError(SdfpError, ValueError):
    """Bad generation parameters (max_tokens, temperature, top_p, messages...)."""


class ContextSizeError(SdfpError, ValueError):
    """A context size llama.cpp cannot create, or whose KV cache does not fit in memory."""


class BackendError(SdfpError):
    """llama.cpp failed on valid input (decode, tokenize, KV cache bookkeeping): says where."""


class HubConnectionError(SdfpError):
    """The Hugging Face Hub could not be reached, or a download broke off (a rerun resumes it)."""
