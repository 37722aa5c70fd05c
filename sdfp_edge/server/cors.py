"""Which browser pages may call the server (CORS), with Starlette's own middleware.

Pages served from this machine (http(s)://localhost, 127.0.0.1 or [::1], any port) are
allowed by default, so a local web app works out of the box; any other origin only when
listed (`--cors-origin`, repeatable; `*` allows every origin). Preflight requests are
answered before the API-key check (browsers never send credentials on a preflight); the
requests that follow still need the key.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from starlette.middleware.cors import CORSMiddleware

from sdfp_edge.errors import InvalidRequestError

LOCAL_ORIGINS = r"https?://(localhost|127\.0\.0\.1|\[::1\])(:\d{1,5})?"
_ORIGIN = re.compile(r"[a-z][a-z0-9+.-]*://[^/\s?#]+")


def check_origins(origins: Sequence[str]) -> tuple[str, ...]:
    """What a browser sends as `Origin` (scheme://host[:port], no path), or '*'."""
    out = []
    for o in origins:
        o = o.strip().rstrip("/")
        if o != "*" and not _ORIGIN.fullmatch(o):
            raise InvalidRequestError(f"--cors-origin '{o}' is not an origin: give scheme://host[:port], "
                                      "e.g. https://app.example or http://192.168.1.5:3000, or '*'")
        out.append(o)
    return tuple(out)


def cors_options(origins: Sequence[str]) -> dict[str, Any]:
    """CORSMiddleware's keyword arguments for the extra `origins` (besides localhost's)."""
    return {
        "allow_origins": ["*"] if "*" in origins else list(origins),
        "allow_origin_regex": LOCAL_ORIGINS,
        "allow_methods": ["GET", "POST", "OPTIONS"],
        "allow_headers": ["*"],  # Authorization, Content-Type and the SDKs' x-stainless-* headers
        "allow_private_network": True,  # Chrome asks before a public page may reach localhost
        "max_age": 600,
    }


__all__ = ["CORSMiddleware", "check_origins", "cors_options", "LOCAL_ORIGINS"]
