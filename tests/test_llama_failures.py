"""Every way llama.cpp can fail ends in one of the project's own errors, with a sentence that helps.

Model load, context creation, decode return codes, tokenization of odd text (bytes that are
not UTF-8, lone surrogates, NULs, long input) and detokenization, on SmolLM2.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sdfp_edge.runtime import context_memory
from sdfp_edge.api import Model
from sdfp_edge.runtime.backend import LlamaBackend, encode_text
from sdfp_edge.errors import BackendError, ContextSizeError, InvalidRequestError

# SmolLM2-135M: 30 layers, 3 KV heads of 64 dims, K and V in f16
SMOLLM2_KV_BYTES_PER_TOKEN = 30 * 3 * (64 + 64) * 2


@pytest.fixture(scope="module")
def backend(smollm2: Path) -> LlamaBackend:
    with LlamaBackend(smollm2, n_ctx=256, n_threads=2) as b:
        yield b


def test_kv_estimate_is_what_llama_cpp_allocates(smollm2: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """llama.cpp's own log line for the cache it allocated, against the header estimate."""
    with LlamaBackend(smollm2, n_ctx=4096, n_threads=2, verbose=True) as b:
        size = context_memory.kv_cache_size(smollm2, b.arch, 8192)
    logged = re.search(r"llama_kv_cache: size =\s+([\d.]+) MiB \(\s*4096 cells", capfd.readouterr().err)
    assert logged, "llama.cpp no longer logs its KV cache size this way"
    assert size.bytes_per_token == SMOLLM2_KV_BYTES_PER_TOKEN
    assert size.total(4096) == float(logged.group(1)) * 2**20


def test_kv_estimate_per_layer_heads_and_explicit_head_sizes() -> None:
    kv = {"a.block_count": 3, "a.embedding_length": 640, "a.attention.head_count": 4,
          "a.attention.head_count_kv": [1, 0, 2], "a.attention.key_length": 256, "a.attention.value_length": 128}
    assert context_memory.bytes_per_token(kv, "a") == (1 + 0 + 2) * (256 + 128) * 2
    del kv["a.attention.key_length"], kv["a.attention.value_length"]  # n_embd / n_head = 160
    assert context_memory.bytes_per_token(kv, "a") == 3 * (160 + 160) * 2
    assert context_memory.bytes_per_token({"a.block_count": 3}, "a") is None


def test_context_larger_than_memory_is_refused_before_llama_cpp(smollm2: Path) -> None:
    with pytest.raises(ContextSizeError) as e:
        LlamaBackend(smollm2, n_ctx=100_000_000, n_threads=2)
    msg = str(e.value)
    assert "100,000,000 tokens" in msg and "trained with a context of 8,192 tokens" in msg
    assert "about 2.1 TiB (f16)" in msg and "of memory is available" in msg


