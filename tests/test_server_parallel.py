"""`sdfp-edge serve --parallel 3`: requests decoded together, each exactly as when it runs alone.

One server process for the module (SmolLM2-135M, 3 slots of 1024 tokens, 2 threads); every
request is greedy (temperature 0) or seeded. SmolLM2 Q4_1 decodes a sequence bit for bit
alike alone and beside others (each slot has its own KV stream: runtime/parallel.py), so
"the same text" is asserted exactly. No timing asserts: only the order in which requests end.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from server_process import Server, running_server  # noqa: E402

pytestmark = pytest.mark.slow

SLOTS, SLOT_CTX = 3, 1024
QUESTIONS = ["What is the capital of France?", "Write a haiku about the sea.", "Name three primary colours.",
             "How do plants make food?"]


@pytest.fixture(scope="module")
def server(smollm2: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("serve-parallel") / "serve.log"
    with running_server(smollm2, ["-c", str(SLOTS * SLOT_CTX), "--parallel", str(SLOTS)], log) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server: Server) -> Any:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0, timeout=300)


def chat(q: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": q}]


def together(calls: list[Any]) -> list[Any]:
    """Run the calls at once, each on its own thread; their results in order."""
    out: list[Any] = [None] * len(calls)
    barrier = threading.Barrier(len(calls))

    def run(i: int) -> None:
        barrier.wait()
        try:
            out[i] = calls[i]()
        except Exception as e:  # noqa: BLE001 - re-raised below, in the test's thread
            out[i] = e

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in out:
        if isinstance(r, Exception):
            raise r
    return out


def idle(server: Server) -> dict[str, Any]:
    for _ in range(600):
        health = httpx.get(f"{server.url}/health", timeout=10).json()
        if not health["busy"] and not health["queued"]:
            return health
        time.sleep(0.1)
    raise AssertionError(f"the server stays busy: {health}")


def test_health_says_how_many_slots(server: Server) -> None:
    assert httpx.get(f"{server.url}/health", timeout=10).json()["slots"] == SLOTS


def test_two_greedy_requests_at_once_give_the_texts_each_gives_alone(client: Any) -> None:
    def ask(q: str) -> Any:
        return lambda: client.chat.completions.create(model="m", messages=chat(q), max_tokens=48, temperature=0)

    alone = [ask(q)() for q in QUESTIONS[:2]]
    both = together([ask(q) for q in QUESTIONS[:2]])
    for a, b in zip(alone, both):
        assert b.choices[0].message.content == a.choices[0].message.content
        assert b.choices[0].finish_reason == a.choices[0].finish_reason
        assert b.usage == a.usage
    assert all(a.choices[0].message.content for a in alone)


def stream_completion(server: Server, body: dict[str, Any], events: list[tuple[str, str]], name: str,
                      *, leave_after: int | None = None) -> str:
    """Stream /v1/completions; note ("first", name) at the first text and ("end", name) at [DONE]."""
    text, chunks = [], 0
    with httpx.Client(timeout=300) as c, c.stream("POST", f"{server.url}/v1/completions",
                                                  json={**body, "stream": True}) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                events.append(("end", name))
                return "".join(text)
            data = json.loads(line[6:])
            if not text:
                events.append(("id", data["id"]))
            choice = data["choices"]
            if choice and choice[0]["text"]:
                if not text:
                    events.append(("first", name))
                text.append(choice[0]["text"])
                chunks += 1
                if leave_after is not None and chunks >= leave_after:
                    events.append(("left", name))
                    return "".join(text)
    raise AssertionError("the stream ended without [DONE]")


LONG = {"prompt": "Chapter 1\n\nThe old lighthouse keeper had kept a diary for forty years. On the first page he wrote:",
        "max_tokens": 400, "temperature": 0}


def test_a_short_request_started_during_a_long_one_finishes_first(server: Server) -> None:
    events: list[tuple[str, str]] = []
    long_text: list[str] = []
    t = threading.Thread(target=lambda: long_text.append(stream_completion(server, LONG, events, "long")))
    t.start()
    while ("first", "long") not in events:  # the long one is decoding
        assert t.is_alive(), events
        time.sleep(0.05)
    short = stream_completion(server, {"prompt": "The capital of France is", "max_tokens": 8, "temperature": 0},
                              events, "short")
    t.join()
    assert short and long_text and long_text[0]
    assert events.index(("end", "short")) < events.index(("end", "long")), events
    # the ordering means something only if the long one had far more to do
    n_long = httpx.post(f"{server.url}/v1/completions", json=LONG, timeout=300).json()["usage"]["completion_tokens"]
    assert n_long >= 200, f"the long request ended after {n_long} tokens"


def test_cancelling_one_of_three_streams_leaves_the_others_complete_and_correct(server: Server) -> None:
    bodies = [{"prompt": p, "max_tokens": 40, "temperature": 0} for p in
              ("Once upon a time", "The recipe for pancakes:", "def fibonacci(n):")]
    alone = [httpx.post(f"{server.url}/v1/completions", json=b, timeout=300).json()["choices"][0]["text"]
             for b in bodies]
    events: list[Any] = []
    leaving = {**bodies[1], "max_tokens": 400}  # would run long after the others if not stopped
    texts = together([lambda i=i: stream_completion(server, leaving if i == 1 else bodies[i], events, str(i),
                                                    leave_after=2 if i == 1 else None) for i in range(3)])
    assert ("left", "1") in events and ("end", "1") not in events
    assert texts[0] == alone[0] and texts[2] == alone[2]
    assert alone[1].startswith(texts[1])  # what it got before leaving was right too
    idle(server)
    ids = {e[1] for e in events if e[0] == "id"}
    assert len(ids) == 3
    ended = re.findall(r"(cmpl-\w+): \d+ prompt tokens \(\d+ reused\), (\d+) tokens, finish (\w+)", server.log_text())
    cancelled = [(rid, int(n)) for rid, n, finish in ended if rid in ids and finish == "cancelled"]
    assert len(cancelled) == 1 and cancelled[0][1] < 400, ended  # stopped when its client left
    again = httpx.post(f"{server.url}/v1/completions", json=bodies[1], timeout=300).json()["choices"][0]["text"]
    assert again == alone[1]


def test_the_async_openai_client_with_several_requests_at_once(server: Server) -> None:
    async def main() -> tuple[list[str], list[str]]:
        async with openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0,
                                      timeout=300) as c:
            async def ask(q: str, stream: bool) -> str:
                kwargs = dict(model="m", messages=chat(q), max_tokens=32, temperature=0)
                if not stream:
                    r = await c.chat.completions.create(**kwargs)
                    return r.choices[0].message.content or ""
                parts = []
                async for chunk in await c.chat.completions.create(**kwargs, stream=True):
                    if chunk.choices and chunk.choices[0].delta.content:
                        parts.append(chunk.choices[0].delta.content)
                return "".join(parts)

            alone = [await ask(q, False) for q in QUESTIONS]
            # more requests than slots: the fifth and later wait for a free slot
            at_once = await asyncio.gather(*(ask(q, stream) for stream in (False, True) for q in QUESTIONS))
            return alone, list(at_once)

    alone, at_once = asyncio.run(main())
    assert all(alone)
    assert at_once == alone + alone


def test_per_request_features_are_per_slot(client: Any) -> None:
    """logprobs, response_format, a GBNF grammar, penalties, stop strings and a seed, all at
    once: each request's response equals its response alone. (Tool calls: SmolLM2's template
    has none; their grammar and tags go the same way, Request.processor and keep_special.)"""
    kinds = {
        "logprobs": dict(messages=chat(QUESTIONS[0]), max_tokens=12, temperature=0, logprobs=True, top_logprobs=3),
        "json": dict(messages=chat("Give me a JSON object describing a cat."), max_tokens=40, temperature=0,
                     response_format={"type": "json_object"}),
        "penalties": dict(messages=chat(QUESTIONS[1]), max_tokens=30, temperature=0, frequency_penalty=1.0),
        "stop": dict(messages=chat(QUESTIONS[3]), max_tokens=40, temperature=0, stop=["."]),
        "seed": dict(messages=chat(QUESTIONS[2]), max_tokens=30, temperature=0.9, seed=1234),
        "grammar": dict(messages=chat("Is the sky blue?"), max_tokens=8, temperature=0,
                        extra_body={"grammar": 'root ::= ("yes" | "no") "."'}),
    }

    def call(kind: str) -> dict[str, Any]:
        r = client.chat.completions.create(model="m", **kinds[kind]).choices[0]
        return r.model_dump(include={"message", "finish_reason", "logprobs"})

    alone = {k: call(k) for k in kinds}
    at_once = dict(zip(kinds, together([lambda k=k: call(k) for k in kinds])))
    assert at_once == alone
    assert alone["logprobs"]["logprobs"]["content"] and "." not in alone["stop"]["message"]["content"]
    assert alone["stop"]["finish_reason"] == "stop"
    assert alone["json"]["message"]["content"].startswith("{")  # the grammar held (40 tokens: maybe unfinished)
    assert alone["grammar"]["message"]["content"] in ("yes.", "no.")


def test_a_prompt_past_the_slot_context_is_refused_as_today(server: Server) -> None:
    """Each slot holds n_ctx / N tokens: a prompt that fits n_ctx but not a slot gets the 400."""
    prompt = "word " * (SLOT_CTX + 50)
    r = httpx.post(f"{server.url}/v1/completions", json={"prompt": prompt, "max_tokens": 4}, timeout=60)
    assert r.status_code == 400, r.text
    assert f"the context holds {SLOT_CTX}" in r.json()["error"]["message"]
    r = httpx.post(f"{server.url}/v1/completions", json={"prompt": "Hi", "max_tokens": 4, "sdfp_mode": "layerskip"},
                   timeout=60)
    assert r.status_code == 400 and "parallel" in r.json()["error"]["message"], r.text
    idle(server)


def test_a_shared_prefix_is_copied_from_a_busy_slot(server: Server) -> None:
    """A prompt sharing a long preface (past one 64-token reuse step) with a request still
    running in another slot takes that KV (a copy) instead of recomputing it; its text is what
    it gives alone (that reuse is exact: test_parallel.py)."""
    preface = "Notes from the lighthouse. " * 30
    second = {"prompt": preface + "The weather today", "max_tokens": 12, "temperature": 0}
    events: list[tuple[str, str]] = []
    t = threading.Thread(target=stream_completion, args=(server, {**LONG, "prompt": preface + "The sea", "max_tokens": 120},
                                                         events, "first"))
    t.start()
    while ("first", "first") not in events:
        assert t.is_alive(), events
        time.sleep(0.05)
    r = httpx.post(f"{server.url}/v1/completions", json=second, timeout=300).json()
    t.join()
    assert r["usage"]["prompt_tokens"] > 128 and r["sdfp"]["reused_prompt_tokens"] >= 128
    assert events.index(("end", "first")) > 0
    idle(server)
    # alone, into the slots' current KV: reused again (from the first's slot) and the same text
    alone = httpx.post(f"{server.url}/v1/completions", json=second, timeout=300).json()
    assert alone["choices"][0]["text"] == r["choices"][0]["text"]


def test_a_chats_next_turn_reuses_its_whole_previous_prompt(server: Server) -> None:
    """The server cuts each chat prompt's prefill where each message starts (Model.chat_cuts),
    so the next turn takes all of the previous prompt's KV, not only up to a multiple of 64
    positions; the text is the one it gives when sent again (reuse is exact)."""
    idle(server)
    url = f"{server.url}/v1/chat/completions"
    turn1 = [{"role": "system", "content": "You are brief."}, {"role": "user", "content": QUESTIONS[3]}]
    r1 = httpx.post(url, json={"messages": turn1, "max_tokens": 8, "temperature": 0}, timeout=300).json()
    turn2 = turn1 + [{"role": "assistant", "content": r1["choices"][0]["message"]["content"]},
                     {"role": "user", "content": "Say it again, shorter."}]
    body = {"messages": turn2, "max_tokens": 8, "temperature": 0}
    r2 = httpx.post(url, json=body, timeout=300).json()
    assert r1["usage"]["prompt_tokens"] % 64 != 0  # a reuse that ends exactly there is not the grid's
    assert r2["sdfp"]["reused_prompt_tokens"] == r1["usage"]["prompt_tokens"]
    again = httpx.post(url, json=body, timeout=300).json()
    assert again["choices"][0]["message"]["content"] == r2["choices"][0]["message"]["content"]


@pytest.mark.parametrize("args", [["--mode", "layerskip"], ["--mode", "draft-model"], ["--skip-layers", "3,5"],
                                  ["--draft-model", "x.gguf"], ["-c", "2"]])
def test_what_parallel_slots_cannot_do_is_refused_before_loading(args: list[str]) -> None:
    from click.testing import CliRunner

    from sdfp_edge.cli.main import main

    r = CliRunner().invoke(main, ["serve", "--parallel", "2", "--model", "/nonexistent.gguf", *args])
    assert r.exit_code == 2, r.output
    assert "--parallel 2" in r.output or "slots" in r.output
