"""Response bodies in OpenAI's shapes, plus the server-sent-event framing.

Non-streaming responses and the last chunk of a stream carry `usage` and the extension
field `sdfp`: what speculation did for this request.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

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


def finish_reason(stats: dict[str, Any]) -> str:
    return "stop" if stats.get("finish_reason") == "stop" else "length"


def model_card(model_id: str, created: int) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": created, "owned_by": "sdfp-edge"}


# --- /v1/chat/completions ------------------------------------------------------------------
def chat_completion(rid: str, created: int, model: str, text: str, prompt_tokens: int,
                    stats: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": rid, "object": "chat.completion", "created": created, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                     "logprobs": None, "finish_reason": finish_reason(stats)}],
        "usage": usage(prompt_tokens, stats),
        "sdfp": sdfp_stats(stats),
    }


def chat_chunk(rid: str, created: int, model: str, delta: dict[str, str],
               finish: str | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        **extra,
    }


# --- /v1/completions -----------------------------------------------------------------------
def completion(rid: str, created: int, model: str, text: str, prompt_tokens: int,
               stats: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": rid, "object": "text_completion", "created": created, "model": model,
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason(stats)}],
        "usage": usage(prompt_tokens, stats),
        "sdfp": sdfp_stats(stats),
    }


def completion_chunk(rid: str, created: int, model: str, text: str,
                     finish: str | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "id": rid, "object": "text_completion", "created": created, "model": model,
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}],
        **extra,
    }