def test_context_llama_cpp_cannot_allocate(smollm2: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the memory check out of the way (a GPU build skips it), llama.cpp's NULL context.

    A real NULL takes llama.cpp's bookkeeping for 10^8 cells (gigabytes, 20 s here) before the
    cache's allocation fails, so llama-cpp-python's wrapper raises here as it does then.
    """
    from llama_cpp import _internals

    def null_context(**kwargs: object) -> None:
        raise ValueError("Failed to create llama_context")

    monkeypatch.setattr(context_memory, "available_memory", lambda: None)
    monkeypatch.setattr(_internals, "LlamaContext", null_context)
    with pytest.raises(ContextSizeError, match="2.1 TiB .*llama.cpp could not allocate it; .* 8,192 tokens"):
        LlamaBackend(smollm2, n_ctx=100_000_000, n_threads=2)
    with pytest.raises(ContextSizeError, match="at most 2,147,483,647 positions"):
        LlamaBackend(smollm2, n_ctx=2**32 + 256, n_threads=2)  # would wrap to 256 in the C struct


@pytest.mark.parametrize("threads", [0, -1, 513])
def test_threads_outside_llama_cpp_range(smollm2: Path, threads: int) -> None:
    with pytest.raises(InvalidRequestError, match="threads must be in 1..512"):
        LlamaBackend(smollm2, n_threads=threads)


def test_bytes_that_are_not_utf8_reach_the_tokenizer_as_llama_cpp_reads_them(backend: LlamaBackend) -> None:
    """Surrogate escapes are the raw bytes; llama.cpp reads each invalid byte as U+FFFD."""
    assert encode_text("caf\udce9 \udcff\udcfe") == b"caf\xe9 \xff\xfe"
    assert backend.tokenize("caf\udce9 \udcff\udcfe") == backend.tokenize("caf\ufffd \ufffd\ufffd")
    with pytest.raises(InvalidRequestError, match=r"lone surrogate U\+D800 at character 1"):
        backend.tokenize("x\ud800y")


def test_nuls_and_long_text_tokenize(backend: LlamaBackend) -> None:
    with_nul = backend.tokenize("a\x00b", add_special=False)
    assert len(with_nul) == 3 and backend.detokenize(with_nul) == "a\x00b"
    assert len(backend.tokenize("word " * 200_000, add_special=False)) >= 200_000  # more than n_ctx_train


def test_pieces_longer_than_32_bytes_are_whole(backend: LlamaBackend) -> None:
    """SmolLM2 has a token for a newline and 80 spaces; llama-cpp-python's detokenize drops it."""
    text = "x\n" + " " * 80 + "y"
    tokens = backend.tokenize(text, add_special=False)
    assert any(len(backend.token_bytes(t)) > 32 for t in tokens)
    assert backend.detokenize(tokens) == text
    with pytest.raises(InvalidRequestError, match="outside the vocabulary"):
        backend.token_bytes(backend.n_vocab)


def test_decode_failure_is_a_backend_error_and_forgets_the_cache(backend: LlamaBackend) -> None:
    backend.reset()
    backend.decode(backend.tokenize("Hello"), logits="last")
    with pytest.raises(BackendError, match=r"invalid batch \(llama_decode returned -1\)"):
        backend.decode([backend.n_vocab + 5])
    assert backend.n_past == 0  # the cache no longer matches what Python knew: dropped


def test_prompt_token_ids_outside_the_vocabulary(smollm2: Path) -> None:
    with Model(smollm2, n_ctx=256, n_threads=2) as m:
        for bad in ([1, -1], [m.backend.n_vocab], [1, 2.5]):
            with pytest.raises(InvalidRequestError, match="token ids must be integers"):
                m.stream_tokens(bad, max_tokens=2, temperature=0)


def test_server_refuses_lone_surrogates_and_reports_llama_cpp_failures_as_500() -> None:
    pytest.importorskip("fastapi")
    from sdfp_edge.server.app import parse_json
    from sdfp_edge.server.errors import APIError, from_user_error
    from sdfp_edge.server.schemas import ChatCompletionRequest

    body = b'{"messages": [{"role": "user", "content": "caf\\udce9"}]}'
    with pytest.raises(APIError) as e:
        parse_json(body, ChatCompletionRequest)
    assert e.value.status == 400 and e.value.param == "messages.0.content"
    assert "lone UTF-16 surrogate \\udce9 at character 3" in e.value.message
    pair = b'{"messages": [{"role": "user", "content": "\\ud83d\\ude00"}]}'  # a valid pair: one emoji
    assert parse_json(pair, ChatCompletionRequest).plain_messages()[0]["content"] == "\U0001F600"
    with pytest.raises(APIError, match="nested too deeply"):
        parse_json(b"[" * 100_000, ChatCompletionRequest)
    err = from_user_error(BackendError("llama.cpp could not decode"))
    assert err.status == 500 and err.type == "server_error"


def test_chat_template_that_refuses_the_messages(smollm2: Path) -> None:
    """Gemma's template raises "Conversation roles must alternate..." for some message orders."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    with Model(smollm2, n_ctx=256, n_threads=2) as m:
        m._formatter = Jinja2ChatFormatter(
            template="{% if messages[0].role != 'user' %}{{ raise_exception('roles must alternate') }}{% endif %}"
                     "{{ messages[0].content.upper() }}{{ messages[0].nope.deeper }}",
            eos_token="", bos_token="")
        with pytest.raises(InvalidRequestError, match="chat template refused these messages: roles must alternate"):
            m.render_chat([{"role": "assistant", "content": "hi"}])
        with pytest.raises(InvalidRequestError, match="chat template refused these messages: .*has no attribute .nope."):
            m.render_chat([{"role": "user", "content": "hi"}])
