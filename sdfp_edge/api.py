"""The Python API: open a GGUF once, generate from prompts or chat messages, streaming.

    from sdfp_edge import Model

    with Model() as m:  # the default model; or Model("path/to/model.gguf"), Model("owner/repo:Q4_K_M")
        for chunk in m.stream_chat([{"role": "user", "content": "Hi!"}], max_tokens=64):
            print(chunk.text, end="", flush=True)
        print(m.last_stats["tokens_per_second"])

Drafters are built once from the GGUF: layer-skip from its `sdfp.*` metadata (or
`skip_layers=`), prompt lookup always, a separate draft model when `draft_model=` is given.
Text is decoded incrementally (a token may end inside a UTF-8 character) and held back
while it could still be the start of a stop string, so stop strings never leak.
"""

from __future__ import annotations

import codecs
import hashlib
import math
import numbers
import os
from collections import OrderedDict
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import numpy as np

from sdfp_edge.runtime.backend import SKIP_ARCHITECTURES, LlamaBackend, check_skip_supported, common_prefix_len
from sdfp_edge.runtime.drafters import DraftModelDrafter, PromptLookupDrafter, SkipLayersDrafter
from sdfp_edge.runtime.drafters.skip_layers import layer_skip_candidates
from sdfp_edge.runtime.drafters.base import Drafter
from sdfp_edge.runtime.cost_store import CostStore
from sdfp_edge.runtime.engine import LOOKUP_MAX, GenerationStats, SpeculativeDecoder
from sdfp_edge.errors import ContextOverflowError, InvalidRequestError, ModelFileError, SdfpError
from sdfp_edge.runtime.grammar import Grammar
from sdfp_edge.runtime.dry import Dry, breaker_table
from sdfp_edge.runtime.logits_processors import LogitsProcessor, Mirostat, Penalties, TokenLogprob
from sdfp_edge.runtime.sampler_chain import GIVEN, LLAMA_DEFAULTS, describe, parse_samplers, resolve_defaults
from sdfp_edge.metadata import (SkipMetadata, model_info, read_header, read_kv, sampling_metadata,
                                skip_metadata, validate_skip_layers)
from sdfp_edge.models import resolve_model
from sdfp_edge.paths import stored_costs_enabled
from sdfp_edge.runtime.sampling import SamplingParams

MAX_TOKENS_LIMIT = 1 << 20


@dataclass
class Chunk:
    text: str  # new text (may be empty while a stop string is still possible)
    tokens: list[int]  # the token ids behind it
    logprobs: list[TokenLogprob] | None = None  # one per token, when asked for (`logprobs=`)


@dataclass
class Completion:
    text: str
    tokens: list[int]
    finish_reason: str  # "stop" (EOS or stop string) or "length"
    stats: dict[str, Any] = field(default_factory=dict)


@dataclass
class GenerationArgs:
    """One generation's arguments, checked (Model.prepare)."""

    prompt: list[int]
    max_tokens: int
    sampling: SamplingParams
    stops: list[str]
    mode: str | None  # None: the model's own mode
    processor: LogitsProcessor | None  # penalties, grammar, logprobs; None when none is asked for
    kept: set[int]  # special tokens whose text the output keeps

    def close(self) -> None:
        """Free the grammar, if any (llama.cpp memory)."""
        if self.processor is not None and self.processor.grammar is not None:
            self.processor.grammar.close()


# Model.chat_cuts: the messages whose starts cut a prefill (each costs a render and a tokenize)
CHAT_CUT_MESSAGES = 32
HEAD_TOKENS_KEPT = 2_000_000  # tokens of their renderings kept for a chat's next turn (8 MB)

