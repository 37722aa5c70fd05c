"""Request bodies of /v1/completions and /v1/chat/completions, validated by pydantic.

Validation is strict (no "0.5" for a number, no true for an integer) and follows OpenAI's
ranges (n 1, completions max_tokens 16). A sampling field the request leaves out takes the
model's default, as llama-server does: the GGUF's general.sampling.* value, else llama.cpp's
(temperature 0.8, top_k 40, top_p 0.95, min_p 0.05...), not OpenAI's temperature 1 / top_p 1.
Extensions, under llama-server's names: `top_k`, `min_p`, `typical_p`, `top_n_sigma`,
`xtc_probability`, `xtc_threshold`, `mirostat`, `mirostat_tau`, `mirostat_eta`, `samplers`,
`repeat_penalty`, `repeat_last_n`, `dry_*`, `grammar` (GBNF), and `sdfp_mode` to force one
speculation mode for a request. Fields this server cannot honour (echo, suffix...) are
refused when set, rather than silently ignored; unknown fields are ignored.
"""

from __future__ import annotations

import secrets
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    field_validator,
)

from sdfp_edge.api import MAX_TOKENS_LIMIT
from sdfp_edge.runtime.engine import MODES
from sdfp_edge.errors import InvalidRequestError
from sdfp_edge.runtime.batchio import SAMPLING_FIELDS
from sdfp_edge.runtime.logits_processors import MAX_TOP_LOGPROBS
from sdfp_edge.runtime.sampler_chain import parse_samplers
from sdfp_edge.server.formats import ResponseFormat
from sdfp_edge.server.tools import (
    TAGS,
    Tool,
    ToolCallIn,
    ToolChoice,
    check_tool_choice,
    forced_grammar,
    template_message,
)

Mode = Literal[MODES]  # type: ignore[valid-type]


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", allow_inf_nan=False)


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    role: Literal["system", "user", "assistant", "tool", "developer"]
    tool_calls: list[ToolCallIn] | None = None  # an assistant's earlier calls (before content: its check)
    content: str | list[TextPart] | None = Field(None, validate_default=True)
    name: str | None = None
    tool_call_id: str | None = None  # a tool result: the call it answers

    @field_validator("content", mode="wrap")
    @classmethod
    def _text_only(cls, v: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo) -> Any:
        if v is None:
            if info.data.get("role") == "assistant" and info.data.get("tool_calls"):
                return None
            raise ValueError("Field required (null only for an assistant message with tool_calls)")
        try:
            return handler(v)
        except ValidationError:  # one message instead of one per union branch
            raise ValueError('must be a string or a list of text parts ({"type": "text", "text": "..."}); '
                             "images and audio are not supported") from None

    def plain(self) -> dict[str, Any]:
        """The message as Model.render_chat takes it (tool calls with their arguments as objects)."""
        text = self.content if isinstance(self.content, str) or self.content is None else \
            "".join(p.text for p in self.content)
        out = self.model_dump(include={"name", "tool_call_id"}, exclude_none=True)
        if self.tool_calls:
            out["tool_calls"] = [c.model_dump(exclude_none=True) for c in self.tool_calls]
        return template_message({"role": self.role, "content": text, **out})


class StreamOptions(_Strict):
    include_usage: bool = False


class GenerationRequest(_Strict):
    model: str | None = None  # must be the served model's id when given
    max_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS_LIMIT)
    # sampling: None (left out) = the model's default (the GGUF's, else llama.cpp's)
    temperature: float | None = Field(None, ge=0, le=2)  # 0: greedy, exactly the model's own output
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0)  # extension; 0 = off
    min_p: float | None = Field(None, ge=0, le=1)  # extension; 0 = off
    typical_p: float | None = Field(None, gt=0, le=1)  # extension; 1 = off
    top_n_sigma: float | None = Field(None)  # extension; <= 0 = off
    xtc_probability: float | None = Field(None, ge=0, le=1)  # extension; 0 = off
    xtc_threshold: float | None = Field(None, ge=0, le=1)  # extension; > 0.5 = off
    mirostat: int | None = Field(None, ge=0, le=2)  # extension; 0 = off
    mirostat_tau: float | None = Field(None, ge=0)
    mirostat_eta: float | None = Field(None, ge=0, le=1)
    samplers: list[str] | str | None = None  # extension: the sampler order (names, or llama.cpp's letters)
    dry_multiplier: float | None = Field(None, ge=0)  # extension; 0 = off
    dry_base: float | None = Field(None, ge=0)
    dry_allowed_length: int | None = Field(None, ge=0)
    dry_penalty_last_n: int | None = Field(None, ge=-1)
    dry_sequence_breakers: list[str] | None = None
    seed: int | None = Field(None, ge=0)
    stop: str | list[str] | None = Field(None)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=1, description="only one choice per request")
    user: str | None = None
    sdfp_mode: Mode | None = None  # extension: auto, off, lookup, layerskip, draft-model

    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    repeat_penalty: float | None = Field(None, gt=0, le=10)  # extension; 1 = off
    repeat_last_n: int | None = Field(None, ge=-1)  # extension: tokens the penalties look back on; -1: all
    grammar: str | None = Field(None, min_length=1)  # extension: GBNF the output must follow

    logit_bias: dict[str, float | bool] | list[list[Any]] | None = None  # token id -> bias (false: never)

    @field_validator("stop")
    @classmethod
    def _stop_strings(cls, v: str | list[str] | None) -> list[str]:
        stops = [v] if isinstance(v, str) else list(v or [])
        if any(not s for s in stops):
            raise ValueError("stop strings must not be empty")
        if len(stops) > 16:
            raise ValueError("at most 16 stop strings")
        return stops

    @field_validator("samplers")
    @classmethod
    def _samplers(cls, v: list[str] | str | None) -> list[str] | str | None:
        if v is not None:
            try:
                parse_samplers(v)
            except InvalidRequestError as e:
                raise ValueError(str(e)) from None
        return v

    @property
    def token_limit(self) -> int | None:
        """Most tokens to generate; None: until the end of generation or of the context."""
        return self.max_tokens

    @property
    def n_logprobs(self) -> int | None:
        """How many alternatives per token to report; None: no log-probabilities at all."""
        return None

    def gbnf(self) -> str | None:
        """The grammar the output must follow; None: free text."""
        return self.grammar

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def sampling(self, *, default_seed: int | None) -> dict[str, Any]:
        """Keyword arguments for `Model.stream_tokens` (max_tokens and mode are added later)."""
        seed = self.seed if self.seed is not None else default_seed
        given = {k: getattr(self, k) for k in SAMPLING_FIELDS if getattr(self, k) is not None}
        return dict(seed=seed if seed is not None else secrets.randbits(63), stop=self.stop,
                    logprobs=self.n_logprobs, grammar=self.gbnf(), **given)


