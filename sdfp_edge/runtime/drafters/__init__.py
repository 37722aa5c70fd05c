"""Drafters: cheap proposals of the next k tokens, one method per module.

Contract (see `base.py`): `propose(tokens, k, sampling, rng)` is called when the KV cache
holds tokens[:-1]; it returns a `Proposal` and leaves the target's KV cache and layer mask
exactly as it found them.
"""

from sdfp_edge.runtime.drafters.base import Drafter, Proposal
from sdfp_edge.runtime.drafters.draft_model import DraftModelDrafter
from sdfp_edge.runtime.drafters.prompt_lookup import PromptLookupDrafter
from sdfp_edge.runtime.drafters.skip_layers import SkipLayersDrafter

__all__ = ["Drafter", "Proposal", "DraftModelDrafter", "PromptLookupDrafter", "SkipLayersDrafter"]
