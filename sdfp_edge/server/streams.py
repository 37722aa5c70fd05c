"""The chunks of a streamed response, in OpenAI's order, from the worker's events.

    opening()                    chat: the delta with the role
    chunk(text, logprobs)        a delta of content (or, with tools, a complete tool call)
    end(prompt_tokens, stats)    the finish reason, usage and `sdfp`; OpenAI's usage chunk

Tool calls stream as one delta each, id, name and arguments together, once the call is
complete (clients accumulate deltas, so this is the same to them); text that may still
turn out to be a call is held back meanwhile (tools.py).
"""

from __future__ import annotations

from typing import Any

import sdfp_edge.server.responses as R
from sdfp_edge.server.tools import Part, ToolCallSplitter

Chunk = dict[str, Any]


class ChatStream:
    def __init__(self, rid: str, created: int, model: str, *, tool_names: list[str], include_usage: bool) -> None:
        self.rid, self.created, self.model = rid, created, model
        self.include_usage = include_usage
        self.splitter = ToolCallSplitter(tool_names) if tool_names else None
        self.calls = 0

    def _chunk(self, delta: dict[str, Any], finish: str | None = None, **extra: Any) -> Chunk:
        return R.chat_chunk(self.rid, self.created, self.model, delta, finish, **extra)

    def _deltas(self, parts: list[Part]) -> list[dict[str, Any]]:
        out = []
        for p in parts:
            if p.call is None:
                out.append({"content": p.text})
            else:
                out.append({"tool_calls": [{"index": self.calls, **p.call}]})
                self.calls += 1
        return out

    def opening(self) -> list[Chunk]:
        return [self._chunk({"role": "assistant", "content": ""})]

    def chunk(self, text: str, logprobs: list[dict[str, Any]] | None) -> list[Chunk]:
        deltas = [{"content": text}] if self.splitter is None else self._deltas(self.splitter.feed(text))
        if logprobs is not None and not deltas:  # the tokens' text is held back; their logprobs are not
            deltas = [{"content": ""}]
        return [self._chunk(d, logprobs=logprobs if i == 0 else None) for i, d in enumerate(deltas)]

    def end(self, prompt_tokens: int, stats: dict[str, Any]) -> list[Chunk]:
        out = [] if self.splitter is None else [self._chunk(d) for d in self._deltas(self.splitter.close())]
        use = R.usage(prompt_tokens, stats)
        out.append(self._chunk({}, R.finish_reason(stats, tool_calls=self.calls), usage=use,
                               sdfp=R.sdfp_stats(stats)))
        if self.include_usage:  # OpenAI's separate usage chunk, with no choices
            out.append({**self._chunk({}), "choices": [], "usage": use})
        return out


class CompletionStream:
    def __init__(self, rid: str, created: int, model: str, *, include_usage: bool) -> None:
        self.rid, self.created, self.model = rid, created, model
        self.include_usage = include_usage
        self.offset = 0  # characters of output before the next chunk's tokens (text_offset)

    def opening(self) -> list[Chunk]:
        return []

    def chunk(self, text: str, logprobs: list[dict[str, Any]] | None) -> list[Chunk]:
        out = R.completion_chunk(self.rid, self.created, self.model, text, logprobs=logprobs, offset=self.offset)
        self.offset += sum(len(e["token"]) for e in logprobs or [])
        return [out]

    def end(self, prompt_tokens: int, stats: dict[str, Any]) -> list[Chunk]:
        use = R.usage(prompt_tokens, stats)
        last = R.completion_chunk(self.rid, self.created, self.model, "", R.finish_reason(stats), usage=use,
                                  sdfp=R.sdfp_stats(stats))
        if not self.include_usage:
            return [last]
        return [last, {**R.completion_chunk(self.rid, self.created, self.model, ""), "choices": [], "usage": use}]
