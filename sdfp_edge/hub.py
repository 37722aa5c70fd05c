"""Models by name from the Hugging Face Hub: `-m owner/repo[:QUANT]`, as llama.cpp's `-hf` spells it.

A reference names a repository and, after a colon, a quantization (`Q4_K_M`, `Q8_0`,
`UD-Q4_K_XL`...) or one of its files (`:sub/model-Q5_K_M.gguf`); `hf.co/` in front is allowed
(Ollama's spelling). `resolve` lists the repository once (the Hub API, with sizes and sha256),
picks the GGUF of the quantization asked, else Q4_K_M, else the smallest of 4 bits or more
(every part of a split GGUF, `-00001-of-0000N.gguf`), and downloads it with huggingface_hub,
pinned to the commit the listing saw: its cache (HF_HOME, HF_HUB_CACHE), HF_TOKEN, HF_ENDPOINT;
a dropped connection is resumed where it stopped (a Range request), and a run that fails
keeps the files it finished (the parts of a split GGUF), so a rerun fetches only the rest.
A fresh download is checked against the listed sha256. A cached file
costs the listing request only; with HF_HUB_OFFLINE=1, or when the Hub cannot be reached, the
same choice is made among the cached files.

    resolve(parse_ref("bartowski/Qwen_Qwen3-0.6B-GGUF:Q8_0"), log=print)  # -> snapshot path

huggingface_hub is an install dependency, imported inside the functions only: a command that
loads a local file never pays for its import.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdfp_edge.errors import HubConnectionError, ModelFileError, ModelNotFoundError, SdfpError

DEFAULT_QUANT = "Q4_K_M"
MIN_SENSIBLE_BITS = 4  # below this (Q2, Q3, IQ1...) the default choice takes a file only when nothing else is there
PREFIXES = ("https://huggingface.co/", "huggingface.co/", "hf.co/")

_REF = re.compile(r"(?P<owner>[A-Za-z0-9][\w.-]*)/(?P<name>[\w.-]+)(?::(?P<tag>[^:\s]+))?")
_SPLIT = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$", re.IGNORECASE)
_QUANT = re.compile(r"(?<![A-Za-z0-9])((?:UD-)?(?:I?Q[1-8](?:_[A-Za-z0-9]+)*|TQ[12]_0|MXFP4(?:_MOE)?|BF16|F16|FP16"
                    r"|F32|FP32))(?![A-Za-z0-9])", re.IGNORECASE)
_NOT_MODELS = ("mmproj", "imatrix")  # GGUFs in model repositories that are not language models

Log = Callable[[str], Any]


@dataclass(frozen=True)
class Ref:
    """owner/repo and what follows its colon: a quantization, a file name ending in .gguf, or None."""

    repo: str
    tag: str | None = None

    def __str__(self) -> str:
        return self.repo + (f":{self.tag}" if self.tag else "")


@dataclass(frozen=True)
class GGUFSet:
    """One model file of a repository: a single GGUF or every part of a split one."""

    label: str  # the quantization read from the name (upper case), else the file name
    files: tuple[str, ...]  # repository paths; files[0] is the one llama.cpp opens
    size: int | None  # bytes, all parts together (None: not listed)

    def describe(self) -> str:
        return f"{self.label} ({_size(self.size)})"


def parse_ref(value: str) -> Ref | None:
    """owner/repo[:QUANT] (optionally after hf.co/), or None when `value` is not written that way."""
    v = value.strip()
    for prefix in PREFIXES:
        if v.lower().startswith(prefix):
            v = v[len(prefix):]
            break
    m = _REF.fullmatch(v)
    if m is None or m["name"].lower().endswith(".gguf") or m["name"] in (".", ".."):
        return None
    return Ref(f"{m['owner']}/{m['name']}", m["tag"])


def is_explicit(value: str) -> bool:
    """hf.co/owner/repo: meant for the Hub even when a local path of that name exists."""
    return value.strip().lower().startswith(PREFIXES)


def quant_label(path: str) -> str:
    """The quantization a GGUF's name shows ('Q4_K_M'), else its file name without .gguf."""
    whole = _SPLIT.sub(".gguf", path)
    *folders, name = whole.split("/")
    stem = name[:-5] if name.lower().endswith(".gguf") else name
    for part in (stem, *reversed(folders)):
        found = _QUANT.findall(part)
        if found:
            return found[-1].upper()
    return stem


