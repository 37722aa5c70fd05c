"""What desktop and web apps send, through the official `openai` client, streaming and not:
logprobs, penalties, structured output (response_format) and tool calls.

One server process for the module (SmolLM2-135M, n_ctx 1024, 2 threads, no API key).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from server_process import Server, running_server  # noqa: E402

pytestmark = pytest.mark.slow

CHAT = [{"role": "user", "content": "Name three colours."}]


@pytest.fixture(scope="module")
def server(smollm2: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(smollm2, [], tmp_path_factory.mktemp("serve-features") / "serve.log") as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server: Server) -> Any:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0, timeout=300)


def chat_stream(client: Any, **kwargs: Any) -> tuple[str, list[Any], str | None]:
    """Content, logprob entries and finish reason of a streamed chat completion."""
    text, entries, finish = [], [], None
    for chunk in client.chat.completions.create(stream=True, **kwargs):
        for c in chunk.choices:
            text.append(c.delta.content or "")
            if c.logprobs is not None and c.logprobs.content:
                entries += c.logprobs.content
            finish = c.finish_reason or finish
    return "".join(text), entries, finish


# --- logprobs ---------------------------------------------------------------------------------
def test_chat_logprobs(client: Any) -> None:
    kwargs = dict(model="any", messages=CHAT, max_tokens=12, temperature=0, logprobs=True, top_logprobs=3)
    r = client.chat.completions.create(**kwargs)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens == 12
    assert "".join(e.token for e in content) == r.choices[0].message.content
    for e in content:
        assert e.logprob <= 0 and bytes(e.bytes).decode("utf-8", errors="replace") == e.token
        tops = [t.logprob for t in e.top_logprobs]
        assert len(tops) == 3 and tops == sorted(tops, reverse=True)
        assert e.top_logprobs[0].token == e.token and e.logprob == pytest.approx(tops[0])  # greedy: the argmax
        assert sum(math.exp(t) for t in tops) <= 1 + 1e-6
    text, streamed, finish = chat_stream(client, **kwargs)
    assert text == r.choices[0].message.content and finish == r.choices[0].finish_reason
    assert [e.token for e in streamed] == [e.token for e in content]
    assert [e.logprob for e in streamed] == pytest.approx([e.logprob for e in content], abs=0.05)
    plain = client.chat.completions.create(**kwargs, extra_body={"sdfp_mode": "off"})
    assert [e.logprob for e in plain.choices[0].logprobs.content] == pytest.approx(
        [e.logprob for e in content], abs=0.05)
    none = client.chat.completions.create(model="any", messages=CHAT, max_tokens=4, temperature=0)
    assert none.choices[0].logprobs is None
    zero = client.chat.completions.create(model="any", messages=CHAT, max_tokens=4, temperature=0, logprobs=True)
    assert len(zero.choices[0].logprobs.content) == 4
    assert all(e.top_logprobs == [] for e in zero.choices[0].logprobs.content)


def test_completion_logprobs(client: Any) -> None:
    kwargs = dict(model="any", prompt="The capital of France is", max_tokens=6, temperature=0, logprobs=2)
    r = client.completions.create(**kwargs)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 6
    assert "".join(lp.tokens) == r.choices[0].text
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(6)]
    assert all(len(top) <= 2 and max(top.values()) == pytest.approx(v) for top, v in zip(lp.top_logprobs,
                                                                                         lp.token_logprobs))
    tokens, offsets = [], []
    for chunk in client.completions.create(stream=True, **kwargs):
        for c in chunk.choices:
            if c.logprobs is not None:
                tokens += c.logprobs.tokens
                offsets += c.logprobs.text_offset
    assert tokens == lp.tokens and offsets == lp.text_offset


@pytest.mark.parametrize("body, param", [
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ({"logprobs": True, "top_logprobs": -1}, "top_logprobs"),
    ({"top_logprobs": 2}, "top_logprobs"),
    ({"logprobs": 3}, "logprobs"),
])
def test_bad_chat_logprobs_are_400(server: Server, body: dict[str, Any], param: str) -> None:
    r = httpx.post(f"{server.url}/v1/chat/completions", json={"messages": CHAT, **body}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


def test_bad_completion_logprobs_are_400(server: Server) -> None:
    for value in (-1, 21, True, "2"):
        r = httpx.post(f"{server.url}/v1/completions", json={"prompt": "x", "logprobs": value}, timeout=30)
        assert r.status_code == 400 and r.json()["error"]["param"] == "logprobs", r.text


# --- penalties --------------------------------------------------------------------------------
def test_penalties(client: Any) -> None:
    msgs = [{"role": "user", "content": "Write the word 'red' ten times."}]
    kwargs = dict(model="any", messages=msgs, max_tokens=24, temperature=0)
    plain = client.chat.completions.create(**kwargs).choices[0].message.content
    pen = dict(presence_penalty=1.0, frequency_penalty=0.8, extra_body={"repeat_penalty": 1.2})
    r = client.chat.completions.create(**kwargs, **pen)
    assert r.choices[0].message.content != plain
    text, _, _ = chat_stream(client, **kwargs, **pen)
    assert text == r.choices[0].message.content
    off = client.chat.completions.create(**kwargs, presence_penalty=1.0, frequency_penalty=0.8,
                                         extra_body={"repeat_penalty": 1.2, "sdfp_mode": "off"})
    assert off.choices[0].message.content == r.choices[0].message.content  # plain decoding, same penalties
    c = client.completions.create(model="any", prompt="1, 1, 1, 1, 1,", max_tokens=8, temperature=0,
                                  frequency_penalty=1.5)
    assert c.choices[0].text != client.completions.create(model="any", prompt="1, 1, 1, 1, 1,", max_tokens=8,
                                                          temperature=0).choices[0].text


@pytest.mark.parametrize("body, param", [
    ({"presence_penalty": 2.5}, "presence_penalty"), ({"frequency_penalty": -3}, "frequency_penalty"),
    ({"repeat_penalty": 0}, "repeat_penalty"), ({"repeat_last_n": -2}, "repeat_last_n"),
    ({"presence_penalty": "1"}, "presence_penalty"),
])
def test_bad_penalties_are_400(server: Server, body: dict[str, Any], param: str) -> None:
    r = httpx.post(f"{server.url}/v1/chat/completions", json={"messages": CHAT, **body}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


# --- structured output ------------------------------------------------------------------------
EXTRACT = [{"role": "user", "content": "Extract the person as JSON with keys name, city, job: "
                                      "'Alice Smith is an engineer who lives in Paris.'"}]
PERSON = {"type": "object", "additionalProperties": False, "required": ["name", "city", "job"],
          "properties": {"name": {"type": "string", "maxLength": 40}, "city": {"type": "string", "maxLength": 40},
                         "job": {"type": "string", "maxLength": 40}}}


def test_json_object(client: Any) -> None:
    kwargs = dict(model="any", messages=[{"role": "user", "content": "Give me a JSON object with a cat's name and age."}], max_tokens=200,
                  temperature=0, response_format={"type": "json_object"})
    r = client.chat.completions.create(**kwargs)
    assert r.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(r.choices[0].message.content), dict)
    text, _, finish = chat_stream(client, **kwargs)
    assert text == r.choices[0].message.content and finish == "stop"


def test_json_schema_greedy_sampled_and_streamed(client: Any) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
    r = client.chat.completions.create(model="any", messages=EXTRACT, max_tokens=100, temperature=0,
                                       response_format=fmt)
    person = json.loads(r.choices[0].message.content)
    jsonschema.validate(person, PERSON)
    assert person["name"] == "Alice Smith"
    # speculation still runs on it: the values are copied from the prompt
    plain = client.chat.completions.create(model="any", messages=EXTRACT, max_tokens=100, temperature=0,
                                           response_format=fmt, extra_body={"sdfp_mode": "off"})
    assert plain.choices[0].message.content == r.choices[0].message.content
    for seed in range(3):
        text, _, finish = chat_stream(client, model="any", messages=EXTRACT, max_tokens=100, temperature=1.0,
                                      seed=seed, response_format=fmt)
        assert finish == "stop"
        jsonschema.validate(json.loads(text), PERSON)


def test_the_clients_parse_helper(client: Any) -> None:
    """client.chat.completions.parse sends a strict json_schema made from a pydantic model."""
    from pydantic import BaseModel

    class Person(BaseModel):
        name: str
        city: str
        job: str

    r = client.chat.completions.parse(model="any", messages=EXTRACT, max_tokens=100, temperature=0,
                                      response_format=Person)
    assert isinstance(r.choices[0].message.parsed, Person)
    assert r.choices[0].message.parsed.city == "Paris"


@pytest.mark.parametrize("fmt, param", [
    ({"type": "xml"}, "response_format.type"),
    ({"type": "json_schema"}, "response_format"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "no-such-type"}}},
     "response_format.json_schema.schema"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "integer", "minimum": 1}}},
     "response_format.json_schema.schema"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "required": "name"}}},
     "response_format.json_schema.schema"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": ["not", "an", "object"]}},
     "response_format.json_schema.schema"),
])
def test_bad_response_formats_are_400(server: Server, client: Any, fmt: Any, param: str) -> None:
    r = httpx.post(f"{server.url}/v1/chat/completions", json={"messages": CHAT, "response_format": fmt}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="any", messages=CHAT, response_format=fmt, stream=True)


def test_a_gbnf_grammar(server: Server, client: Any) -> None:
    """llama.cpp's server's `grammar` field, on both endpoints."""
    yes_no = 'root ::= ("yes" | "no") "."'
    r = client.chat.completions.create(model="any", messages=[{"role": "user", "content": "Is the sky blue?"}],
                                       max_tokens=8, temperature=0, extra_body={"grammar": yes_no})
    assert r.choices[0].message.content in ("yes.", "no.")
    c = client.completions.create(model="any", prompt="Is water wet?", max_tokens=8, temperature=0,
                                  extra_body={"grammar": yes_no})
    assert c.choices[0].text in ("yes.", "no.")
    r = httpx.post(f"{server.url}/v1/completions", json={"prompt": "x", "grammar": "root ::= ("}, timeout=30)
    assert r.status_code == 400 and "grammar" in r.json()["error"]["message"], r.text


# --- tools (SmolLM2's template has none; tests/test_server_tools.py uses Qwen2.5's) -------------
def test_tools_on_a_template_without_tool_support_are_a_clear_400(client: Any) -> None:
    weather = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model="any", messages=CHAT, tools=[weather], stream=stream)
        assert "no tool support" in e.value.message
    # tool_choice "none" renders no tools, so the model can still answer
    r = client.chat.completions.create(model="any", messages=CHAT, tools=[weather], tool_choice="none",
                                       max_tokens=4, temperature=0)
    assert r.choices[0].message.content and r.choices[0].message.tool_calls is None
