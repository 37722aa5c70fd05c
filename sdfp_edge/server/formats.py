"""`response_format`: text, any JSON object, or JSON matching a schema, as a GBNF grammar.

OpenAI's shapes: {"type": "text"}, {"type": "json_object"}, and {"type": "json_schema",
"json_schema": {"name", "schema", "strict"}}; llama.cpp's server also takes
{"type": "json_object", "schema": {...}}. The schema must be valid JSON Schema (checked with
`jsonschema`) and within what the grammar converter enforces (sdfp_edge.runtime.grammar).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from sdfp_edge.errors import InvalidRequestError
from sdfp_edge.runtime.grammar import json_object_gbnf, json_schema_gbnf


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", allow_inf_nan=False, populate_by_name=True)


def check_json_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A schema that is valid JSON Schema (its own $schema's draft, else 2020-12) and convertible."""
    import jsonschema

    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        cls.check_schema(schema)
    except jsonschema.SchemaError as e:
        at = "".join(f"[{p!r}]" for p in e.path)
        raise ValueError(f"not a valid JSON schema{' at ' + at if at else ''}: {e.message}") from None
    try:
        json_schema_gbnf(schema)
    except InvalidRequestError as e:
        raise ValueError(str(e)) from None
    return schema


class JSONSchemaSpec(_Strict):
    name: str | None = None
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None

    @field_validator("schema_")
    @classmethod
    def _valid(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        return None if v is None else check_json_schema(v)


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaSpec | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")  # llama.cpp's server, with json_object

    @field_validator("schema_")
    @classmethod
    def _valid(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        return None if v is None else check_json_schema(v)

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("type 'json_schema' needs a 'json_schema' object with the 'schema'")
        return self

    @property
    def json_schema_given(self) -> dict[str, Any] | None:
        return self.json_schema.schema_ if self.json_schema is not None else self.schema_

    def gbnf(self) -> str | None:
        """The grammar the output must follow; None: free text."""
        if self.type == "text":
            return None
        schema = self.json_schema_given
        return json_object_gbnf() if schema is None else json_schema_gbnf(schema)