class ChatCompletionRequest(GenerationRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS_LIMIT)  # newer name of max_tokens
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    response_format: ResponseFormat | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    functions: Any = None  # the older form of tools: refused

    @field_validator("functions")
    @classmethod
    def _no_functions(cls, v: Any) -> Any:
        if v:
            raise ValueError("functions (deprecated) are not supported by this server: send tools")
        return v

    @field_validator("tool_choice")
    @classmethod
    def _choice(cls, v: ToolChoice | None, info: ValidationInfo) -> ToolChoice | None:
        check_tool_choice(info.data.get("tools"), v)
        if v not in (None, "none", "auto"):
            try:
                forced_grammar(info.data["tools"], v, parallel=True)
            except InvalidRequestError as e:
                raise ValueError(str(e)) from None
        if v not in (None, "none", "auto") and info.data.get("response_format") is not None \
                and info.data["response_format"].type != "text":
            raise ValueError("a forced tool call and a response_format cannot both constrain the output")
        return v

    @field_validator("response_format")
    @classmethod
    def _one_grammar(cls, v: ResponseFormat | None, info: ValidationInfo) -> ResponseFormat | None:
        if v is not None and v.type != "text" and info.data.get("grammar") is not None:
            raise ValueError("give either response_format or grammar, not both")
        return v

    @field_validator("top_logprobs")
    @classmethod
    def _top_logprobs_needs_logprobs(cls, v: int | None, info: ValidationInfo) -> int | None:
        if v is not None and not info.data.get("logprobs"):
            raise ValueError("top_logprobs needs logprobs: true")
        return v

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    @property
    def n_logprobs(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None

    @property
    def tool_names(self) -> list[str]:
        """The tools the model may call in this reply ([] when none or tool_choice is 'none')."""
        return [] if not self.tools or self.tool_choice == "none" else [t.function.name for t in self.tools]

    def template_tools(self) -> list[dict[str, Any]] | None:
        """Tool definitions for the chat template; None: render no tools."""
        return [t.model_dump(exclude_none=True) for t in self.tools] if self.tool_names and self.tools else None

    def sampling(self, *, default_seed: int | None) -> dict[str, Any]:
        kwargs = super().sampling(default_seed=default_seed)
        return {**kwargs, "keep_special": TAGS} if self.tool_names else kwargs

    def gbnf(self) -> str | None:
        if self.response_format is not None and self.response_format.type != "text":
            return self.response_format.gbnf()
        if self.tools and self.tool_choice not in (None, "none", "auto"):
            return forced_grammar(self.tools, self.tool_choice, self.parallel_tool_calls is not False)
        return self.grammar

    def plain_messages(self) -> list[dict[str, str]]:
        return [m.plain() for m in self.messages]


class CompletionRequest(GenerationRequest):
    prompt: str | list[str]
    max_tokens: int | None = Field(16, ge=1, le=MAX_TOKENS_LIMIT)  # OpenAI's default for completions
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)  # alternatives per token
    suffix: str | None = None
    best_of: int | None = Field(None, ge=1, le=1)

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, v: str | list[str]) -> str:
        if isinstance(v, list):
            if len(v) != 1:
                raise ValueError("exactly one prompt per request (a string, or a list of one string)")
            v = v[0]
        return v

    @property
    def n_logprobs(self) -> int | None:
        return self.logprobs

    @field_validator("echo")
    @classmethod
    def _no_echo(cls, v: bool) -> bool:
        if v:
            raise ValueError("echo is not supported by this server")
        return v

    @field_validator("suffix")
    @classmethod
    def _no_suffix(cls, v: str | None) -> str | None:
        if v:
            raise ValueError("suffix (fill-in-the-middle) is not supported by this server")
        return v
