"""Calibration sequences for layer scoring: data-free by default, or from a user file.

Data-free: the model answers a built-in set of varied prompts (chat, code, reasoning,
summaries, extraction, rewriting) rendered with its own chat template; each sequence is
the rendered prompt followed by the model's own continuation, seq_len tokens at most. The
text the draft will have to predict is the model's own output, so that is what it is
scored on.

User file: plain text (tokenized and cut into consecutive chunks of seq_len tokens) or
JSONL, one object a line with either "text" (a string) or "messages" (a chat, rendered
with the chat template).

The `describe_*` functions give the one-line `sdfp.calibration` metadata string;
`generated_vocab` the token ids the model produced (the `sdfp.draft_vocab` metadata).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from sdfp_edge.errors import SdfpError

# Short prompts: with the chat template they leave most of seq_len to the model's answer.
PROMPTS: tuple[str, ...] = (
    "Hi! Can you suggest three fun things to do on a rainy weekend?",
    "Write a Python function that checks whether a string is a palindrome.",
    "A train travels 120 km in 1.5 hours. What is its average speed? Explain step by step.",
    (
        "Summarize in two sentences: The city council voted on Tuesday to expand the bike lane "
        "network by 40 km over three years, citing rising commuter demand and lower emissions."
    ),
    (
        "Extract the name, date and amount as JSON: 'Invoice from Maria Lopez, "
        "dated 3 March 2024, total due 1,250.00 EUR.'"
    ),
    "Explain what a hash table is to a beginner programmer.",
    "Write a short, friendly email declining a meeting invitation for Friday.",
    "Fix the bug in this JavaScript: function sum(a) { let s; for (x of a) s += x; return s; }",
    "If all bloops are razzies and all razzies are lazzies, are all bloops lazzies? Why?",
    "Give me a recipe for a quick vegetarian pasta dinner.",
    "Write a SQL query that returns the five customers with the highest total order value.",
    "What are the main causes of the seasons on Earth?",
    "Rewrite this sentence to be more formal: 'gonna need those reports asap, thx'",
    "List the pros and cons of working from home.",
    "Write a haiku about autumn leaves.",
    "Translate to French and explain any tricky word: 'The early bird catches the worm.'",
)


class CalibrationError(SdfpError, ValueError):
    """A calibration file that cannot be read, or that yields no usable sequence."""


def self_generated(
    model: Any,
    tokenizer: Any,
    *,
    n_samples: int,
    seq_len: int,
    seed: int,
    greedy: bool = False,
    temperature: float = 0.8,
    top_p: float = 0.95,
) -> list[Any]:
    """Sequences of the model answering the built-in prompts (cycled if n_samples > 16).

    Args:
        model: a transformers causal LM (anything with `.generate`).
        tokenizer: its tokenizer; its chat template is used when it has one.
        n_samples: number of sequences.
        seq_len: maximum length of each sequence, prompt included.
        seed: sampling seed (the global torch RNG state is restored afterwards).
        greedy: greedy decoding instead of sampling.

    Returns:
        n_samples LongTensors of shape [T], 2 <= T <= seq_len (shorter if the model
        stopped at an end-of-sequence token).
    """
    import torch

    _check_sizes(n_samples, seq_len)
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out: list[torch.Tensor] = []
    fork_devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=fork_devices), torch.no_grad():
        for i in range(n_samples):
            ids = torch.tensor([_prompt_ids(tokenizer, i, seq_len)], dtype=torch.long, device=device)
            torch.manual_seed(seed * 1_000_003 + i)
            gen_kwargs: dict[str, Any] = {"do_sample": False} if greedy else {
                "do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0,
            }
            seq = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=seq_len - ids.shape[1],
                min_new_tokens=1,
                pad_token_id=pad_id,
                **gen_kwargs,
            )
            out.append(seq[0, :seq_len].detach().cpu())
    return out


def generated_vocab(tokenizer: Any, sequences: list[Any], *, seq_len: int) -> tuple[int, ...]:
    """The token ids the model produced in `self_generated(..., seq_len=seq_len)` sequences.

    Only the continuations, not the prompts: the draft has to predict what the model
    writes. An end-of-sequence token the model generated counts.

    Returns:
        Sorted, unique token ids.
    """
    produced: set[int] = set()
    for i, seq in enumerate(sequences):
        produced.update(int(t) for t in seq[len(_prompt_ids(tokenizer, i, seq_len)) :].tolist())
    return tuple(sorted(produced))


def from_file(
    path: str | os.PathLike[str], tokenizer: Any, *, n_samples: int, seq_len: int
) -> list[Any]:
    """Sequences from a user file: plain text chunks, or JSONL with "text" or "messages".

    A file whose name ends in .jsonl (or whose first non-blank line is a JSON object) is
    JSONL: one sequence per record, truncated to seq_len tokens, the first n_samples
    records with at least 2 tokens. Any other file is plain text: the first n_samples
    consecutive chunks of seq_len tokens (the last one may be shorter, at least 2 tokens).

    Returns:
        At most n_samples LongTensors of shape [T], 2 <= T <= seq_len.
    """
    import torch

    _check_sizes(n_samples, seq_len)
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CalibrationError(f"{p}: calibration file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise CalibrationError(f"{p}: cannot read the calibration file as UTF-8 text ({e})") from e

    if _is_jsonl(p, text):
        token_lists = _jsonl_sequences(p, text, tokenizer, n_samples=n_samples, seq_len=seq_len)
    else:
        token_lists = _text_chunks(text, tokenizer, n_samples=n_samples, seq_len=seq_len)
    if not token_lists:
        raise CalibrationError(f"{p}: no calibration sequence of at least 2 tokens in the file")
    return [torch.tensor(t, dtype=torch.long) for t in token_lists]


def describe_self_generated(n_samples: int, seq_len: int, seed: int) -> str:
    """E.g. "self-generated:8x128:seed0"."""
    return f"self-generated:{n_samples}x{seq_len}:seed{seed}"


def describe_file(path: str | os.PathLike[str], n_samples: int, seq_len: int) -> str:
    """E.g. "file:chats.jsonl:8x128" (n_samples = the number actually used)."""
    return f"file:{Path(path).name}:{n_samples}x{seq_len}"


# --- helpers -------------------------------------------------------------------------


def _check_sizes(n_samples: int, seq_len: int) -> None:
    if n_samples < 1:
        raise CalibrationError(f"the number of calibration samples must be at least 1, got {n_samples}")
    if seq_len < 2:
        raise CalibrationError(f"the calibration sequence length must be at least 2, got {seq_len}")


def _prompt_ids(tokenizer: Any, i: int, seq_len: int) -> list[int]:
    """The rendered prompt of self-generated sequence i (cut to leave room for one token)."""
    prompt = _render(tokenizer, [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}], generation=True)
    return prompt[: seq_len - 1]


def _render(tokenizer: Any, messages: list[dict[str, str]], *, generation: bool) -> list[int]:
    """Token ids of a chat, with the chat template if the tokenizer has one."""
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    text = "\n\n".join(m["content"] for m in messages) + ("\n\n" if generation else "")
    return list(tokenizer(text)["input_ids"])


def _bos_prefix(tokenizer: Any) -> list[int]:
    """[bos] when the tokenizer adds it to plain text by default, else []."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return []
    ids = tokenizer("a")["input_ids"]
    return [bos] if ids and ids[0] == bos else []


