"""The OpenAI-compatible app: `create_app(settings, model)`.

    GET  /health                 no auth: {"status": "ok", "model", "busy", "queued"}
    GET  /v1/models              the one served model
    POST /v1/completions         prompt -> text
    POST /v1/chat/completions    messages -> text, with the model's chat template

`stream: true` answers with server-sent events, `data: {...}` per chunk and `data: [DONE]`;
the last chunk (and every non-streaming response) carries `usage` and the extension `sdfp`.
Requests are served one at a time in arrival order (runner.py), or with `parallel` > 1
that many at once, decoded together (slots.py). Nothing in a request names
a file: the model is fixed when the server starts. A request naming another model is answered
by the served one, whose id the response carries (as llama.cpp's server does; with
`strict_model`, it is refused with 404). Browser pages on this machine may call the server,
other origins when allowed (cors.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse
from pydantic import ValidationError
from starlette.types import Receive, Scope, Send

from sdfp_edge import __version__
from sdfp_edge.api import Model
from sdfp_edge.errors import SdfpError
import sdfp_edge.server.responses as R
from sdfp_edge.server.auth import APIKeyMiddleware
from sdfp_edge.server.cors import CORSMiddleware, cors_options
from sdfp_edge.server.errors import (
    APIError,
    check_unicode,
    error_body,
    from_user_error,
    from_validation,
    install,
    model_not_found,
)
from sdfp_edge.server.runner import CutFinder, Event, Job, PromptBuilder, Runner
from sdfp_edge.server.schemas import ChatCompletionRequest, CompletionRequest, GenerationRequest
from sdfp_edge.server.settings import Settings
from sdfp_edge.server.slots import SlotRunner
from sdfp_edge.server.streams import ChatStream, CompletionStream
from sdfp_edge.server.tools import chat_prompt, split_all

B = TypeVar("B", bound=GenerationRequest)


async def parse_body(request: Request, schema: type[B]) -> B:
    """The JSON body, validated; whatever the Content-Type says (curl -d sends a form type)."""
    return parse_json(await request.body(), schema)


def parse_json(raw: bytes, schema: type[B]) -> B:
    """Bytes -> a validated request, or an APIError (400) saying what is wrong."""
    try:
        data = json.loads(raw)
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
        raise APIError(400, f"The request body is not valid JSON ({e}).") from None
    except RecursionError:
        raise APIError(400, "The request body is nested too deeply.") from None
    check_unicode(data)
    try:
        return schema.model_validate(data)
    except ValidationError as e:
        raise from_validation([{**err, "loc": ("body", *err["loc"])} for err in e.errors()]) from None


def _as_api_error(e: BaseException | None) -> APIError:
    if isinstance(e, SdfpError):
        return from_user_error(e)
    return APIError(500, f"generation failed: {e}", type="server_error")


class _JobStream(StreamingResponse):
    """A streamed response whose job is cancelled however the response ends (done, client gone)."""

    def __init__(self, job: Job, content: AsyncIterator[str]) -> None:
        super().__init__(content, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.job = job

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.job.cancel()


async def _cancel_on_disconnect(request: Request, job: Job, every: float = 0.25) -> None:
    while not await request.is_disconnected():
        await asyncio.sleep(every)
    job.cancel()


def create_app(settings: Settings, model: Model) -> FastAPI:
    """The app serving `model` (already open); the caller closes the model after the app stops."""
    runner = Runner(model) if settings.parallel == 1 else SlotRunner(model, settings.parallel, mode=settings.mode,
                                                                     interleave=settings.interleave_prefill)
    model_id = settings.model_id(model.path)
    created = int(Path(model.path).stat().st_mtime)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runner.start()
        yield
        await asyncio.to_thread(runner.stop)

    app = FastAPI(title="sdfp-edge", version=__version__, lifespan=lifespan)
    app.state.runner = runner
    app.state.model_id = model_id
    install(app)
    if settings.api_key:
        app.add_middleware(APIKeyMiddleware, api_key=settings.api_key)
    # added last, so outermost: preflights are answered, and errors (401 too) carry its headers
    app.add_middleware(CORSMiddleware, **cors_options(settings.cors_origins))

    def submit(label: str, body: GenerationRequest, prompt: PromptBuilder, cuts: CutFinder | None = None) -> Job:
        if settings.strict_model and body.model is not None and body.model != model_id:
            raise model_not_found(body.model, model_id)
        job = Job(label, prompt, max_tokens=body.token_limit, mode=body.sdfp_mode or settings.mode,
                  sampling=body.sampling(default_seed=settings.seed), cuts=cuts)
        return runner.submit(job)

    async def started(job: Job, request: Request) -> Event:
        """Wait for the job's turn and its first event; a bad request raises here (400)."""
        watch = asyncio.create_task(_cancel_on_disconnect(request, job))
        try:
            event = await job.next_event()
        except BaseException:
            job.cancel()
            raise
        finally:
            watch.cancel()
        if event.kind == "error":
            raise _as_api_error(event.error)
        if event.kind == "done":  # cancelled while queued: the client is gone, nobody reads this
            raise APIError(400, "the request was cancelled")
        return event

    async def collect(job: Job, request: Request) -> tuple[str, int, dict[str, Any], list[dict[str, Any]] | None]:
        """Run a job to its end: the text, the prompt length, the statistics and the logprobs."""
        watch = asyncio.create_task(_cancel_on_disconnect(request, job))
        parts: list[str] = []
        logprobs: list[dict[str, Any]] | None = None
        try:
            while (event := await job.next_event()).kind != "done":
                if event.kind == "error":
                    raise _as_api_error(event.error)
                parts.append(event.text)
                if event.logprobs is not None:
                    logprobs = (logprobs or []) + event.logprobs
            return "".join(parts), event.prompt_tokens, event.stats, logprobs
        finally:
            watch.cancel()
            job.cancel()

    async def events(job: Job, stream: ChatStream | CompletionStream) -> AsyncIterator[str]:
        for chunk in stream.opening():
            yield R.sse(chunk)
        while True:
            event = await job.next_event()
            if event.kind == "chunk":
                for chunk in stream.chunk(event.text, event.logprobs):
                    yield R.sse(chunk)
            elif event.kind == "error":
                yield R.sse(error_body(str(event.error), type="server_error"))
                break
            elif event.kind == "done":
                for chunk in stream.end(event.prompt_tokens, event.stats):
                    yield R.sse(chunk)
                break
        yield R.SSE_DONE

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": model_id, "busy": runner.busy, "queued": runner.queued,
                "slots": settings.parallel}

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [R.model_card(model_id, created)]}

    @app.get("/v1/models/{name:path}")
    async def get_model(name: str) -> dict[str, Any]:
        if name != model_id:
            raise model_not_found(name, model_id)
        return R.model_card(model_id, created)

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(request: Request) -> Any:
        body = await parse_body(request, ChatCompletionRequest)
        rid, when = R.new_id("chatcmpl"), R.now()
        messages, tools, names = body.plain_messages(), body.template_tools(), body.tool_names
        job = submit(rid, body, lambda m: chat_prompt(m, messages, tools),
                     lambda m, ids: m.chat_cuts(messages, ids, tools=tools))
        if body.stream:
            await started(job, request)
            return _JobStream(job, events(job, ChatStream(rid, when, model_id, tool_names=names,
                                                          include_usage=body.include_usage)))
        text, n_prompt, stats, logprobs = await collect(job, request)
        content, calls = split_all(text, names) if names else (text, [])
        return R.chat_completion(rid, when, model_id, content, n_prompt, stats, logprobs, calls)

    @app.post("/v1/completions", response_model=None)
    async def completions(request: Request) -> Any:
        body = await parse_body(request, CompletionRequest)
        rid, when = R.new_id("cmpl"), R.now()
        prompt = body.prompt
        assert isinstance(prompt, str)  # the validator reduced a list of one
        job = submit(rid, body, lambda m: m.tokenize_prompt(prompt))
        if body.stream:
            await started(job, request)
            return _JobStream(job, events(job, CompletionStream(rid, when, model_id,
                                                                include_usage=body.include_usage)))
        text, n_prompt, stats, logprobs = await collect(job, request)
        return R.completion(rid, when, model_id, text, n_prompt, stats, logprobs)

    return app
