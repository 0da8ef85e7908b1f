"""Where the model weights come from: a hub repo id (HF cache), a local diffusers folder, or BFL's
single-file checkpoint (transformer in one ``.safetensors``, the other parts from a base folder/repo).

Nothing here downloads unless asked to (``allow_download``); ``locate`` only looks.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kontext_studio.core.errors import WeightsNotFound
from kontext_studio.core.registry import DEFAULT_MODEL, SINGLE_FILE_NAME

MARKER_FILE = "kontext_studio.json"  # written by the tiny-model builder; absent in real weights

HOW_TO_GET = (
    "To get FLUX.1 Kontext [dev]: (1) accept its licence at https://huggingface.co/{repo} while signed in, "
    "(2) create a read token and set HF_TOKEN=..., then run `kontext edit` again (the first run downloads "
    "about 34 GB into the Hugging Face cache). Or point KONTEXT_MODEL / --model at a local diffusers folder, "
    "or at BFL's single file {single} together with --base pointing at a folder holding the other parts."
)


@dataclass(frozen=True)
class ModelSource:
    """A parsed model location.

    Attributes:
        kind: ``hub``, ``folder`` or ``single_file``.
        location: repo id, folder path or file path.
        base: for ``single_file``, where the text encoders, VAE and configs come from.
        revision: hub revision (branch, tag or commit).
    """

    kind: str
    location: str
    base: str | None = None
    revision: str | None = None

    @classmethod
    def parse(cls, text: str | None = None, base: str | None = None, revision: str | None = None) -> ModelSource:
        """Classify ``text``: an existing folder, a ``.safetensors``/``.sft``/``.gguf`` file, else a hub repo id."""
        text = (text or DEFAULT_MODEL).strip()
        p = Path(text).expanduser()
        if p.suffix.lower() in (".safetensors", ".sft", ".gguf"):
            return cls("single_file", str(p), base or DEFAULT_MODEL, revision)
        if p.is_dir() or text.startswith((".", "/", "~")) or text.count("/") != 1:
            return cls("folder", str(p), None, None)
        return cls("hub", text, None, revision)

    def describe(self) -> str:
        if self.kind == "single_file":
            return f"single file {self.location} (other parts from {self.base})"
        return f"{self.kind} {self.location}"


@dataclass(frozen=True)
class WeightsStatus:
    """Whether the weights are present, where, and what they are."""

    found: bool
    path: str | None
    source: ModelSource
    revision: str | None = None
    random_weights: bool = False
    resolution: int = 1024
    message: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "found": self.found,
            "path": self.path,
            "source": self.source.describe(),
            "revision": self.revision,
            "random_weights": self.random_weights,
            "resolution": self.resolution,
            "message": self.message,
        }


def _marker(folder: Path) -> dict[str, Any]:
    f = folder / MARKER_FILE
    if f.is_file():
        data: dict[str, Any] = json.loads(f.read_text())
        return data
    return {}


def _missing_parts(folder: Path) -> str | None:
    """What a diffusers folder lacks: model_index.json, or a component folder it names."""
    index = folder / "model_index.json"
    if not index.is_file():
        return "model_index.json missing"
    spec = json.loads(index.read_text())
    missing = [name for name, value in spec.items()
               if not name.startswith("_") and isinstance(value, list) and value[0] is not None
               and not (folder / name).is_dir()]
    return f"missing {', '.join(missing)}" if missing else None


def _hub_snapshot(repo: str, revision: str | None, token: str | None, download: bool) -> str | None:
    from huggingface_hub import snapshot_download

    try:
        return str(snapshot_download(repo, revision=revision, token=token, local_files_only=True))
    except Exception:
        if not download:
            return None
    try:
        return str(snapshot_download(repo, revision=revision, token=token))
    except Exception as exc:
        raise WeightsNotFound(
            f"could not download {repo}: {exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}. "
            + HOW_TO_GET.format(repo=repo, single=SINGLE_FILE_NAME)
        ) from None


def locate(source: ModelSource, token: str | None = None, download: bool = False) -> WeightsStatus:
    """Find the weights for ``source`` (and download them from the hub when ``download`` is set).

    Returns:
        A WeightsStatus; ``found`` is False with a how-to message when they are missing.

    Raises:
        WeightsNotFound: only when a requested download fails.
    """
    how = HOW_TO_GET.format(repo=DEFAULT_MODEL if source.kind != "hub" else source.location,
                            single=SINGLE_FILE_NAME)
    if source.kind == "folder":
        folder = Path(source.location)
        if not (folder / "model_index.json").is_file():
            return WeightsStatus(False, None, source, message=f"no diffusers model at {folder} "
                                 f"(model_index.json missing). {how}")
        mark = _marker(folder)
        return WeightsStatus(True, str(folder), source, random_weights=bool(mark.get("random_weights")),
                             resolution=int(mark.get("resolution", 1024)))
    if source.kind == "single_file":
        f = Path(source.location)
        if not f.is_file():
            return WeightsStatus(False, None, source, message=f"checkpoint not found: {f}. {how}")
        base = locate(ModelSource.parse(source.base, revision=source.revision), token, download)
        if not base.found:
            return WeightsStatus(False, None, source, message=f"the single file {f.name} needs the other parts "
                                 f"(text encoders, VAE, configs): {base.message}")
        return WeightsStatus(True, str(f), source, revision=base.revision,
                             random_weights=base.random_weights, resolution=base.resolution)
    path = _hub_snapshot(source.location, source.revision, token, download)
    if path is None:
        return WeightsStatus(False, None, source, message=f"{source.location} is not in the Hugging Face cache. {how}")
    if missing := _missing_parts(Path(path)):
        return WeightsStatus(False, None, source, message=f"the cached copy of {source.location} is incomplete "
                             f"({missing}); an interrupted download? Run again with HF_TOKEN set to finish it.")
    mark = _marker(Path(path))
    return WeightsStatus(True, path, source, revision=Path(path).name, random_weights=bool(mark.get("random_weights")),
                         resolution=int(mark.get("resolution", 1024)))


def fingerprint(path: str | Path, cache_dir: str | Path | None = None) -> str:
    """A content hash of a weights file or folder, cached by (path, size, mtime) so it is computed once.

    For a folder: the hash of every weight, config and tokenizer file's hash with its relative path
    (hidden files and folders, such as download metadata, are skipped: they change without the weights).
    """
    p = Path(path)
    if p.is_file():
        files = [p]
    else:
        files = sorted(f for f in p.rglob("*")
                       if f.is_file() and not any(part.startswith(".") for part in f.relative_to(p).parts))
    cache_file = Path(cache_dir) / "hashes.json" if cache_dir else None
    cache: dict[str, str] = {}
    if cache_file and cache_file.is_file():
        try:
            cache = json.loads(cache_file.read_text())
        except ValueError:
            cache = {}
    outer = hashlib.sha256()
    digest = ""
    changed = False
    for f in files:
        st = f.stat()
        key = f"{f.resolve()}:{st.st_size}:{st.st_mtime_ns}"
        digest = cache.get(key, "")
        if not digest:
            h = hashlib.sha256()
            with open(f, "rb") as fh:
                while block := fh.read(1 << 22):
                    h.update(block)
            digest = cache[key] = h.hexdigest()
            changed = True
        outer.update(f"{f.relative_to(p) if p.is_dir() else f.name}:{digest}\n".encode())
    if cache_file and changed:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(cache))
        tmp.replace(cache_file)  # atomic: a concurrent reader never sees half a file
    return digest if p.is_file() else outer.hexdigest()


def weights_bytes(source: ModelSource, token: str | None = None) -> int | None:
    """Bytes of the weight files behind ``source`` if they are on this machine (None otherwise): what loading
    them will roughly take in memory (the files are stored in the dtype they load in)."""
    status = locate(source, token, download=False)
    if not status.found or status.path is None:
        return None
    p = Path(status.path)
    files = [p] if p.is_file() else [f for f in p.rglob("*") if f.suffix in (".safetensors", ".bin", ".gguf")]
    total = sum(f.stat().st_size for f in files if f.exists())
    if source.kind == "single_file" and source.base:
        total += weights_bytes(ModelSource.parse(source.base, revision=source.revision), token) or 0
    return total
