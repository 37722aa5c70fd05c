"""Layer-skip drafts: the target itself with some decoder layers left out of the graph.

Draft and target share one llama.cpp context and one KV cache. The draft reads the full
model's KV for every accepted position and writes scratch KV (only in the layers it runs)
at the draft positions, which are removed before the target verifies. Drafting stops at k
tokens or when the draft's top-1 probability falls below `threshold` (Draft & Verify and
SWIFT use about 0.8 for greedy decoding).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from sdfp_edge.runtime import draft_vocab
from sdfp_edge.runtime.backend import LlamaBackend
from sdfp_edge.metadata import choose_skip_layers
from sdfp_edge.runtime.drafters.base import Proposal, draft_autoregressively
from sdfp_edge.errors import SdfpError
from sdfp_edge.runtime.layer_skip import DraftMask
from sdfp_edge.runtime.logits_processors import LogitsProcessor
from sdfp_edge.metadata import SkipMetadata
from sdfp_edge.runtime.sampling import SamplingParams

ATTN_SHARE = 0.25  # a layer's attention block, as a share of the layer's cost (a prior only)


def layer_skip_candidates(skip_layers: Sequence[int], meta: SkipMetadata | None, *,
                          small_head: bool) -> dict[str, DraftMask]:
    """The layer-skip drafts the controller may choose between, by name (SWIFT's on-the-fly
    choice of depth, with the GGUF's FIT ranking instead of a search).

    "layerskip" is the list itself (--skip-layers or sdfp.skip_layers). From the GGUF's scores
    the runtime adds a deeper draft ("layerskip-deep": twice as many of the least sensitive
    layers, at most a third of them) and convert's sub-layer draft ("layerskip-blocks"). Each
    is its own source: its measured acceptance and cost decide, and it is never chosen where
    it does not pay. All draft over the small head (built on first use).
    """
    out = {"layerskip": DraftMask.layers(skip_layers, small_head=small_head)}
    if meta is None:  # a list from the command line: exactly that draft
        return out
    n_deep = min(2 * len(skip_layers), meta.n_layer // 3)
    if meta.layer_scores and n_deep > len(skip_layers):
        out["layerskip-deep"] = DraftMask.layers(choose_skip_layers(meta.layer_scores, n_deep), small_head=small_head)
    if meta.skip_attn or meta.skip_ffn:
        out["layerskip-blocks"] = DraftMask(tuple(sorted(meta.skip_attn)), tuple(sorted(meta.skip_ffn)), small_head)
    return out


class SkipLayersDrafter:
    """Drafts with `mask` (layer_skip.DraftMask) set: whole layers, single attention or FFN
    blocks, and optionally the small head over the backend's draft vocabulary."""

    uses_model = True

    def __init__(self, backend: LlamaBackend, skip: Sequence[int] | DraftMask, *, threshold: float = 0.8,
                 name: str = "layerskip", recorded_vocab: Sequence[int] = ()) -> None:
        """`recorded_vocab`: the GGUF's sdfp.draft_vocab, for the small head (draft_vocab.py)."""
        backend.check_skip_supported()
        self.backend = backend
        self.mask = skip if isinstance(skip, DraftMask) else DraftMask.layers(skip)
        if not (self.mask.attn or self.mask.ffn):
            raise ValueError("a layer-skip drafter needs at least one layer or block to skip")
        self.recorded_vocab = tuple(recorded_vocab)
        self.name = name
        self.skip_layers = self.mask.whole_layers
        self.threshold = threshold
        # the share of a step it still runs, attention taken as a quarter of a layer; the
        # output head makes the real figure higher (0.89-0.92 measured for 3 of 28-30 layers
        # here), which the first measured step corrects
        skipped = (ATTN_SHARE * len(self.mask.attn) + (1 - ATTN_SHARE) * len(self.mask.ffn)) / backend.n_layer
        self.cost_prior = 1.0 - skipped

    def propose(
        self, tokens: Sequence[int], k: int, sampling: SamplingParams, rng: np.random.Generator,
        processor: LogitsProcessor | None = None,
    ) -> Proposal:
        if k <= 0:
            return Proposal.empty()
        b = self.backend
        start = b.n_past
        assert start == len(tokens) - 1, "KV cache must hold all tokens but the last"
        self.prepare(tokens)  # a no-op after the engine's own call
        b.set_mask(self.mask)
        try:
            return draft_autoregressively(b, tokens, k, sampling, rng, self.threshold, processor)
        finally:
            b.set_mask(None)
            b.truncate(start)

    def prepare(self, tokens: Sequence[int]) -> None:
        """Build the small head on first use: a process that never drafts with it (plain
        decoding wherever drafts do not pay) spends nothing on it at start-up."""
        b = self.backend
        if self.mask.small_head and not b.draft_vocab:
            try:
                b.load_draft_vocab(draft_vocab.choose(b.n_vocab, recorded=self.recorded_vocab, is_eog=b.is_eog))
            except SdfpError:  # an output head with a bias or scale: draft with the full head
                self.mask = DraftMask(self.mask.attn, self.mask.ffn)
