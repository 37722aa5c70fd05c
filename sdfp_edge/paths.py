"""Where sdfp-edge keeps what it downloads and builds (never inside the repository)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """$SDFP_EDGE_CACHE, else $XDG_CACHE_HOME/sdfp-edge, else ~/.cache/sdfp-edge.

    tools/build_runtime.py repeats this rule: it runs before the package is installed.
    """
    if os.environ.get("SDFP_EDGE_CACHE"):
        return Path(os.environ["SDFP_EDGE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "sdfp-edge"
