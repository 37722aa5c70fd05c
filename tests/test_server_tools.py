"""Tool calls through the chat template, with the official `openai` client on Qwen2.5-Coder-0.5B
(whose template has tools); the parsing of calls out of streamed text, unit by unit.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from server_process import Server, running_server  # noqa: E402

from sdfp_edge.server.tools import ToolCallSplitter, split_all  # noqa: E402

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                   "additionalProperties": False}}}
TIME = {"type": "function", "function": {"name": "get_time", "description": "The time now in a time zone",
                                         "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}}}}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
NAMES = ["get_weather", "get_time"]
TAGGED = ('Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
          '<tool_call>\n{"name": "get_time", "arguments": {"zone": "CET"}}\n</tool_call>')


# --- parsing, without a model -------------------------------------------------------------------
def stream_parts(text: str, step: int) -> tuple[str, list[dict[str, Any]]]:
    s = ToolCallSplitter(NAMES)
    parts = [p for i in range(0, len(text), step) for p in s.feed(text[i : i + step])] + s.close()
    return "".join(p.text for p in parts if p.call is None), [p.call for p in parts if p.call is not None]


@pytest.mark.parametrize("step", [1, 2, 3, 7, 1000])
def test_calls_are_split_from_text_however_it_streams(step: int) -> None:
    content, calls = stream_parts(TAGGED, step)
    assert content == "Let me check.\n"
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] == [
        ("get_weather", {"city": "Paris"}), ("get_time", {"zone": "CET"})]
    assert all(c["type"] == "function" and c["id"].startswith("call_") for c in calls)
    for bare in ('  {"name": "get_weather", "arguments": {"city": "Oslo"}}\n',
                 '```json\n{"name": "get_weather",\n "arguments": {"city": "Oslo"}}\n```'):
        content, calls = stream_parts(bare, step)
        assert content == "" and [c["function"] for c in calls] == [
            {"name": "get_weather", "arguments": '{"city": "Oslo"}'}]
    for text in ('{"a": 1}', "```python\nprint(1)\n```", "Paris is sunny. <tool", '<tool_call>{"name": "rm_rf", "arguments": {}}</tool_call>',
                 "<tool_call>not json</tool_call> done", "<tool_call>{\"name\": \"get_time\""):
        assert stream_parts(text, step) == (text, []), text  # not a call of a defined tool: text as generated


def test_whole_replies() -> None:
    content, calls = split_all(TAGGED, NAMES)
    assert content == "Let me check." and len(calls) == 2
    assert split_all("Just text.", NAMES) == ("Just text.", [])
    content, calls = split_all('<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>', NAMES)
    assert content is None and json.loads(calls[0]["function"]["arguments"]) == {}


# --- the template, in process ---------------------------------------------------------------------
def test_tool_messages_are_rendered_by_the_template(qwen05: Path) -> None:
    from sdfp_edge.api import Model

    with Model(qwen05, n_ctx=512, n_threads=2, mode="off") as m:
        history = ASK + [
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": '{"sky": "sunny", "temp_c": 18}'}]
        from sdfp_edge.server.schemas import ChatMessage
        from sdfp_edge.server.tools import template_message

        text = m.render_chat([ChatMessage.model_validate(x).plain() for x in history], tools=[WEATHER])
        assert json.dumps(WEATHER) in text  # the definitions
        assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in text
        assert '<tool_response>\n{"sky": "sunny", "temp_c": 18}\n</tool_response>' in text
        assert template_message(history[1])["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"}


# --- the server ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(qwen05: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(qwen05, ["-c", "2048"], tmp_path_factory.mktemp("serve-tools") / "serve.log") as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server: Server) -> Any:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0, timeout=600)


def streamed(client: Any, **kwargs: Any) -> tuple[str, dict[int, dict[str, Any]], str | None]:
    """Content, tool calls (accumulated by index, as clients do) and finish reason of a stream."""
    content, calls, finish = "", {}, None
    for chunk in client.chat.completions.create(stream=True, **kwargs):
        for c in chunk.choices:
            content += c.delta.content or ""
            for tc in c.delta.tool_calls or []:
                call = calls.setdefault(tc.index, {"id": "", "name": "", "arguments": ""})
                call["id"] += tc.id or ""
                call["name"] += tc.function.name or ""
                call["arguments"] += tc.function.arguments or ""
            finish = c.finish_reason or finish
    return content, calls, finish


@pytest.mark.slow
def test_a_tool_call_and_its_result(client: Any) -> None:
    kwargs = dict(model="any", messages=ASK, tools=[WEATHER, TIME], max_tokens=60, temperature=0)
    r = client.chat.completions.create(**kwargs)
    msg = r.choices[0].message
    assert r.choices[0].finish_reason == "tool_calls" and msg.content is None, msg
    (call,) = msg.tool_calls
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    content, calls, finish = streamed(client, **kwargs)
    assert finish == "tool_calls" and content == ""
    assert [(c["name"], json.loads(c["arguments"])) for c in calls.values()] == [("get_weather", {"city": "Paris"})]
    # the result goes back as a tool message; the template renders it and the model answers
    follow = ASK + [msg.model_dump(exclude_none=True),
                    {"role": "tool", "tool_call_id": call.id, "content": '{"sky": "sunny", "temp_c": 18}'}]
    r2 = client.chat.completions.create(model="any", messages=follow, tools=[WEATHER, TIME], max_tokens=40,
                                        temperature=0)
    assert r2.usage.prompt_tokens > r.usage.prompt_tokens + 20
    assert r2.choices[0].finish_reason in ("stop", "tool_calls", "length")


@pytest.mark.slow
def test_tool_choice(client: Any) -> None:
    chat = [{"role": "user", "content": "Hello! How are you?"}]
    forced = dict(type="function", function=dict(name="get_time"))
    for choice, name in (("required", None), (forced, "get_time")):
        r = client.chat.completions.create(model="any", messages=chat, tools=[WEATHER, TIME], tool_choice=choice,
                                           max_tokens=60, temperature=0)
        assert r.choices[0].finish_reason == "tool_calls", r.choices[0].message
        for call in r.choices[0].message.tool_calls:
            assert call.function.name in (name or "get_weather", "get_time")
            assert isinstance(json.loads(call.function.arguments), dict)
        _, calls, finish = streamed(client, model="any", messages=chat, tools=[WEATHER, TIME], tool_choice=choice,
                                    max_tokens=60, temperature=1.0, seed=5)
        assert finish == "tool_calls" and calls and all(isinstance(json.loads(c["arguments"]), dict)
                                                        for c in calls.values())
    r = client.chat.completions.create(model="any", messages=ASK, tools=[WEATHER], tool_choice="none",
                                       max_tokens=20, temperature=0)
    assert r.choices[0].message.tool_calls is None and r.choices[0].message.content
    assert r.usage.prompt_tokens < 100  # "none": the definitions are not even rendered


@pytest.mark.slow
@pytest.mark.parametrize("body, param", [
    ({"tools": [{"type": "function", "function": {"name": "has space"}}]}, "tools.0.function.name"),
    ({"tools": [{"type": "function", "function": {"name": "x", "parameters": {"type": "objekt"}}}]},
     "tools.0.function.parameters"),
    ({"tools": [{"type": "code_interpreter"}]}, "tools.0.type"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "get_time"}}}, "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": [WEATHER], "tool_choice": "sometimes"}, "tool_choice"),
    ({"tools": [WEATHER], "tool_choice": "required", "response_format": {"type": "json_object"}}, "tool_choice"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"n": {"type": "integer", "minimum": 1}}}}}], "tool_choice": "required"},
     "tool_choice"),
])
def test_bad_tool_requests_are_400(server: Server, body: dict[str, Any], param: str) -> None:
    r = httpx.post(f"{server.url}/v1/chat/completions", json={"messages": ASK, **body}, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
