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


def cost_dir() -> Path:
    """Where the controller keeps what it measured (runtime/cost_store.py): $SDFP_EDGE_COST_DIR,
    else <cache_dir()>/costs. Its own variable, so that a test suite or a bench can keep its
    cost files apart while models, data and the runtime build are still found in the cache."""
    if os.environ.get("SDFP_EDGE_COST_DIR"):
        return Path(os.environ["SDFP_EDGE_COST_DIR"])
    return cache_dir() / "costs"


NO_STORED_COSTS = "SDFP_EDGE_NO_STORED_COSTS"


def stored_costs_enabled() -> bool:
    """False when $SDFP_EDGE_NO_STORED_COSTS is set (to anything but "", "0"): runs then neither
    read nor write stored costs, and learn from scratch as on a first run."""
    return os.environ.get(NO_STORED_COSTS, "") in ("", "0")


def env_without_stored_costs() -> dict[str, str]:
    """This process's environment, for a child that must neither read nor change what `auto`
    learned in the user's runs (a measurement, a bench worker)."""
    return {**os.environ, NO_STORED_COSTS: "1"}
