"""OpenAI-style errors: `{"error": {"message", "type", "param", "code"}}` with the right status.

400 for anything wrong with a request (malformed JSON, text with a lone surrogate, a field
pydantic rejects, a prompt that does not fit, a mode the model cannot run), 401 for a missing or wrong API key, 404 for an
unknown model or route, 500 for our own bugs and for llama.cpp failing (`BackendError`). The official clients turn these into
`BadRequestError`, `AuthenticationError`, `NotFoundError`, ... with the message intact.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from sdfp_edge.errors import BackendError, ContextOverflowError, SdfpError

log = logging.getLogger("sdfp_edge.server")

# pydantic puts union members and validator names into error locations; they are not fields
_NOT_FIELDS = {"str", "int", "float", "bool", "list", "dict", "none", "json-or-python"}
_SURROGATE = re.compile("[\ud800-\udfff]")  # json.loads has joined every valid pair


class APIError(Exception):
    """An error to answer with, as the OpenAI API would."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict[str, Any]:
        return error_body(self.message, type=self.type, param=self.param, code=self.code)

    def response(self) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else None
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


def error_body(message: str, *, type: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def from_user_error(e: SdfpError) -> APIError:
    """An error the model layer raised about a request (bad parameters, prompt too long...)."""
    if isinstance(e, ContextOverflowError):
        return APIError(400, str(e), code="context_length_exceeded")
    if isinstance(e, BackendError):
        return APIError(500, str(e), type="server_error")
    return APIError(400, str(e))


def check_unicode(data: Any) -> None:
    """Refuse text with a lone UTF-16 surrogate ("\\udce9" is valid JSON but not a character).

    A client that sends one has broken text; the 400 names the field rather than letting the
    tokenizer guess. Iterative: the depth is whatever json.loads accepted.
    """
    stack: list[tuple[str, Any]] = [("", data)]
    while stack:
        param, value = stack.pop()
        if isinstance(value, str):
            if m := _SURROGATE.search(value):
                where = f"{param}: " if param else ""
                raise APIError(400, f"{where}the text has a lone UTF-16 surrogate \\u{ord(m.group()):04x} at "
                                    f"character {m.start()}, which is not Unicode; send UTF-8 text",
                               param=param or None)
        elif isinstance(value, dict):
            stack += [(param, k) for k in value]
            stack += [(f"{param}.{k}" if param else str(k), v) for k, v in value.items()]
        elif isinstance(value, list):
            stack += [(f"{param}.{i}" if param else str(i), v) for i, v in enumerate(value)]


def bad_api_key() -> APIError:
    return APIError(401, "Incorrect or missing API key: send it as 'Authorization: Bearer KEY'.",
                    code="invalid_api_key")


def model_not_found(name: str, served: str) -> APIError:
    return APIError(404, f"The model '{name}' does not exist; this server serves '{served}'.",
                    param="model", code="model_not_found")


def _param(loc: Sequence[Any]) -> str | None:
    parts = [str(p) for p in loc[1:] if not (isinstance(p, str) and (p in _NOT_FIELDS or "[" in p
                                                                          or p.startswith("function-")))]
    return ".".join(parts) or None


def from_validation(errors: Sequence[dict[str, Any]]) -> APIError:
    """pydantic's error list (FastAPI's RequestValidationError) as one readable 400."""
    if not errors:
        return APIError(400, "invalid request")
    first = errors[0]
    if first.get("type") == "json_invalid":
        detail = first.get("ctx", {}).get("error", "")
        return APIError(400, f"The request body is not valid JSON ({detail}).".replace(" ()", ""))
    # the branches of a union fail separately, at one field: report that field once
    params = [_param(e.get("loc", ())) for e in errors]
    param = params[0]
    msg = first.get("msg", "invalid value").removeprefix("Value error, ")
    if tuple(first.get("loc", ())) == ("body",):
        msg = f"the request body must be a JSON object ({msg})"
    message = f"{param}: {msg}" if param else msg
    others = sum(p != param for p in params)
    if others:
        message += f" (and {others} more error{'s' if others > 1 else ''})"
    return APIError(400, message, param=param)


def install(app: FastAPI) -> None:
    """Register handlers so that every error leaves the server in OpenAI's format."""

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return from_validation(exc.errors()).response()

    @app.exception_handler(SdfpError)
    async def _user_error(request: Request, exc: SdfpError) -> JSONResponse:
        return from_user_error(exc).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        err = APIError(exc.status_code, str(exc.detail), code=code)
        return JSONResponse(err.body(), status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error on %s %s", request.method, request.url.path)
        err = APIError(500, f"internal server error: {type(exc).__name__}", type="server_error")
        return err.response()
