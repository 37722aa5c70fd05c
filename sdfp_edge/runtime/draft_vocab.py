"""The small draft head's tokens: which ids a layer-skip draft computes logits for.

A draft pays the full output head (15% of Qwen2.5-1.5B's weights with its 151,936 tokens,
about 21% of SmolLM2-135M's cost) although it only needs to rank the tokens it is likely to
propose. FR-Spec (ACL 2025) restricted an 8B model's 128k-token draft head to its 32k most
frequent tokens. Here the head covers, up to `size` ids:

1. every end-of-generation token (a draft must be able to propose the end);
2. the tokens the model produced in its own calibration generations, as `sdfp-edge convert`
   recorded them in `sdfp.draft_vocab` (none in files without that key);
3. the lowest ids: byte-level BPE vocabularies (Qwen2, SmolLM2, Llama 3) number tokens in
   merge order, so a low id is a piece that was frequent in the tokenizer's training text.

The target still verifies over the full vocabulary: greedy output is unchanged, and for
sampling a draft distribution that is zero outside the subset is a valid q for rejection
sampling (verify.py), so the output distribution stays the target's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from sdfp_edge.runtime.layer_skip import DRAFT_VOCAB_MULTIPLE

DEFAULT_SIZE = 32768
END_SCAN = 1024  # special tokens sit at the end of these vocabularies: where to look for end tokens


def choose(n_vocab: int, *, size: int = DEFAULT_SIZE, recorded: Iterable[int] = (),
           is_eog: Callable[[int], bool] | None = None) -> list[int]:
    """Sorted ids, a multiple of DRAFT_VOCAB_MULTIPLE long (the whole vocabulary, rounded down,
    when `size` reaches it).

    Example: choose(151936, size=32768, recorded=[151000]) holds 151000, the end tokens
    near the top of the vocabulary, and the lowest ids up to 32768 in all.
    """
    if size <= 0:
        raise ValueError(f"the draft vocabulary needs a positive size, got {size}")
    cap = (min(size, n_vocab) // DRAFT_VOCAB_MULTIPLE) * DRAFT_VOCAB_MULTIPLE
    if cap == 0:
        raise ValueError(f"a vocabulary of {n_vocab} tokens is too small for a draft head")
    ends = [t for t in range(max(0, n_vocab - END_SCAN), n_vocab) if is_eog and is_eog(t)]
    chosen: dict[int, None] = {}
    for t in [*ends, *sorted(set(int(r) for r in recorded if 0 <= int(r) < n_vocab))]:
        if len(chosen) == cap:
            break
        chosen[t] = None
    t = 0
    while len(chosen) < cap:
        chosen.setdefault(t, None)
        t += 1
    return sorted(chosen)