def quant_bits(label: str) -> int | None:
    """Bits per weight the label names (Q4_K_M: 4, BF16: 16, MXFP4: 4); None when it names none."""
    if _QUANT.fullmatch(label) is None:
        return None
    m = re.search(r"(\d+)", label.upper().removeprefix("UD-"))
    return int(m.group(1)) if m else None


def gguf_sets(files: dict[str, int | None]) -> list[GGUFSet]:
    """The repository's model files: single GGUFs and complete split sets (projectors and
    importance matrices left out), sorted by name. `files`: repository path -> size."""
    singles: list[str] = []
    parts: dict[str, dict[int, str]] = {}
    counts: dict[str, int] = {}
    for f in sorted(files):
        base = f.rsplit("/", 1)[-1].lower()
        if not base.endswith(".gguf") or any(w in base for w in _NOT_MODELS):
            continue
        m = _SPLIT.search(f)
        if m is None:
            singles.append(f)
        else:
            key = f[: m.start()]
            parts.setdefault(key, {})[int(m.group(1))] = f
            counts[key] = max(counts.get(key, 0), int(m.group(2)))
    groups = [(f,) for f in singles]
    groups += [tuple(p[i] for i in range(1, counts[k] + 1)) for k, p in parts.items()
               if set(p) == set(range(1, counts[k] + 1))]
    out = []
    for g in sorted(groups):
        sizes = [files[f] for f in g]
        out.append(GGUFSet(quant_label(g[0]), g, None if None in sizes else sum(s or 0 for s in sizes)))
    return out


def choose(sets: list[GGUFSet], ref: Ref, *, where: str = "") -> tuple[GGUFSet, str | None]:
    """The set `ref` asks for, and a note when the choice was the default's fallback.

    Raises ModelNotFoundError for a quantization or file that is not there, listing those that are."""
    if not sets:
        raise ModelNotFoundError(f"{ref.repo}{where} has no GGUF model files")
    available = ", ".join(s.describe() for s in sets)
    tag = ref.tag
    if tag is not None and tag.lower().endswith(".gguf"):
        for s in sets:
            if tag in s.files:
                return s, None
        raise ModelNotFoundError(f"{ref.repo}{where} has no GGUF file {tag}; it has {available}")
    wanted = (tag or DEFAULT_QUANT).upper()
    matches = [s for s in sets if s.label == wanted]
    if matches:
        return min(matches, key=lambda s: (s.files[0].count("/"), s.files[0])), None
    if tag is not None:
        raise ModelNotFoundError(f"{ref.repo}{where} has no {tag} GGUF; it has {available}")
    sensible = [s for s in sets if (quant_bits(s.label) or 0) >= MIN_SENSIBLE_BITS]
    if sensible:
        pick = min(sensible, key=lambda s: (s.size if s.size is not None else float("inf"), s.files[0]))
        why = f"the smallest of {MIN_SENSIBLE_BITS} bits or more"
    else:
        pick = max(sets, key=lambda s: (s.size or 0, s.files[0]))
        why = f"the largest (none has {MIN_SENSIBLE_BITS} bits or more)"
    note = None if len(sets) == 1 else \
        f"note: {ref.repo}{where} has no {DEFAULT_QUANT}; taking {pick.describe()}, {why} (of {available})"
    return pick, note


