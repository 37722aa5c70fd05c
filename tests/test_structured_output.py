"""Structured output on SmolLM2: llama.cpp's grammar sampler constrains every verified row.

The output always parses and matches its schema, greedy output is the same in every mode,
drafted tokens the grammar forbids are rejected like any other, and a draft masked exactly
as the target is (the model drafting for itself) is always accepted.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

jsonschema = pytest.importorskip("jsonschema")

from sdfp_edge.api import Model  # noqa: E402
from sdfp_edge.errors import InvalidRequestError  # noqa: E402
from sdfp_edge.runtime.grammar import Grammar, json_object_gbnf, json_schema_gbnf, unenforced_keywords  # noqa: E402
from sdfp_edge.runtime.logits_processors import LogitsProcessor  # noqa: E402

pytestmark = pytest.mark.slow

SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 40}, "city": {"type": "string", "maxLength": 40},
                   "job": {"type": "string", "maxLength": 40}},
    "required": ["name", "city", "job"],
    "additionalProperties": False,
}
EXTRACT = [{"role": "user", "content": "Extract the person as JSON with keys name, city, job: "
                                      "'Alice Smith is an engineer who lives in Paris.'"}]


@pytest.fixture(scope="module")
def smol(smollm2_plain: Path, smollm2: Path):
    m = Model(smollm2_plain, n_ctx=1024, n_threads=2, skip_layers=[4, 9, 14, 19, 24], draft_model=smollm2,
              threshold=0.3)
    yield m
    m.close()


def test_greedy_json_is_the_same_in_every_mode(smol: Model) -> None:
    g = json_schema_gbnf(SCHEMA)
    plain = smol.chat(EXTRACT, max_tokens=80, mode="off", grammar=g, temperature=0)
    assert plain.finish_reason == "stop"
    jsonschema.validate(json.loads(plain.text), SCHEMA)
    for mode in ("lookup", "layerskip", "draft-model", "auto"):
        out = smol.chat(EXTRACT, max_tokens=80, mode=mode, grammar=g, temperature=0)
        assert out.tokens == plain.tokens, mode
        if mode == "draft-model":  # masked exactly as the target, the model's drafts always pass
            assert smol.last_stats["drafted"] >= 10 and smol.last_stats["acceptance_rate"] > 0.95


def test_sampled_json_always_matches_its_schema(smol: Model) -> None:
    g = json_schema_gbnf(SCHEMA)
    for seed, mode in enumerate(["auto", "lookup", "layerskip", "draft-model"] * 2):
        out = smol.chat(EXTRACT, max_tokens=100, mode=mode, grammar=g, temperature=1.2, seed=seed)
        assert out.finish_reason == "stop", (mode, out.text)
        jsonschema.validate(json.loads(out.text), SCHEMA)
    any_object = smol.chat([{"role": "user", "content": "Describe a cat."}], max_tokens=120,
                           grammar=json_object_gbnf(), temperature=1.0, seed=1)
    assert any_object.finish_reason == "stop" and isinstance(json.loads(any_object.text), dict)


def test_drafts_the_grammar_forbids_are_rejected(smol: Model, monkeypatch: pytest.MonkeyPatch) -> None:
    """Prompt lookup drafts the prompt's words; where JSON cannot have them the mask sets the
    target's probability of the drafted token to 0, and the draft is rejected."""
    forbidden = []
    real_apply = LogitsProcessor.apply

    def spy(self, history, logits, drafted=()):  # type: ignore[no-untyped-def]
        out = real_apply(self, history, logits, drafted)
        if len(out) == len(drafted) + 1:  # a verify
            forbidden.extend(int(d) for i, d in enumerate(drafted) if np.isneginf(out[i][d]))
        return out

    monkeypatch.setattr(LogitsProcessor, "apply", spy)
    g = json_schema_gbnf(SCHEMA)
    for seed in range(3):
        out = smol.chat(EXTRACT, max_tokens=100, mode="lookup", grammar=g, temperature=1.0, seed=seed)
        jsonschema.validate(json.loads(out.text), SCHEMA)
    assert forbidden and smol.last_stats["drafted"] > smol.last_stats["accepted"]


def test_bad_grammars_and_schemas_are_refused(smol: Model) -> None:
    with pytest.raises(InvalidRequestError):
        Grammar(smol.backend.vocab, "root ::= undefined-rule")
    with pytest.raises(InvalidRequestError):
        smol.chat(EXTRACT, max_tokens=4, grammar="root ::= (")
    with pytest.raises(InvalidRequestError, match="cannot enforce"):
        json_schema_gbnf({"type": "object", "properties": {"age": {"type": "integer", "minimum": 0}}})
    with pytest.raises(InvalidRequestError):
        json_schema_gbnf({"type": "no-such-type"})
    assert unenforced_keywords({"properties": {"minimum": {"type": "integer"}}}) == []  # a property's name
    found = unenforced_keywords({"items": [{"uniqueItems": True}], "$defs": {"a": {"not": {}}}})
    assert sorted(found) == ["$.$defs.a: not", "$.items[0]: uniqueItems"]
