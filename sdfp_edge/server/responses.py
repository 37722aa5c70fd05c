"""Response bodies in OpenAI's shapes, plus the server-sent-event framing.

Non-streaming responses and the last chunk of a stream carry `usage` and the extension
field `sdfp`: what speculation did for this request. Log-probabilities travel as a list of
chat-style entries (`logprob_entries`, made on the worker, which owns the tokenizer) and are
reshaped here for /v1/completions' older format.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from sdfp_edge.runtime.logits_processors import TokenLogprob

SSE_DONE = "data: [DONE]\n\n"


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


def sse(obj: dict[str, Any]) -> str:
    """One server-sent event: `data: {...}` and a blank line."""
    return f"data: {json.dumps(obj, ensure_ascii=False, separators=(',', ':'))}\n\n"


def usage(prompt_tokens: int, stats: dict[str, Any]) -> dict[str, int]:
    completion = int(stats.get("tokens", 0))
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
            "total_tokens": prompt_tokens + completion}


def sdfp_stats(stats: dict[str, Any]) -> dict[str, Any]:
    """The extension field: speculative statistics of one request."""
    keys = ("mode", "acceptance_rate", "tokens_per_verify", "tokens_per_second", "drafted", "accepted",
            "reused_prompt_tokens")
    return {k: stats.get(k) for k in keys}


def finish_reason(stats: dict[str, Any], *, tool_calls: int = 0) -> str:
    if stats.get("finish_reason") != "stop":
        return "length"
    return "tool_calls" if tool_calls else "stop"


def logprob_entries(lps: Sequence[TokenLogprob], token_bytes: Callable[[int], bytes]) -> list[dict[str, Any]]:
    """OpenAI chat `logprobs.content` entries: token text, its UTF-8 bytes, logprob, alternatives."""
    def entry(token: int, logprob: float) -> dict[str, Any]:
        raw = token_bytes(token)
        return {"token": raw.decode("utf-8", errors="replace"), "logprob": logprob, "bytes": list(raw)}

    return [{**entry(lp.token, lp.logprob), "top_logprobs": [entry(t, v) for t, v in lp.top]} for lp in lps]


def chat_logprobs(entries: list[dict[str, Any]] | None) -> dict[str, Any] | None:
    return None if entries is None else {"content": entries, "refusal": None}


def completion_logprobs(entries: list[dict[str, Any]] | None, offset: int = 0) -> dict[str, Any] | None:
    """The older /v1/completions shape; `offset`: characters of output before these tokens."""
    if entries is None:
        return None
    starts = []
    for e in entries:
        starts.append(offset)
        offset += len(e["token"])
    return {"tokens": [e["token"] for e in entries], "token_logprobs": [e["logprob"] for e in entries],
            "top_logprobs": [{t["token"]: t["logprob"] for t in e["top_logprobs"]} for e in entries],
            "text_offset": starts}


def model_card(model_id: str, created: int) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": created, "owned_by": "sdfp-edge"}


# --- /v1/chat/completions ------------------------------------------------------------------
def chat_completion(rid: str, created: int, model: str, text: str | None, prompt_tokens: int,
                    stats: dict[str, Any], logprobs: list[dict[str, Any]] | None = None,
                    tool_calls: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {
        "id": rid, "object": "chat.completion", "created": created, "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": chat_logprobs(logprobs),
                     "finish_reason": finish_reason(stats, tool_calls=len(tool_calls or []))}],
        "usage": usage(prompt_tokens, stats),
        "sdfp": sdfp_stats(stats),
    }


def chat_chunk(rid: str, created: int, model: str, delta: dict[str, str],
               finish: str | None = None, logprobs: list[dict[str, Any]] | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": chat_logprobs(logprobs), "finish_reason": finish}],
        **extra,
    }


# --- /v1/completions -----------------------------------------------------------------------
def completion(rid: str, created: int, model: str, text: str, prompt_tokens: int,
               stats: dict[str, Any], logprobs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "id": rid, "object": "text_completion", "created": created, "model": model,
        "choices": [{"index": 0, "text": text, "logprobs": completion_logprobs(logprobs),
                     "finish_reason": finish_reason(stats)}],
        "usage": usage(prompt_tokens, stats),
        "sdfp": sdfp_stats(stats),
    }


def completion_chunk(rid: str, created: int, model: str, text: str, finish: str | None = None,
                     logprobs: list[dict[str, Any]] | None = None, offset: int = 0, **extra: Any) -> dict[str, Any]:
    return {
        "id": rid, "object": "text_completion", "created": created, "model": model,
        "choices": [{"index": 0, "text": text, "logprobs": completion_logprobs(logprobs, offset),
                     "finish_reason": finish}],
        **extra,
    }