def resolve(ref: Ref, *, log: Log | None = None, cached_only: bool = False) -> Path:
    """The local path of the GGUF `ref` names (its first part if split), downloading it if needed.

    `cached_only`: never use the network (as HF_HUB_OFFLINE=1 does)."""
    say: Log = log or (lambda _msg: None)
    hf = _hf()
    if cached_only or hf.constants.HF_HUB_OFFLINE:
        return _from_cache(ref, say, why="HF_HUB_OFFLINE is set" if not cached_only else "")
    try:
        info = hf.HfApi().model_info(ref.repo, files_metadata=True)
    except Exception as e:  # noqa: BLE001 - translated below, or re-raised
        if not _is_network_error(e):
            raise _translate(e, ref) from None
        try:
            path = _from_cache(ref, say, why="")
        except ModelNotFoundError as missing:
            raise HubConnectionError(f"cannot reach {hf.constants.ENDPOINT} ({_short(e)}), and {missing}; "
                                     "check the network, HF_ENDPOINT, or a proxy") from None
        say(f"note: cannot reach {hf.constants.ENDPOINT} ({_short(e)}); using the cached {path.name}")
        return path
    siblings = info.siblings or []
    sizes = {s.rfilename: (s.lfs.size if s.lfs is not None else s.size) for s in siblings}
    sets = gguf_sets(sizes)
    if not sets:
        shown = ", ".join(sorted(sizes)[:6]) + (", ..." if len(sizes) > 6 else "")
        raise ModelNotFoundError(f"{ref.repo} has no GGUF model files (it holds {shown or 'no files'}); "
                                 "sdfp-edge runs GGUF models: look for a repository of GGUF conversions "
                                 "(often named ...-GGUF)")
    chosen, note = choose(sets, ref)
    if note:
        say(note)
    sha256 = {s.rfilename: s.lfs.sha256 for s in siblings if s.lfs is not None}
    return _download(hf, ref, chosen, info.sha or "main", sha256, say)


def _download(hf: Any, ref: Ref, chosen: GGUFSet, revision: str, sha256: dict[str, str], say: Log) -> Path:
    fresh = [f for f in chosen.files
             if not isinstance(hf.try_to_load_from_cache(ref.repo, f, revision=revision), str)]
    if fresh:
        parts = f", {len(chosen.files)} parts" if len(chosen.files) > 1 else ""
        say(f"downloading {ref.repo}:{chosen.label} ({chosen.files[0]}{parts}, {_size(chosen.size)}) "
            f"into {hf.constants.HF_HUB_CACHE}")
    paths = []
    for f in chosen.files:
        try:
            path = Path(hf.hf_hub_download(ref.repo, f, revision=revision))
        except Exception as e:  # noqa: BLE001 - translated below, or re-raised
            raise _translate(e, ref, f) from None
        if f in fresh and f in sha256:
            _verify(path, sha256[f], f"{ref.repo}/{f}")
        _check_gguf(path, f"{ref.repo}: {f}")
        paths.append(path)
    return paths[0]


def _from_cache(ref: Ref, say: Log, *, why: str) -> Path:
    """The same choice among the files of the repository's cached snapshots (newest first)."""
    revisions = [r for repo in _cached_repos() if repo.repo_id == ref.repo for r in repo.revisions]
    revisions.sort(key=lambda r: ("main" in r.refs, r.last_modified), reverse=True)
    seen: list[GGUFSet] = []
    for rev in revisions:
        files = {str(f.file_path.relative_to(rev.snapshot_path)): f.size_on_disk for f in rev.files}
        sets = gguf_sets(files)
        seen += sets
        if not sets:
            continue
        try:
            chosen, note = choose(sets, ref, where=" (cached)")
        except ModelNotFoundError:
            continue
        if note:
            say(note)
        path = rev.snapshot_path / chosen.files[0]
        _check_gguf(path, f"{ref.repo}: {chosen.files[0]}")
        return path
    held = f"; the cache holds {', '.join(sorted({s.describe() for s in seen}))}" if seen else ""
    because = f" ({why})" if why else ""
    raise ModelNotFoundError(f"{ref} is not in the Hugging Face cache{held}{because}; "
                             f"run `sdfp-edge models pull {ref}` online first")