def _is_jsonl(path: Path, text: str) -> bool:
    if path.suffix.lower() == ".jsonl":
        return True
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return first.startswith("{") and first.endswith("}")


def _jsonl_sequences(
    path: Path, text: str, tokenizer: Any, *, n_samples: int, seq_len: int
) -> list[list[int]]:
    out: list[list[int]] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if len(out) >= n_samples:
            break
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise CalibrationError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
        if isinstance(record, dict) and isinstance(record.get("text"), str):
            ids = list(tokenizer(record["text"])["input_ids"])
        elif isinstance(record, dict) and _is_chat(record.get("messages")):
            ids = _render(tokenizer, record["messages"], generation=False)
        else:
            raise CalibrationError(
                f'{path}:{lineno}: expected an object with "text" (a string) or '
                f'"messages" (a list of {{"role", "content"}} objects)'
            )
        if len(ids) >= 2:
            out.append(ids[:seq_len])
    return out


def _is_chat(messages: Any) -> bool:
    return (
        isinstance(messages, list)
        and len(messages) > 0
        and all(isinstance(m, dict) and isinstance(m.get("content"), str) and "role" in m for m in messages)
    )


def _text_chunks(text: str, tokenizer: Any, *, n_samples: int, seq_len: int) -> list[list[int]]:
    prefix = _bos_prefix(tokenizer)
    body = seq_len - len(prefix)
    # Tokenize only what n_samples chunks can use (a generous 32 characters a token).
    ids = list(tokenizer(text[: n_samples * seq_len * 32], add_special_tokens=False)["input_ids"])
    chunks = [prefix + ids[i : i + body] for i in range(0, len(ids), body)][:n_samples]
    return [c for c in chunks if len(c) >= 2]