def _check_messages(messages: Any) -> list[dict[str, Any]]:
    """Role and text content of each message, and the tool-call fields chat templates use
    (an assistant's `tool_calls`, whose content may be null; a tool result's `tool_call_id`)."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise InvalidRequestError("messages must be a non-empty list of {role, content} objects")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise InvalidRequestError(f"messages[{i}] must be an object with a string 'role'")
        if m["role"] not in ("system", "user", "assistant", "tool", "developer"):
            raise InvalidRequestError(f"messages[{i}].role '{m['role']}' is not a known role")
        content = m.get("content")
        if isinstance(content, list):  # OpenAI content parts: keep the text ones
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                       for p in content):
                raise InvalidRequestError(f"messages[{i}].content: only text parts are supported")
            content = "".join(p["text"] for p in content)
        if content is None and m.get("tool_calls"):
            content = ""
        if not isinstance(content, str):
            raise InvalidRequestError(f"messages[{i}].content must be a string")
        extra = {k: m[k] for k in ("tool_calls", "tool_call_id", "name") if m.get(k) is not None}
        out.append({"role": m["role"], "content": content, **extra})
    return out


ROW_FIELDS = ("temperature", "top_k", "top_p", "min_p", "typical_p", "top_n_sigma", "xtc_probability",
              "xtc_threshold", "mirostat", "mirostat_tau", "mirostat_eta", "samplers")


def sampling_params(values: dict[str, Any], seed: int) -> SamplingParams:
    """The row samplers' SamplingParams from resolved options (Model.resolve_sampling)."""
    return SamplingParams(seed=seed, **{k: values[k] for k in ROW_FIELDS})


def check_logit_bias(bias: Any, n_vocab: int) -> dict[int, float]:
    """{token: bias} (keys may be strings of ints, as JSON has them), or [[token, bias], ...];
    a bias of false or None bans the token (-inf), as llama-server reads it."""
    if not bias:
        return {}
    items = bias.items() if isinstance(bias, dict) else bias
    out: dict[int, float] = {}
    try:
        for tok, b in items:
            t = int(tok)
            if not 0 <= t < n_vocab:
                raise ValueError
            v = float("-inf") if b is False or b is None else float(b)
            if v != v or v == float("inf"):
                raise ValueError
            out[t] = out.get(t, 0.0) + v
    except (TypeError, ValueError):
        raise InvalidRequestError(f"logit_bias must map token ids (0..{n_vocab - 1}) to numbers "
                                  "(false: never), e.g. {\"15043\": -1}") from None
    return out


def check_max_tokens(max_tokens: Any) -> None:
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or not 0 < max_tokens <= MAX_TOKENS_LIMIT:
        raise InvalidRequestError(f"max_tokens must be an integer in 1..{MAX_TOKENS_LIMIT}, got {max_tokens!r}")


@dataclass(frozen=True)
class SkipChoice:
    """The draft's layers and where they came from, read from the GGUF header before loading."""

    layers: tuple[int, ...]
    source: str  # "command line", "GGUF metadata (<method>)" or "none"
    note: str | None  # something the user should be told once (no skip list), or None
    architecture: str
    n_layer: int
    metadata: SkipMetadata | None = None  # the GGUF's sdfp.* keys when the list came from them


def resolve_skip_layers(path: Path, skip_layers: Sequence[int] | None,
                        kv: dict[str, Any] | None = None) -> SkipChoice:
    """The draft's layers: given explicitly, else the GGUF's sdfp.* metadata, else none.

    Refuses a list the model cannot run (range, duplicates, last layer, another model's
    list, an architecture without layer-skip support) before llama.cpp loads anything.
    `kv`: the file's metadata, when the caller read it (read_header or read_kv).
    """
    kv = read_kv(path) if kv is None else kv  # one header read for both
    arch, n_layer = model_info(kv, path)
    meta = None
    if skip_layers is not None:
        layers, source = tuple(skip_layers), "command line"
        validate_skip_layers(list(layers), n_layer)
    else:
        meta = skip_metadata(kv, path)
        if meta is None and arch not in SKIP_ARCHITECTURES:
            return SkipChoice((), "none", unsupported_note(arch), arch, n_layer)
        if meta is None:
            return SkipChoice((), "none", (f"note: {path.name} has no sdfp.* skip list: layer-skip drafts are off "
                                           "(prompt lookup and plain decoding remain); add one with "
                                           "`sdfp-edge convert` or pass --skip-layers"), arch, n_layer)
        meta.check(architecture=arch, n_layer=n_layer)
        layers, source = meta.skip_layers, f"GGUF metadata ({meta.score_method or 'unknown method'})"
        if layers and arch not in SKIP_ARCHITECTURES:  # the file's list, a runtime without the arch
            return SkipChoice((), "none", unsupported_note(arch), arch, n_layer, meta)
    if layers:
        check_skip_supported(arch)
    return SkipChoice(tuple(sorted(layers)), source, None, arch, n_layer, meta)