def cached_models() -> list[dict[str, Any]]:
    """What the Hugging Face cache holds of GGUF models: one row per quantization and revision."""
    rows = []
    for repo in _cached_repos():
        for rev in sorted(repo.revisions, key=lambda r: r.last_modified, reverse=True):
            files = {str(f.file_path.relative_to(rev.snapshot_path)): f.size_on_disk for f in rev.files}
            for s in gguf_sets(files):
                rows.append({"name": f"{repo.repo_id}:{s.label}", "repo": repo.repo_id, "quant": s.label,
                             "files": list(s.files), "size_mb": round((s.size or 0) / 1e6),
                             "revision": rev.commit_hash, "refs": sorted(rev.refs),
                             "path": str(rev.snapshot_path / s.files[0])})
    return rows


def _cached_repos() -> Iterable[Any]:
    hf = _hf()
    try:
        info = hf.scan_cache_dir()
    except hf.CacheNotFound:
        return []
    return [r for r in info.repos if r.repo_type == "model"]


def _verify(path: Path, want: str, what: str) -> None:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    got = h.hexdigest()
    if got != want:
        blob = path.resolve()
        path.unlink(missing_ok=True)
        blob.unlink(missing_ok=True)
        raise ModelFileError(f"{what}: the downloaded file's sha256 is {got[:16]}..., the Hub lists "
                             f"{want[:16]}...; removed it from the cache: run the command again")


def _check_gguf(path: Path, what: str) -> None:
    with open(path, "rb") as f:
        head = f.read(4)
    if head != b"GGUF":
        raise ModelFileError(f"{what} is not a GGUF file (it starts with {head!r}); it cannot be loaded")


def _translate(e: Exception, ref: Ref, file: str | None = None) -> Exception:
    """A one-line SdfpError for what huggingface_hub raised; other exceptions as they are."""
    from huggingface_hub import errors

    hf = _hf()
    where = hf.constants.ENDPOINT
    what = f"{ref.repo}/{file}" if file else ref.repo
    if isinstance(e, errors.GatedRepoError):
        return ModelNotFoundError(f"{ref.repo} is gated: accept its conditions at {where}/{ref.repo} and set "
                                  "HF_TOKEN to a token of that account")
    if isinstance(e, errors.RepositoryNotFoundError):
        return ModelNotFoundError(f"{ref.repo}: no such model repository on {where} (nor a local file of that "
                                  "name); if it is private or gated, set HF_TOKEN")
    if isinstance(e, errors.RevisionNotFoundError):
        return ModelNotFoundError(f"{ref.repo}: revision not found on {where}")
    if isinstance(e, errors.LocalEntryNotFoundError):
        return HubConnectionError(f"cannot download {what}: {where} cannot be reached and the file is not "
                                  "cached")
    if isinstance(e, errors.EntryNotFoundError):
        return ModelNotFoundError(f"{what}: listed by the Hub but not found there (404); try again later")
    if _is_network_error(e):
        return HubConnectionError(f"download of {what} was interrupted ({_short(e)}); run the command again "
                                  "(finished files are kept)")
    if isinstance(e, errors.HfHubHTTPError):
        status = getattr(getattr(e, "response", None), "status_code", "an error")
        return HubConnectionError(f"{where} answered {status} for {what}: {_short(e)}")
    if isinstance(e, OSError) and "Consistency check failed" in str(e):
        return HubConnectionError(f"download of {what} ended early ({_short(e)}); run the command again "
                                  "(finished files are kept)")
    return e


def _is_network_error(e: BaseException) -> bool:
    """A transport failure (httpx's TransportError family, a socket error, offline mode), not an HTTP status."""
    names = {c.__name__ for c in type(e).__mro__}
    return bool(names & {"TransportError", "ConnectionError", "TimeoutError", "OfflineModeIsEnabled"}) \
        and "HfHubHTTPError" not in names


def _short(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def _size(n: int | None) -> str:
    if n is None:
        return "size not listed"
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB" if n >= 1e6 else f"{n / 1e3:.0f} kB"


def _hf() -> Any:
    """huggingface_hub (an install dependency; a --no-deps install may lack it)."""
    try:
        import huggingface_hub
        import huggingface_hub.constants
        import huggingface_hub.errors
    except ImportError:
        raise SdfpError("models from the Hugging Face Hub need huggingface_hub: pip install huggingface_hub") from None
    return huggingface_hub
