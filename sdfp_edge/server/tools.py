"""Tool calls (`tools`, `tool_choice`) through the model's own chat template.

The template renders the tool definitions, earlier `tool_calls` and `role: tool` results;
the model answers with calls in its template's format. The format supported is the one of
Qwen2.5, Qwen3 and Hermes models: each call a JSON object {"name", "arguments"} between
<tool_call> and </tool_call>. A template without tools, or with another format, gets a
clear 400. `tool_choice: "required"` or a named function is enforced with a grammar (the
call's JSON follows the function's parameter schema); "none" renders no tools.

    ToolCallSplitter   generated text -> content and tool calls, as the text streams
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from sdfp_edge.errors import InvalidRequestError
from sdfp_edge.runtime.grammar import json_schema_gbnf
from sdfp_edge.server.formats import check_json_schema

OPEN, CLOSE = "<tool_call>", "</tool_call>"
_FENCE = re.compile(r"```(?:json)?\s*(\{.*\})\s*```", re.DOTALL)
TAGS = (OPEN, CLOSE)  # special tokens in some vocabularies (Qwen2.5): their text must stay in the output


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", allow_inf_nan=False)


class FunctionDef(_Strict):
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None

    @field_validator("parameters")
    @classmethod
    def _schema(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        import jsonschema

        if v is None:
            return v
        try:
            jsonschema.validators.validator_for(v, default=jsonschema.Draft202012Validator).check_schema(v)
        except jsonschema.SchemaError as e:
            raise ValueError(f"not a valid JSON schema: {e.message}") from None
        return v


class Tool(_Strict):
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(_Strict):
    name: str


class CalledFunction(_Strict):
    name: str
    arguments: str  # JSON text, as OpenAI sends it


class ToolCallIn(_Strict):
    """An earlier call, in an assistant message sent back with the tool's result."""

    id: str | None = None
    type: Literal["function"] = "function"
    function: CalledFunction


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: NamedFunction


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


def check_tool_choice(tools: list[Tool] | None, choice: ToolChoice | None) -> None:
    """The choice must name a function that is defined; forcing needs tools."""
    if choice is None or choice in ("none", "auto"):
        return
    names = [t.function.name for t in tools or []]
    if not names:
        raise ValueError("tool_choice needs tools")
    if isinstance(choice, NamedToolChoice) and choice.function.name not in names:
        raise ValueError(f"tool_choice names '{choice.function.name}', which is not among the tools "
                         f"({', '.join(names)})")


