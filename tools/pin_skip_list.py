#!/usr/bin/env python3
"""Commit a model's skip list: copy the sdfp.* metadata of a converted GGUF to models/NAME.skip.json.

Figures: The committed skip lists of docs/models.md and the default model's list in docs/convert.md
(models/NAME.skip.json). Measures nothing itself.

    sdfp-edge convert HF_DIR --gguf $(sdfp-edge models path NAME) -o /tmp/annotated.gguf
    python tools/pin_skip_list.py NAME /tmp/annotated.gguf

`sdfp-edge models fetch NAME` then annotates the downloaded file with it, without torch.
"""

from __future__ import annotations

import dataclasses
import json
import sys

from sdfp_edge import models
from sdfp_edge.metadata import read_model_info, read_skip_metadata


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    name, path = sys.argv[1], sys.argv[2]
    spec = models.spec(name)
    meta = read_skip_metadata(path)
    if meta is None:
        sys.exit(f"{path} has no sdfp metadata")
    meta.check(architecture=spec.architecture, n_layer=spec.n_layer)
    if read_model_info(path) != (spec.architecture, spec.n_layer):
        sys.exit(f"{path} is not {name}")
    out = models.skip_list_file(name)
    out.write_text(json.dumps(dataclasses.asdict(meta), indent=1) + "\n")
    print(f"wrote {out}: skip {list(meta.skip_layers)}")


if __name__ == "__main__":
    main()
