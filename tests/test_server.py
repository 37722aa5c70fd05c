"""`sdfp-edge serve` started for real on a free loopback port, driven by the official
`openai` client (and httpx where the client would refuse to send something malformed).

One server process for the whole module (SmolLM2-135M, n_ctx 1024, 2 threads).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from server_process import Server, running_server, sdfp_edge_command  # noqa: E402

pytestmark = pytest.mark.slow

API_KEY = "test-key-123"
CHAT = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def server(smollm2: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with running_server(smollm2, ["--api-key", API_KEY], log) as srv:
        yield srv


@pytest.fixture(scope="module")
def model_id(server: Server) -> str:
    return httpx.get(f"{server.url}/health", timeout=10).json()["model"]


@pytest.fixture(scope="module")
def client(server: Server) -> Any:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0, timeout=300)


def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {API_KEY}"}


def assert_openai_error(r: Any, status: int, param: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"}
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and err["message"]
    assert err["type"] == "invalid_request_error"
    if param is not None:
        assert err["param"] == param
    return err


# --- without a server: request validation and the lazy import ------------------------------
def test_the_cli_does_not_import_the_server_stack() -> None:
    code = ("import sys, sdfp_edge.cli; "
            "print(sorted(m for m in ('fastapi', 'uvicorn', 'starlette', 'pydantic') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_requests_are_validated_strictly() -> None:
    from pydantic import ValidationError

    from sdfp_edge.server.errors import from_validation
    from sdfp_edge.server.schemas import ChatCompletionRequest, CompletionRequest

    def error(schema: Any, body: dict[str, Any]) -> dict[str, Any]:
        with pytest.raises(ValidationError) as e:
            schema.model_validate(body)
        return from_validation([{**x, "loc": ("body", *x["loc"])} for x in e.value.errors()]).body()["error"]

    ok = ChatCompletionRequest.model_validate(
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}],
         "stop": "x", "presence_penalty": 0})
    assert ok.plain_messages() == [{"role": "user", "content": "ab"}]
    assert ok.stop == ["x"] and ok.temperature is None and ok.token_limit is None  # None: the model's default
    assert "temperature" not in ok.sampling(default_seed=0) and ok.sampling(default_seed=0)["presence_penalty"] == 0
    image = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}]}
    err = error(ChatCompletionRequest, {"messages": [image]})
    assert err["param"] == "messages.0.content" and "more error" not in err["message"]
    assert error(ChatCompletionRequest, {"messages": CHAT, "temperature": "0.5"})["param"] == "temperature"
    assert error(ChatCompletionRequest, {"messages": CHAT, "max_tokens": True})["param"] == "max_tokens"
    assert error(ChatCompletionRequest, {"messages": CHAT, "seed": -1})["param"] == "seed"
    assert error(ChatCompletionRequest, {"messages": CHAT, "presence_penalty": 2.5})["param"] == "presence_penalty"
    assert ChatCompletionRequest.model_validate({"messages": CHAT, "logit_bias": {"1": 5}}).logit_bias == {"1": 5}
    assert error(ChatCompletionRequest, {"messages": CHAT, "logit_bias": "x"})["param"] == "logit_bias"
    assert error(ChatCompletionRequest, {"messages": CHAT, "samplers": "top_k;warp"})["param"] == "samplers"
    assert error(ChatCompletionRequest, {"messages": CHAT, "sdfp_mode": "turbo"})["param"] == "sdfp_mode"
    assert error(ChatCompletionRequest, {"messages": []})["param"] == "messages"
    two = error(ChatCompletionRequest, {"messages": CHAT, "n": 2, "top_p": 0})
    assert two["param"] in ("n", "top_p") and two["message"].endswith("(and 1 more error)")
    assert CompletionRequest.model_validate({"prompt": ["one"]}).prompt == "one"
    assert CompletionRequest.model_validate({"prompt": "one"}).token_limit == 16
    assert error(CompletionRequest, {"prompt": ["one", "two"]})["param"] == "prompt"
    assert error(CompletionRequest, {"prompt": "x", "echo": True})["param"] == "echo"


# --- the API as the official client sees it --------------------------------------------------
def test_health_and_models(server: Server, client: Any, smollm2: Path) -> None:
    health = httpx.get(f"{server.url}/health", timeout=10)  # no key needed
    assert health.status_code == 200 and health.json()["status"] == "ok"
    models = client.models.list().data
    assert [m.id for m in models] == [smollm2.stem]
    assert client.models.retrieve(smollm2.stem).id == smollm2.stem
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")


def test_chat_non_streaming(client: Any, model_id: str) -> None:
    r = client.chat.completions.create(model=model_id, messages=CHAT, max_tokens=16, temperature=0)
    assert r.object == "chat.completion" and r.model == model_id
    choice = r.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content.strip()
    assert choice.finish_reason in ("stop", "length")
    assert 0 < r.usage.completion_tokens <= 16
    assert r.usage.prompt_tokens > 0
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    sdfp = r.model_extra["sdfp"]
    assert {"acceptance_rate", "tokens_per_verify", "tokens_per_second", "drafted", "accepted",
            "mode"} <= set(sdfp)
    assert sdfp["mode"] == "auto" and 0 <= sdfp["accepted"] <= sdfp["drafted"]
    assert sdfp["tokens_per_verify"] >= 1


def test_chat_streaming_equals_non_streaming(client: Any, model_id: str) -> None:
    kwargs = dict(model=model_id, messages=CHAT, max_tokens=20, temperature=0)
    whole = client.chat.completions.create(**kwargs)
    stream = client.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True})
    deltas, finish, usage, roles = [], None, None, []
    for chunk in stream:
        assert chunk.object == "chat.completion.chunk"
        if chunk.usage is not None and not chunk.choices:
            usage = chunk.usage
        for choice in chunk.choices:
            roles += [choice.delta.role] if choice.delta.role else []
            deltas.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    assert roles == ["assistant"]
    assert len([d for d in deltas if d]) > 1  # streamed, not one blob
    assert "".join(deltas) == whole.choices[0].message.content
    assert finish == whole.choices[0].finish_reason
    assert usage is not None
    assert usage.completion_tokens == whole.usage.completion_tokens
    assert usage.prompt_tokens == whole.usage.prompt_tokens


def test_any_model_name_is_answered_by_the_served_model(client: Any, model_id: str) -> None:
    """Apps send whatever name the user typed; the reply names the model that answered."""
    r = client.chat.completions.create(model="gpt-4o", messages=CHAT, max_tokens=4, temperature=0)
    assert r.model == model_id and r.choices[0].message.content
    chunks = list(client.chat.completions.create(model="llama3.2:latest", messages=CHAT, max_tokens=4,
                                                 temperature=0, stream=True))
    assert len(chunks) > 1 and {c.model for c in chunks} == {model_id}
    r = client.completions.create(model="text-davinci-003", prompt="Paris is", max_tokens=3, temperature=0)
    assert r.model == model_id and r.choices[0].text
    chunks = list(client.completions.create(model="x", prompt="Paris is", max_tokens=3, temperature=0,
                                            stream=True))
    assert len(chunks) > 1 and {c.model for c in chunks} == {model_id}


def test_completions(client: Any, model_id: str) -> None:
    kwargs = dict(model=model_id, prompt="The capital of France is", max_tokens=8, temperature=0)
    r = client.completions.create(**kwargs)
    assert r.object == "text_completion"
    assert r.choices[0].text.strip()
    assert r.choices[0].finish_reason in ("stop", "length")
    assert 0 < r.usage.completion_tokens <= 8
    streamed = "".join(c.choices[0].text for c in client.completions.create(**kwargs, stream=True)
                       if c.choices)
    assert streamed == r.choices[0].text


def test_sampling_with_a_seed_is_reproducible(client: Any, model_id: str) -> None:
    kwargs = dict(model=model_id, messages=CHAT, max_tokens=12, temperature=1.0, top_p=0.95, seed=7)
    a = client.chat.completions.create(**kwargs).choices[0].message.content
    b = client.chat.completions.create(**kwargs).choices[0].message.content
    assert a == b


def test_concurrent_requests_are_served_one_at_a_time(client: Any, model_id: str) -> None:
    """Three clients at once share one context: each must get exactly the single-client answer."""
    kwargs = dict(model=model_id, messages=[{"role": "user", "content": "Name three colours."}],
                  max_tokens=10, temperature=0)
    expected = client.chat.completions.create(**kwargs).choices[0].message.content
    results: list[str] = []
    errors: list[BaseException] = []

    def ask() -> None:
        try:
            results.append(client.chat.completions.create(**kwargs).choices[0].message.content)
        except BaseException as e:  # noqa: BLE001 - reported by the assertion below
            errors.append(e)

    threads = [threading.Thread(target=ask) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors
    assert results == [expected] * 3


# --- refusals ---------------------------------------------------------------------------------
def test_wrong_or_missing_api_key_is_refused(server: Server, model_id: str) -> None:
    wrong = openai.OpenAI(base_url=f"{server.url}/v1", api_key="not-the-key", max_retries=0, timeout=30)
    with pytest.raises(openai.AuthenticationError) as e:
        wrong.chat.completions.create(model=model_id, messages=CHAT, max_tokens=4)
    assert e.value.status_code == 401
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()
    # no key at all, and a malformed body: still 401 (the key is checked before the body)
    r = httpx.post(f"{server.url}/v1/chat/completions", content=b"{not json", timeout=30)
    err = r.json()["error"]
    assert r.status_code == 401 and err["code"] == "invalid_api_key"


def test_malformed_bodies_get_openai_style_400(server: Server, client: Any, model_id: str) -> None:
    url = f"{server.url}/v1/chat/completions"
    r = httpx.post(url, content=b'{"messages": [', headers={**auth(), "Content-Type": "application/json"},
                   timeout=30)
    assert "not valid JSON" in assert_openai_error(r, 400)["message"]

    r = httpx.post(url, json=[1, 2], headers=auth(), timeout=30)
    assert_openai_error(r, 400)

    r = httpx.post(url, json={"messages": CHAT, "temperature": -1}, headers=auth(), timeout=30)
    assert_openai_error(r, 400, param="temperature")

    r = httpx.post(url, json={"messages": [{"role": "user", "content": 42}]}, headers=auth(), timeout=30)
    assert_openai_error(r, 400, param="messages.0.content")

    r = httpx.post(url, json={"messages": CHAT, "n": 2}, headers=auth(), timeout=30)
    assert_openai_error(r, 400, param="n")

    r = httpx.post(f"{server.url}/v1/completions", json={"prompt": "x", "max_tokens": "5"}, headers=auth(),
                   timeout=30)
    assert_openai_error(r, 400, param="max_tokens")

    # a prompt longer than the context: refused before any token, with OpenAI's code
    r = httpx.post(url, json={"messages": [{"role": "user", "content": "hello " * 1100}]}, headers=auth(),
                   timeout=120)
    assert assert_openai_error(r, 400)["code"] == "context_length_exceeded"

    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=model_id, messages=CHAT, temperature=-1)
    with pytest.raises(openai.BadRequestError):  # a streaming request is validated before it streams
        client.chat.completions.create(model=model_id, messages=CHAT, top_p=0, stream=True)


def test_disconnect_mid_stream_frees_the_model(server: Server, client: Any, model_id: str) -> None:
    body = {"model": model_id, "messages": [{"role": "user", "content": "Count from 1 to 500, one per line."}],
            "max_tokens": 900, "temperature": 0, "stream": True}
    seen = 0
    with httpx.Client(timeout=120) as http:
        with http.stream("POST", f"{server.url}/v1/chat/completions", json=body, headers=auth()) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if line.startswith("data: ") and json.loads(line[6:])["choices"][0]["delta"].get("content"):
                    seen += 1
                if seen >= 2:
                    break  # leaving the block closes the connection mid-stream
    t0 = time.monotonic()
    r = client.chat.completions.create(model=model_id, messages=CHAT, max_tokens=8, temperature=0)
    assert r.choices[0].message.content
    # the abandoned generation was cancelled after a few tokens, not run to its 900
    lines = [ln for ln in server.log_text().splitlines() if "finish cancelled" in ln]
    assert lines, server.log_text()[-3000:]
    generated = int(lines[-1].split(" tokens, finish cancelled")[0].rsplit(" ", 1)[-1])
    assert generated < 100, lines[-1]
    assert time.monotonic() - t0 < 120


# --- same output as the command line ----------------------------------------------------------
def test_greedy_chat_equals_generate(smollm2: Path, client: Any, model_id: str) -> None:
    prompt = "Give me two tips for writing clear Python code."
    out = subprocess.run(
        sdfp_edge_command() + ["generate", "--json", "--chat", "--prompt", prompt, "--max-tokens", "32",
                               "--model", str(smollm2), "--threads", "2", "-c", "1024", "--temperature", "0"],
        capture_output=True, text=True, timeout=600, check=True)
    expected = json.loads(out.stdout)
    r = client.chat.completions.create(model=model_id, messages=[{"role": "user", "content": prompt}],
                                       max_tokens=32, temperature=0)
    assert r.choices[0].message.content == expected["text"]
    assert r.usage.completion_tokens == expected["stats"]["tokens"]
    assert r.usage.prompt_tokens == expected["stats"]["prompt_tokens"]
