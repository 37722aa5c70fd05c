"""What the controller measured, kept across processes so that a one-shot run starts warm.

One small JSON file per configuration under <cache>/costs/: the key is a hash of what
changes the timings (the model file, the runtime build, threads, GPU layers, batch size,
the CPU, the drafters and their layer lists). It holds the cost model (t_verify(n), draft
steps, a long batch's per-token cost) and the acceptance counts per draft source. Written
atomically after each generation; a missing, stale or damaged file is ignored (the
controller then learns from the first cycles, as on a first run), and a cache that cannot
be written (read-only, full disk) never fails a generation.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from sdfp_edge.paths import cache_dir

SCHEMA = "sdfp-edge-costs/2"  # 2: draft steps timed without one-off work (files of 1 carry it in c)


def identity_key(identity: dict[str, Any]) -> str:
    blob = json.dumps({"schema": SCHEMA, **identity}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


class CostStore:
    def __init__(self, identity: dict[str, Any], directory: Path | None = None) -> None:
        self.identity = identity
        self.path = (directory or cache_dir() / "costs") / f"{identity_key(identity)}.json"

    def load(self) -> dict[str, Any] | None:
        try:
            doc = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(doc, dict) or doc.get("schema") != SCHEMA or not isinstance(doc.get("state"), dict):
            return None
        return doc["state"]

    def save(self, state: dict[str, Any]) -> None:
        doc = {"schema": SCHEMA, "identity": self.identity, "state": state}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".costs-", suffix=".tmp")
            try:
                with os.fdopen(fd, "w") as f:
                    json.dump(doc, f, default=str)
                os.replace(tmp, self.path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError:
            pass  # a cache: the next process learns again