def unsupported_note(arch: str) -> str:
    return (f"note: layer-skip is not available for architecture '{arch}' in this runtime: layer-skip "
            "drafts are off (prompt lookup and plain decoding remain)")


class Model:
    """One GGUF, one llama.cpp context and KV cache, speculative decoding on top."""

    def __init__(
        self,
        model: str | os.PathLike[str] | None = None,
        *,
        n_ctx: int = 4096,
        n_threads: int | None = None,
        n_gpu_layers: int | None = None,
        mode: str = "auto",
        skip_layers: Sequence[int] | None = None,
        draft_model: str | os.PathLike[str] | None = None,
        k_max: int = 4,
        lookup_max: int = LOOKUP_MAX,
        threshold: float = 0.8,
        cost_cache: bool = True,
        cost_dir: str | os.PathLike[str] | None = None,
        verbose: bool = False,
        log: Any = None,
        n_seq_max: int = 1,
    ) -> None:
        """`k_max`: longest model draft; `lookup_max`: longest prompt-lookup draft.
        `n_seq_max`: sequences the context holds (parallel.py; each gets n_ctx / n_seq_max).
        `cost_cache`: reuse (and keep) the controller's measurements across processes, so a
        one-shot run starts warm (cost_store.py); False, or SDFP_EDGE_NO_STORED_COSTS=1: learn
        from scratch in this process. `cost_dir`: where (default: paths.cost_dir())."""
        self.notes: list[str] = []  # things the user should know once

        def hub_note(msg: str) -> None:  # a Hub model's choice and download: said as they happen
            self.notes.append(msg)
            if log is not None:
                log(msg)

        self._hub_note = hub_note
        path = resolve_model(None if model is None else str(model), log=hub_note)
        # everything that can be checked from the file's metadata is checked before loading
        header = read_header(path)  # metadata and tensor shapes, read once for the checks and the backend
        choice = resolve_skip_layers(path, skip_layers, header[0])
        self.skip_layers, self.skip_source = choice.layers, choice.source
        self._skip_choice = choice
        load_notes = [choice.note] if choice.note else []  # the Hub's notes were said as they came
        self.backend = LlamaBackend(path, n_ctx=n_ctx, n_threads=n_threads, n_gpu_layers=n_gpu_layers,
                                    verbose=verbose, header=header,
                                    n_seq_max=n_seq_max)
        self.path = self.backend.path
        if not self.backend.can_rollback:  # says all there is to say about drafts
            load_notes = [f"note: {choice.architecture} keeps a recurrent state that cannot be cut back after a "
                          "rejected draft: decoding is plain (mode off) whatever the mode asked"]
        self.notes += load_notes
        self._draft_backend: LlamaBackend | None = None
        try:
            drafters = self._build_drafters(draft_model, threshold, n_threads, n_gpu_layers, verbose)
            store = (CostStore(self._cost_identity(drafters), None if cost_dir is None else Path(cost_dir))
                     if cost_cache and stored_costs_enabled() else None)
            self.decoder = SpeculativeDecoder(self.backend, drafters, mode=mode, k_max=k_max,
                                              lookup_max=lookup_max, cost_store=store)
        except BaseException:
            self.close()
            raise
        if log is not None:
            for note in load_notes:
                log(note)
        self._formatter: Any = None
        self.last_stats: dict[str, Any] = {}
        self._sampling_used: dict[str, Any] = {}
        self._dry_tables: dict[tuple[str, ...], Any] = {}
        self._head_tokens: OrderedDict[bytes, np.ndarray] = OrderedDict()  # chat_cuts' renderings, by text
        self._head_tokens_kept = 0
        self.sampling_defaults, self.sampling_sources = self._read_sampling_defaults(path, header[0], log)

    def _read_sampling_defaults(self, path: Path, kv: dict[str, Any],
                                log: Any) -> tuple[dict[str, Any], dict[str, str]]:
        """The GGUF's general.sampling.* values (a value this runtime cannot use is left out,
        with a note), else llama.cpp's defaults."""
        gguf = sampling_metadata(kv)  # the file's metadata (read_header)
        for k, v in list(gguf.items()):
            try:
                if k == "samplers":
                    parse_samplers(v)
                else:
                    sampling_params({**LLAMA_DEFAULTS, k: v}, 0)
                    if k in ("repeat_penalty", "repeat_last_n"):
                        Penalties(repeat=v) if k == "repeat_penalty" else Penalties(last_n=v)
            except InvalidRequestError as e:
                del gguf[k]
                self.notes.append(f"note: {path.name}: general.sampling value ignored ({e})")
                if log is not None:
                    log(self.notes[-1])
        return resolve_defaults(gguf)

    def _build_drafters(self, draft_model: Any, threshold: float, n_threads: int | None,
                        n_gpu_layers: int | None, verbose: bool) -> list[Drafter]:
        b = self.backend
        drafters: list[Drafter] = [PromptLookupDrafter()]
        if self.skip_layers:
            meta = self._skip_choice.metadata
            recorded = meta.draft_vocab if meta else ()
            for name, mask in layer_skip_candidates(self.skip_layers, meta, small_head=True).items():
                drafters.append(SkipLayersDrafter(b, mask, threshold=threshold, name=name, recorded_vocab=recorded))
        if draft_model is not None:
            self._draft_backend = LlamaBackend(resolve_model(str(draft_model), log=self._hub_note), n_ctx=b.n_ctx,
                                               n_threads=n_threads, n_gpu_layers=n_gpu_layers,
                                               verbose=verbose)
            size_ratio = Path(self._draft_backend.path).stat().st_size / Path(b.path).stat().st_size
            drafters.append(DraftModelDrafter(self._draft_backend, target_vocab=b.n_vocab, cost_prior=size_ratio,
                                              threshold=threshold))
        return drafters

    def _cost_identity(self, drafters: Sequence[Drafter]) -> dict[str, Any]:
        ident = self.backend.identity()
        ident["skip_layers"] = list(self.skip_layers)
        if self._draft_backend is not None:
            ident["draft_model"] = self._draft_backend.identity()["model"]
        ident["drafters"] = sorted(d.name for d in drafters)
        return ident

    # --- text in, text out -----------------------------------------------------------------
    def tokenize_prompt(self, prompt: str) -> list[int]:
        return self.backend.tokenize(prompt, add_special=True, parse_special=True)

    @property
    def chat_template(self) -> str | None:
        """The GGUF's Jinja chat template (tokenizer.chat_template), if it has one."""
        return self.backend.metadata().get("tokenizer.chat_template") or None

    def render_chat(self, messages: Any, *, tools: Sequence[dict[str, Any]] | None = None) -> str:
        """The prompt text; `tools` (OpenAI tool definitions) go to the template as `tools`."""
        msgs = _check_messages(messages)
        if self._formatter is None:
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter

            template = self.chat_template
            if not template:
                raise InvalidRequestError(f"{self.path.name} has no chat template; use a plain prompt")
            b = self.backend
            try:
                self._formatter = Jinja2ChatFormatter(
                    template=template,
                    eos_token=b.token_text(b.eos_token) if b.eos_token >= 0 else "",
                    bos_token=b.token_text(b.bos_token) if b.bos_token >= 0 else "",
                )
            except jinja2.TemplateError as e:
                raise ModelFileError(f"{self.path.name}: its chat template does not parse ({e})") from None
        try:
            return self._formatter(messages=msgs, tools=list(tools) if tools else None).prompt
        except (jinja2.TemplateError, ValueError, TypeError) as e:  # raise_exception() raises ValueError
            raise InvalidRequestError(f"{self.path.name}'s chat template refused these messages: {e}") from None

    def tokenize_chat(self, messages: Any, *, tools: Sequence[dict[str, Any]] | None = None) -> list[int]:
        return self._tokenize_rendered(self.render_chat(messages, tools=tools))

    def _tokenize_rendered(self, text: str) -> list[int]:
        b = self.backend
        bos = b.token_text(b.bos_token) if b.bos_token >= 0 else None
        # the template may write the BOS token itself; never add a second one
        add_special = not (bos and text.startswith(bos))
        return b.tokenize(text, add_special=add_special, parse_special=True)

    def chat_cuts(self, messages: Any, prompt: Sequence[int], *,
                  tools: Sequence[dict[str, Any]] | None = None) -> frozenset[int]:
        """Where the content of each of the first CHAT_CUT_MESSAGES messages starts in `prompt`
        (tokenize_chat's tokens of these messages).

        serve --parallel cuts a prompt's prefill batches there (Request.cuts), so that another
        prompt sharing the messages before one, and its role, takes that prefix's KV exactly
        (runtime/parallel.py, _reusable): a system prompt, the template's default one included,
        and a chat's earlier turns, not only up to a multiple of 64 positions. A cut is the
        prompt's common prefix with the rendering of the messages before it plus an empty
        message of its role: the same for every prompt that shares them. A template that
        refuses such a rendering gives no cut there.

        Tokenizing those renderings is what costs, and it grows with the square of the chat's
        length, on the server's decode thread. So each one's tokens are kept, by its text, and
        a chat's next turn tokenizes only its new messages' (tools/chat_cuts_cost.py, Qwen 1.5B
        on a 2-vCPU AVX2 EPYC, 2026-12-07: the turn after 32 messages of 3,300 tokens took
        124 ms, 8 ms with them kept; a chat seen for the first time still takes 140-180 ms)."""
        msgs = _check_messages(messages)
        cuts = set()
        for i, m in enumerate(msgs[:CHAT_CUT_MESSAGES]):
            try:
                head = self._head([*msgs[:i], {"role": m["role"], "content": ""}], tools)
            except SdfpError:
                continue
            n = common_prefix_len(prompt, head)
            if 0 < n < len(prompt):
                cuts.add(n)
        return frozenset(cuts)

    def _head(self, messages: list[dict[str, Any]], tools: Sequence[dict[str, Any]] | None) -> np.ndarray:
        """tokenize_chat(messages); the latest renderings' tokens (HEAD_TOKENS_KEPT in all) are kept by their text."""
        text = self.render_chat(messages, tools=tools)
        key = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()
        head = self._head_tokens.get(key)
        if head is None:
            head = np.asarray(self._tokenize_rendered(text), dtype=np.int32)
            self._head_tokens[key] = head
            self._head_tokens_kept += len(head)
            while self._head_tokens_kept > HEAD_TOKENS_KEPT and len(self._head_tokens) > 1:
                self._head_tokens_kept -= len(self._head_tokens.popitem(last=False)[1])
        else:
            self._head_tokens.move_to_end(key)
        return head

    def stream_tokens(
        self,
        prompt_tokens: Sequence[int],
        *,
        max_tokens: int = 256,
        seed: int = 0,
        stop: Sequence[str] | str | None = None,
        mode: str | None = None,
        grammar: str | None = None,
        logprobs: int | None = None,
        keep_special: Sequence[str] = (),
        **sampling: Any,
    ) -> Generator[Chunk, None, None]:
        """Stream text chunks; when the stream ends, `last_stats` holds the statistics.

        `sampling`: llama.cpp's sampler options under llama-server's names (temperature,
        top_k, top_p, min_p, typical_p, top_n_sigma, xtc_probability, xtc_threshold, mirostat,
        mirostat_tau, mirostat_eta, samplers, repeat_penalty, presence_penalty,
        frequency_penalty, repeat_last_n, dry_multiplier, dry_base, dry_allowed_length,
        dry_penalty_last_n, dry_sequence_breakers, logit_bias); one not given (or None) takes
        the GGUF's recommended value, else llama.cpp's default (`sampling_defaults`);
        temperature=0 is greedy. `last_stats["sampling"]` says what was used and where it
        came from. `grammar` is GBNF the output must follow (sdfp_edge.runtime.grammar makes
        it from a JSON schema); `logprobs=n` gives each chunk its tokens' log-probabilities
        and the n likeliest alternatives; `keep_special` names special tokens whose text the
        output keeps (a template's tool-call tags). Arguments are checked here, before the
        first chunk, so a bad request fails early.
        """
        a = self.prepare(prompt_tokens, max_tokens=max_tokens, seed=seed, stop=stop, mode=mode, grammar=grammar,
                         logprobs=logprobs, keep_special=keep_special, **sampling)
        return self._stream(a.prompt, a.max_tokens, a.sampling, a.stops, a.mode, a.processor, a.kept)

    def prepare(
        self,
        prompt_tokens: Sequence[int],
        *,
        max_tokens: int = 256,
        seed: int = 0,
        stop: Sequence[str] | str | None = None,
        mode: str | None = None,
        grammar: str | None = None,
        logprobs: int | None = None,
        keep_special: Sequence[str] = (),
        **sampling: Any,
    ) -> GenerationArgs:
        """`stream_tokens`' arguments checked and built (sampling, stop strings, the logits
        processor), without generating: the server's parallel slots run them (server/slots.py).
        A grammar it builds must be closed by whoever runs it (GenerationArgs.close)."""
        check_max_tokens(max_tokens)
        values, sources = self.resolve_sampling(sampling)
        params = sampling_params(values, seed)
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        if any(not isinstance(s, str) or not s for s in stops):
            raise InvalidRequestError("stop strings must be non-empty strings")
        if not prompt_tokens:
            raise InvalidRequestError("the prompt is empty")
        n_vocab = self.backend.n_vocab
        if not all(isinstance(t, numbers.Integral) and 0 <= t < n_vocab for t in prompt_tokens):
            raise InvalidRequestError(f"prompt token ids must be integers in 0..{n_vocab - 1}")
        if len(prompt_tokens) >= self.backend.n_ctx:
            raise ContextOverflowError(
                f"the prompt has {len(prompt_tokens)} tokens but the context holds {self.backend.n_ctx}; "
                "shorten the prompt or raise --ctx-size"
            )
        if mode is not None:
            self.decoder.check_mode(mode)
        processor = self.processor_for(values, params, grammar=grammar, logprobs=logprobs)
        settings = {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}
        settings["logit_bias"] = {str(t): b if math.isfinite(b) else "-inf"  # JSON has no -Infinity
                                  for t, b in check_logit_bias(values.get("logit_bias"), n_vocab).items()}
        self._sampling_used = {"settings": settings, "source": sources, "summary": describe(values)}
        kept = {ids[0] for ids in (self.backend.tokenize(t, add_special=False, parse_special=True) for t in keep_special)
                if len(ids) == 1}
        return GenerationArgs(list(prompt_tokens), max_tokens, params, stops, mode, processor, kept)

    @property
    def sampling_used(self) -> dict[str, Any]:
        """The latest call's sampling: settings, where each came from, a summary line."""
        return self._sampling_used

    def resolve_sampling(self, given: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
        """The sampling options of a call: those given, the model's defaults for the rest."""
        unknown = sorted(set(given) - set(LLAMA_DEFAULTS) - {"logit_bias"})
        if unknown:
            raise InvalidRequestError(f"unknown sampling option(s) {', '.join(unknown)}")
        values, sources = dict(self.sampling_defaults), dict(self.sampling_sources)
        for k, v in given.items():
            if v is not None:
                values[k] = parse_samplers(v) if k == "samplers" else v
                sources[k] = GIVEN
        values.setdefault("logit_bias", {})
        return values, sources

    def processor_for(self, values: dict[str, Any], params: SamplingParams, *, grammar: str | None = None,
                      logprobs: int | None = None) -> LogitsProcessor | None:
        """The LogitsProcessor of a call's text-dependent samplers, grammar and logprobs (None: none)."""
        order = params.samplers
        penalties = Penalties(values["presence_penalty"], values["frequency_penalty"], values["repeat_penalty"],
                              values["repeat_last_n"]) if "penalties" in order else None
        dry = None
        if "dry" in order and values["dry_multiplier"]:
            dry = Dry(values["dry_multiplier"], values["dry_base"], values["dry_allowed_length"],
                      values["dry_penalty_last_n"], self.dry_breakers(tuple(values["dry_sequence_breakers"])))
        bias = check_logit_bias(values.get("logit_bias"), self.backend.n_vocab)
        mirostat = Mirostat(params.mirostat, params.temperature, params.mirostat_tau, params.mirostat_eta,
                            self.backend.n_vocab) if params.mirostat else None
        proc = LogitsProcessor(penalties=penalties, greedy=params.greedy, top_logprobs=logprobs,
                               grammar=None if grammar is None else Grammar(self.backend.vocab, grammar),
                               is_eog=self.backend.is_eog, dry=dry, logit_bias=bias, mirostat=mirostat)
        if proc.changes_logits or logprobs is not None:
            return proc
        return None

    def dry_breakers(self, strings: tuple[str, ...]) -> dict[int, list[tuple[int, ...]]]:
        """DRY's breaker table for these strings (computed over the vocabulary once per model)."""
        if not all(isinstance(x, str) for x in strings):
            raise InvalidRequestError("dry_sequence_breakers must be strings")
        if strings not in self._dry_tables:
            b = self.backend
            self._dry_tables[strings] = breaker_table(
                strings, b.n_vocab, lambda t: b.token_bytes(t, special=True),
                lambda data: b.tokenize(data.decode("utf-8", errors="replace"), add_special=False,
                                        parse_special=False))
        return self._dry_tables[strings]

    def _stream(self, prompt_tokens: list[int], max_tokens: int, sampling: SamplingParams,
                stops: list[str], mode: str | None,
                processor: LogitsProcessor | None, kept: set[int]) -> Generator[Chunk, None, None]:
        """The mode given to one call applies to that call only."""
        default_mode = self.decoder.mode
        if mode is not None:
            self.decoder.set_mode(mode)
        try:
            yield from self._stream_text(prompt_tokens, max_tokens, sampling, stops, processor, kept)
        finally:
            self.decoder.set_mode(default_mode)
            if processor is not None and processor.grammar is not None:
                processor.grammar.close()

    def _stream_text(self, prompt_tokens: list[int], max_tokens: int, sampling: SamplingParams,
                     stops: list[str], processor: LogitsProcessor | None,
                     kept: set[int]) -> Generator[Chunk, None, None]:
        stats = GenerationStats()
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        text = ""  # generated text so far
        sent = 0  # how much of it has been yielded
        pending: list[int] = []
        done = 0  # tokens yielded in earlier chunks

        def chunk(text: str) -> Chunk:
            nonlocal done, pending
            lps = None if processor is None or processor.top_logprobs is None else \
                processor.logprobs[done : done + len(pending)]
            out = Chunk(text, pending, lps)
            done, pending = done + len(pending), []
            return out

        gen = self.decoder.generate(prompt_tokens, max_tokens=max_tokens, sampling=sampling, stats=stats,
                                    processor=processor)
        try:
            for tok in gen:
                if self.backend.is_eog(tok):
                    stats.finish_reason = "stop"
                    break
                pending.append(tok)
                text += decoder.decode(self.backend.token_bytes(tok, special=tok in kept))
                cut = min((i for i in (text.find(s, max(0, sent - len(s))) for s in stops) if i >= 0),
                          default=-1)
                if cut >= 0:
                    text = text[:cut]
                    stats.finish_reason = "stop"
                    break
                # hold back a tail that could still grow into a stop string
                hold = max((j for s in stops for j in range(len(s) - 1, 0, -1) if text.endswith(s[:j])),
                           default=0)
                safe = len(text) - hold
                if safe > sent:
                    yield chunk(text[sent:safe])
                    sent = safe
        finally:
            gen.close()
            self.last_stats = stats.as_dict()
            self.last_stats["skip_layers"] = list(self.skip_layers)
            self.last_stats["mode"] = self.decoder.mode
            self.last_stats["cost_model"] = self.decoder.controller.cost.relative()
            self.last_stats["cost_model_source"] = self.decoder.cost_source
            self.last_stats["sampling"] = self._sampling_used
        if stats.finish_reason != "stop":
            text += decoder.decode(b"", final=True)
        if len(text) > sent or pending:
            yield chunk(text[sent:])

    def generate(self, prompt: str, **kwargs: Any) -> Completion:
        return self._collect(self.stream_tokens(self.tokenize_prompt(prompt), **kwargs))

    def stream(self, prompt: str, **kwargs: Any) -> Iterator[Chunk]:
        return self.stream_tokens(self.tokenize_prompt(prompt), **kwargs)

    def chat(self, messages: Any, **kwargs: Any) -> Completion:
        return self._collect(self.stream_tokens(self.tokenize_chat(messages), **kwargs))

    def stream_chat(self, messages: Any, **kwargs: Any) -> Iterator[Chunk]:
        return self.stream_tokens(self.tokenize_chat(messages), **kwargs)

    def _collect(self, chunks: Iterator[Chunk]) -> Completion:
        parts, toks = [], []
        for c in chunks:
            parts.append(c.text)
            toks.extend(c.tokens)
        return Completion("".join(parts), toks, self.last_stats.get("finish_reason", ""), self.last_stats)

    def close(self) -> None:
        for b in (getattr(self, "_draft_backend", None), getattr(self, "backend", None)):
            if b is not None:
                b.close()

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["Model", "Completion", "Chunk"]
