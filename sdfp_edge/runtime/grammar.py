"""llama.cpp's grammar sampler (GBNF), as a mask over logits rows, and JSON output formats.

Besides backend.py, this is the only module that calls llama.cpp's low-level API, and only
its grammar sampler: `llama_sampler_init_grammar` parses GBNF against the model's vocabulary,
`llama_sampler_apply` sets the logits of the tokens the grammar forbids to -inf,
`llama_sampler_accept` advances it by a token, `llama_sampler_clone` copies its state (to
follow drafted tokens without committing to them). llama.cpp aborts the process when asked
to accept a token the grammar forbids, so `accept` checks first.

JSON schemas become GBNF with llama-cpp-python's converter (`json_schema_to_gbnf`, a port of
llama.cpp's). It enforces a subset of JSON Schema; a schema using a validation keyword it
would silently ignore (minimum, uniqueItems, not...) is refused, so that the output always
matches the schema it was asked for.
"""

from __future__ import annotations

import ctypes
import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from sdfp_edge.errors import InvalidRequestError

# validation keywords the converter does not enforce (annotations such as title are fine)
UNENFORCED = frozenset({
    "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf", "uniqueItems",
    "contains", "minContains", "maxContains", "not", "if", "then", "else", "patternProperties",
    "propertyNames", "dependentRequired", "dependentSchemas", "dependencies", "minProperties",
    "maxProperties", "unevaluatedProperties", "unevaluatedItems",
})
_TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])
_PROBE = 64  # candidates examined at once when only the best allowed token is needed


def json_object_gbnf() -> str:
    """Any JSON object (response_format {"type": "json_object"})."""
    from llama_cpp.llama_grammar import JSON_GBNF

    return JSON_GBNF


def unenforced_keywords(schema: Any, where: str = "$") -> list[str]:
    """'path: keyword' for each keyword in `schema` (and its subschemas) in UNENFORCED."""
    if not isinstance(schema, dict):
        return []
    found = [f"{where}: {k}" for k in schema if k in UNENFORCED]
    subschemas: list[tuple[str, Any]] = []
    for key in ("properties", "$defs", "definitions"):
        if isinstance(schema.get(key), dict):
            subschemas += [(f"{where}.{key}.{name}", sub) for name, sub in schema[key].items()]
    for key in ("items", "prefixItems", "anyOf", "oneOf", "allOf", "additionalProperties"):
        value = schema.get(key)
        if isinstance(value, list):
            subschemas += [(f"{where}.{key}[{i}]", sub) for i, sub in enumerate(value)]
        elif isinstance(value, dict):
            subschemas.append((f"{where}.{key}", value))
    for path, sub in subschemas:
        found += unenforced_keywords(sub, path)
    return found


def json_schema_gbnf(schema: Any) -> str:
    """GBNF for JSON matching `schema`; InvalidRequestError when the converter refuses it or
    would ignore part of it."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    if not isinstance(schema, dict):
        raise InvalidRequestError("the JSON schema must be an object")
    ignored = unenforced_keywords(schema)
    if ignored:
        raise InvalidRequestError(f"the JSON schema uses keywords that structured output cannot enforce "
                                  f"({', '.join(ignored[:5])}{', ...' if len(ignored) > 5 else ''})")
    try:
        return json_schema_to_gbnf(json.dumps(schema))
    except RecursionError:
        raise InvalidRequestError("the JSON schema is nested too deeply") from None
    except Exception as e:  # noqa: BLE001 - the converter raises bare Exceptions, KeyErrors...
        raise InvalidRequestError(f"the JSON schema cannot be turned into a grammar ({type(e).__name__}: {e})") from None


class Grammar:
    """One grammar state over one vocabulary; `clone()` for a state that may be thrown away."""

    def __init__(self, vocab: Any, gbnf: str, *, root: str = "root", _sampler: Any = None) -> None:
        import llama_cpp

        self._lib = llama_cpp
        self._vocab = vocab
        if _sampler is None:
            _sampler = llama_cpp.llama_sampler_init_grammar(vocab, gbnf.encode(), root.encode())
            if not _sampler:
                raise InvalidRequestError("the grammar could not be parsed (llama.cpp rejected it)")
        self._smpl = _sampler
        self.gbnf, self.root = gbnf, root

    def clone(self) -> Grammar:
        return Grammar(self._vocab, self.gbnf, root=self.root, _sampler=self._lib.llama_sampler_clone(self._smpl))

    def _apply(self, ids: npt.NDArray[np.int32], logits: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """The logits of `ids` with forbidden tokens at -inf."""
        data = np.empty(len(ids), dtype=_TOKEN_DATA)
        data["id"], data["logit"], data["p"] = ids, logits, 0.0
        arr = self._lib.llama_token_data_array(
            data=data.ctypes.data_as(ctypes.POINTER(self._lib.llama_token_data)),
            size=len(ids), selected=-1, sorted=False)
        self._lib.llama_sampler_apply(self._smpl, ctypes.byref(arr))
        return data["logit"]

    def allows(self, token: int) -> bool:
        return bool(np.isfinite(self._apply(np.array([token], dtype=np.int32), np.zeros(1, np.float32))[0]))

    def mask(self, row: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
        """A logits row [V] with every forbidden token at -inf (examines the whole vocabulary)."""
        return self._apply(np.arange(len(row), dtype=np.int32), np.asarray(row, dtype=np.float32))

    def mask_top(self, row: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
        """The row with forbidden tokens at -inf from the top down to the best allowed one.

        Its argmax is that of `mask(row)`, for a fraction of the work (greedy decoding).
        """
        out = np.array(row, dtype=np.float32)
        if len(out) <= _PROBE:
            return self.mask(out)
        top = np.argpartition(-out, _PROBE)[:_PROBE].astype(np.int32)
        masked = self._apply(top, out[top])
        if not np.isfinite(masked).any():  # none of the likeliest is allowed: examine them all
            return self.mask(out)
        out[top] = masked
        return out

    def accept(self, token: int) -> None:
        if not self.allows(token):
            raise InvalidRequestError(f"token {token} is not allowed by the grammar here")
        self._lib.llama_sampler_accept(self._smpl, token)

    def accept_all(self, tokens: Sequence[int]) -> bool:
        """Accept tokens while the grammar allows them; False at the first it forbids."""
        for t in tokens:
            if not self.allows(t):
                return False
            self._lib.llama_sampler_accept(self._smpl, t)
        return True

    def close(self) -> None:
        if self._smpl:
            self._lib.llama_sampler_free(self._smpl)
            self._smpl = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass
