"""Fuzzing the server's request parsing: any body gives a request or an OpenAI-style 400."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("fastapi")
from sdfp_edge.server.app import parse_json  # noqa: E402
from sdfp_edge.server.errors import APIError  # noqa: E402
from sdfp_edge.server.schemas import ChatCompletionRequest, CompletionRequest  # noqa: E402

FIELDS = ["model", "messages", "prompt", "max_tokens", "temperature", "top_p", "top_k", "min_p", "seed",
          "stop", "stream", "n", "stream_options", "sdfp_mode", "logprobs", "role", "content", "tools",
          "top_logprobs", "presence_penalty", "repeat_last_n", "response_format", "type", "json_schema", "schema",
          "grammar", "tool_choice", "function", "parameters", "tool_calls", "tool_call_id"]
scalars = st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True) | st.text(max_size=20)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8),
                                                              inner, max_size=5),
    max_leaves=20,
)
bodies = st.dictionaries(st.sampled_from(FIELDS), values, max_size=8) | values
COUNT = {"tried": 0, "valid": 0}


@settings(max_examples=1500, deadline=None)
@given(body=bodies, schema=st.sampled_from([ChatCompletionRequest, CompletionRequest]),
       garble=st.integers(0, 12))
def test_any_body_parses_or_is_a_clear_400(body, schema, garble) -> None:
    raw = json.dumps(body).encode()
    if garble:  # sometimes not even JSON
        raw = raw[:-garble] if garble < len(raw) else b"\xff" + raw
    COUNT["tried"] += 1
    try:
        req = parse_json(raw, schema)
    except APIError as e:
        assert e.status == 400
        err = e.body()["error"]
        assert isinstance(err["message"], str) and err["message"]
        assert err["type"] == "invalid_request_error"
        return
    COUNT["valid"] += 1
    assert req.n == 1 and (req.max_tokens is None or req.max_tokens >= 1)
    assert 0 <= req.temperature <= 2 and 0 < req.top_p <= 1


def test_fuzzing_ran() -> None:
    assert COUNT["tried"] >= 1500