def template_message(m: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI message as chat templates expect it: a call's arguments as an object."""
    calls = m.get("tool_calls")
    if not calls:
        return m
    out = []
    for c in calls:
        fn = dict(c["function"])
        try:
            fn["arguments"] = json.loads(fn["arguments"]) if isinstance(fn["arguments"], str) else fn["arguments"]
        except ValueError:
            pass  # not JSON: the template shows the string as it is
        out.append({**c, "function": fn})
    return {**m, "tool_calls": out}


def chat_prompt(model: Any, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> list[int]:
    """The prompt's tokens (on the worker): with tools, only through a template that supports them."""
    if tools:
        check_template(model.chat_template)
    return model.tokenize_chat(messages, tools=tools)


def check_template(template: str | None) -> None:
    """Refuse tools for a template that has no tool support, or an unknown call format."""
    if not template or "tools" not in template:
        raise InvalidRequestError("this model's chat template has no tool support: send the request without tools")
    if OPEN not in template:
        raise InvalidRequestError("this model's chat template writes tool calls in a format this server does not "
                                  f"parse (supported: JSON between {OPEN} and {CLOSE}, as Qwen2.5 and Hermes)")


def forced_grammar(tools: Sequence[Tool], choice: ToolChoice, parallel: bool) -> str | None:
    """GBNF making the output one call (or, `parallel`, several) of the chosen tools."""
    if choice in ("none", "auto"):
        return None
    chosen = [t.function for t in tools if not isinstance(choice, NamedToolChoice) or t.function.name == choice.function.name]
    calls = [{"type": "object", "additionalProperties": False, "required": ["name", "arguments"],
              "properties": {"name": {"const": f.name},
                             "arguments": f.parameters or {"type": "object"}}} for f in chosen]
    schema = calls[0] if len(calls) == 1 else {"anyOf": calls}
    try:
        check_json_schema(schema)
    except ValueError as e:
        raise InvalidRequestError(f"tool_choice forces a call, but a tool's parameters cannot be enforced: {e}") from None
    body = json_schema_gbnf(schema).replace("root ::=", "tool-call ::=", 1)
    block = r'"<tool_call>\n" tool-call "\n</tool_call>"'
    return f"{body}\nroot ::= {block}" + (rf' ("\n" {block})*' if parallel else "") + "\n"


@dataclass
class Part:
    kind: Literal["content", "tool_call"]
    text: str = ""  # content
    call: dict[str, Any] | None = None  # tool_call: OpenAI's {"id", "type", "function": {"name", "arguments"}}


def as_call(block: str, names: Sequence[str]) -> dict[str, Any] | None:
    """The JSON between the tags as an OpenAI tool call, or None when it is not a call of a known tool."""
    try:
        obj = json.loads(block)
    except ValueError:
        return None
    if not isinstance(obj, dict) or obj.get("name") not in names:
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    return {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
            "function": {"name": obj["name"], "arguments": json.dumps(args, ensure_ascii=False)}}


class ToolCallSplitter:
    """Feed generated text as it streams; get content to show and complete tool calls.

    Text that could be the start of <tool_call> is held back until it is known not to be; a
    block that does not hold a call of a known tool is given back as content, as generated.
    Once a call was made, whitespace between calls is dropped. Small models (Qwen2.5-Coder
    0.5B) often answer with the call's JSON alone, without the tags, or in a ```json fence:
    a reply that is just one such object naming a defined tool is that call, as llama.cpp's
    parser of this format also reads it (such a reply is held back to its end).
    """

    def __init__(self, names: Sequence[str]) -> None:
        self.names = list(names)
        self.calls = 0
        self._buf = ""
        self._inside = False
        self._space = ""  # whitespace after a call, shown only if more content follows
        self._lead: str | None = ""  # the reply so far while it may be a call without tags; None: it is not

    def feed(self, text: str) -> list[Part]:
        if self._lead is not None:
            self._lead += text
            head = self._lead.lstrip()
            if head.startswith(("{", "```")) or "```".startswith(head):
                if OPEN not in head:
                    return []
            text, self._lead = self._lead, None
        self._buf += text
        out: list[Part] = []
        while True:
            if self._inside:
                end = self._buf.find(CLOSE)
                if end < 0:
                    break
                block, self._buf = self._buf[:end], self._buf[end + len(CLOSE):]
                self._inside = False
                call = as_call(block.strip(), self.names)
                out += self._content(OPEN + block + CLOSE) if call is None else [Part("tool_call", call=call)]
                self.calls += call is not None
                continue
            start = self._buf.find(OPEN)
            if start >= 0:
                out += self._content(self._buf[:start])
                self._buf, self._inside = self._buf[start + len(OPEN):], True
                continue
            hold = next((j for j in range(len(OPEN) - 1, 0, -1) if self._buf.endswith(OPEN[:j])), 0)
            out += self._content(self._buf[: len(self._buf) - hold])
            self._buf = self._buf[len(self._buf) - hold:]
            break
        return out

    def close(self) -> list[Part]:
        """What is left at the end: an unfinished block is content, as generated."""
        if self._lead is not None:
            lead, self._lead = self._lead, None
            fenced = _FENCE.fullmatch(lead.strip())
            call = as_call(fenced.group(1) if fenced else lead.strip(), self.names)
            if call is not None:
                self.calls += 1
                return [Part("tool_call", call=call)]
            self._buf = lead + self._buf
        rest = (OPEN if self._inside else "") + self._buf
        self._buf, self._inside = "", False
        return self._content(rest)

    def _content(self, text: str) -> list[Part]:
        if self.calls and not text.strip():
            self._space += text
            return []
        text, self._space = self._space + text, ""
        return [Part("content", text)] if text else []


def split_all(text: str, names: Sequence[str]) -> tuple[str | None, list[dict[str, Any]]]:
    """A whole reply -> (content or None, tool calls)."""
    s = ToolCallSplitter(names)
    parts = s.feed(text) + s.close()
    content = "".join(p.text for p in parts if p.kind == "content")
    calls = [p.call for p in parts if p.call is not None]
    return (content.strip() or None) if calls else content, calls
