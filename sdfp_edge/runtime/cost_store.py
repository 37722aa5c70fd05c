"""What the controller measured, kept across processes so that a one-shot run starts warm.

One small JSON file per configuration under paths.cost_dir() ($SDFP_EDGE_COST_DIR, else
<cache>/costs/): the key is a hash of what changes the timings (the model file, the runtime
build, threads, GPU layers, batch size, the CPU, the drafters and their layer lists). It
holds the cost model as ratios to one token's time (V(n), draft steps, a long batch's
token; CostModel.state: only samples taken on a quiet machine, weighted by age) and the
acceptance counts per draft source. Written atomically after each generation; a missing,
stale or damaged file is ignored (the controller then learns from the first cycles, as on a
first run), and a cache that cannot be written (read-only, full disk) never fails a
generation. SDFP_EDGE_NO_STORED_COSTS=1 turns the store off (nothing read or written);
`sdfp-edge costs list|clear` shows and deletes the files (cli/costs.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from sdfp_edge.paths import cost_dir, stored_costs_enabled

# 2: draft steps timed without one-off work (files of 1 carry it in c); 3: ratios to one token,
# quiet samples only, with their ages (files of 2 may hold a busy machine's absolute times)
SCHEMA = "sdfp-edge-costs/3"


def identity_key(identity: dict[str, Any]) -> str:
    blob = json.dumps({"schema": SCHEMA, **identity}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


class CostStore:
    def __init__(self, identity: dict[str, Any], directory: Path | None = None) -> None:
        self.identity = identity
        self.path = (directory or cost_dir()) / f"{identity_key(identity)}.json"

    def load(self) -> dict[str, Any] | None:
        if not stored_costs_enabled():
            return None
        try:
            doc = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(doc, dict) or doc.get("schema") != SCHEMA or not isinstance(doc.get("state"), dict):
            return None
        return doc["state"]

    def save(self, state: dict[str, Any]) -> None:
        if not stored_costs_enabled():
            return
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


def summary(doc: dict[str, Any]) -> dict[str, Any]:
    """What `sdfp-edge costs list` shows of one file: model, machine, when, V(2), V(8), and per
    draft source its first draft's acceptance (rate, and the evidence behind it)."""
    ident = doc.get("identity") if isinstance(doc.get("identity"), dict) else {}
    state = doc.get("state") if isinstance(doc.get("state"), dict) else {}
    cost = state.get("cost") if isinstance(state.get("cost"), dict) else {}
    model = ident.get("model")
    ratios = cost.get("V") if isinstance(cost.get("V"), dict) else {}
    accept = {}
    for source, a in (state.get("acceptance") or {}).items():
        try:
            reached, accepted = float(a["reached"][0]), float(a["accepted"][0])
        except (LookupError, TypeError, ValueError):
            continue
        if reached > 0:
            accept[str(source)] = {"rate": accepted / reached, "trials": reached}
    return {
        "model": Path(model[0]).name if isinstance(model, list) and model else None,
        "machine": ", ".join(str(x) for x in (ident.get("cpu"), f"{ident.get('n_threads')} threads",
                                              f"{ident.get('n_gpu_layers')} GPU layers")),
        "drafters": ident.get("drafters"),
        "saved_at": state.get("saved_at"),
        "t_token_ms": cost["t_token"] * 1e3 if isinstance(cost.get("t_token"), (int, float)) else None,
        "V2": ratios.get("2"), "V8": ratios.get("8"),
        "acceptance": accept,
    }


def stored_files(directory: Path | None = None) -> list[tuple[Path, dict[str, Any] | None]]:
    """Every cost file in `directory` (default: paths.cost_dir()), with its document (of any
    schema: check doc["schema"] == SCHEMA), or None for one that cannot be read."""
    root = directory or cost_dir()
    try:
        paths = sorted(p for p in root.iterdir() if p.suffix == ".json" and p.is_file())
    except OSError:
        return []
    out: list[tuple[Path, dict[str, Any] | None]] = []
    for p in paths:
        try:
            doc = json.loads(p.read_text())
        except (OSError, ValueError):
            doc = None
        out.append((p, doc if isinstance(doc, dict) else None))
    return out


def file_model(doc: dict[str, Any] | None) -> str | None:
    """The model file a cost file was measured on (its full path), or None."""
    ident = (doc or {}).get("identity")
    model = ident.get("model") if isinstance(ident, dict) else None
    return str(model[0]) if isinstance(model, list) and model else None
