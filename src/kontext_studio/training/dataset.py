"""Before/after pair datasets: the layouts users already have, and a check before any GPU time is spent.

Two layouts are read:

- **ai-toolkit**: the targets (the "after" pictures) sit in one folder with a same-name ``.txt`` holding
  the instruction; the sources ("before") have the same file names in a control folder (``control/``,
  ``source/``, ``sources/`` or ``before/`` inside the dataset folder, or any folder given explicitly).
- **manifest**: a CSV (header ``source,target,instruction``) or JSONL file (one object per line with the same
  keys); paths are relative to the manifest's folder. A folder holding ``manifest.csv``/``manifest.jsonl``
  is read the same way.

``check_dataset`` opens every picture and reports missing partners, unreadable or tiny pictures,
source/target aspect mismatches, missing instructions and duplicates, with counts and the files at fault.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from kontext_studio.core.errors import InvalidRequest

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
CONTROL_FOLDERS = ("control", "source", "sources", "before")
TARGET_FOLDERS = ("target", "targets", "after")
MANIFEST_NAMES = ("manifest.jsonl", "manifest.csv", "metadata.jsonl")
# Below this the model sees only a handful of tokens: the pair teaches nothing (override with min_side).
DEFAULT_MIN_SIDE = 256


def min_side_for(resolution: int) -> int:
    """The shortest side a picture may have when training at ``resolution``: half of it (256 px at 512),
    so a picture is never blown up more than twice; the tiny test model's 128 px pairs pass at 128."""
    return max(16, int(resolution) // 2)

# Source and target are cropped to the same bucket; beyond 2 % the crop cuts different content.
ASPECT_TOLERANCE = 0.02
MAX_LISTED = 10


class DatasetError(InvalidRequest):
    """The dataset cannot be read at all (no such folder, unknown layout, malformed manifest)."""

    code = "invalid_dataset"


class Severity(StrEnum):
    ERROR = "error"  # the pair is left out; a dataset with errors is refused unless told to skip them
    WARNING = "warning"  # trained on, but probably not what the user meant


@dataclass(frozen=True)
class Pair:
    """One training example: the source picture, the edited target and the instruction between them."""

    source: Path
    target: Path
    instruction: str | None
    name: str


@dataclass
class Problem:
    """One kind of problem and every file it was found in."""

    code: str
    severity: Severity
    message: str
    fix: str
    files: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "severity": self.severity.value, "count": len(self.files)}


@dataclass
class PairStats:
    """What was measured of one usable pair (sizes and content hashes, for buckets and the cache)."""

    pair: Pair
    source_size: tuple[int, int]
    target_size: tuple[int, int]
    source_sha256: str
    target_sha256: str
    instruction: str


@dataclass
class DatasetReport:
    """The result of ``check_dataset``: counts, problems with their files, and the usable pairs."""

    root: str
    layout: str
    pairs_found: int
    usable: list[PairStats]
    problems: list[Problem]

    @property
    def errors(self) -> int:
        return sum(len(p.files) for p in self.problems if p.severity is Severity.ERROR)

    @property
    def warnings(self) -> int:
        return sum(len(p.files) for p in self.problems if p.severity is Severity.WARNING)

    @property
    def ok(self) -> bool:
        return self.errors == 0 and len(self.usable) > 0

    def data_hash(self) -> str:
        """SHA-256 over the usable pairs' contents and instructions (order-independent): the recipe's data id."""
        rows = sorted(f"{s.source_sha256}:{s.target_sha256}:{s.instruction}" for s in self.usable)
        return hashlib.sha256("\n".join(rows).encode()).hexdigest()

    def as_dict(self) -> dict[str, Any]:
        return {"root": self.root, "layout": self.layout, "pairs_found": self.pairs_found,
                "usable": len(self.usable), "errors": self.errors, "warnings": self.warnings, "ok": self.ok,
                "data_hash": self.data_hash() if self.usable else None,
                "problems": [p.as_dict() for p in self.problems]}

    def summary(self) -> str:
        """A few lines a person can act on: counts, then each problem with up to ten files and the fix."""
        lines = [f"{self.root} ({self.layout}): {self.pairs_found} pair(s) found, {len(self.usable)} usable, "
                 f"{self.errors} error(s), {self.warnings} warning(s)"]
        for p in self.problems:
            shown = ", ".join(p.files[:MAX_LISTED]) + (f" and {len(p.files) - MAX_LISTED} more"
                                                       if len(p.files) > MAX_LISTED else "")
            lines.append(f"{p.severity.value} {p.code} ({len(p.files)}): {p.message}: {shown}. Fix: {p.fix}")
        return "\n".join(lines)


def _images_in(folder: Path) -> dict[str, Path]:
    return {p.stem: p for p in sorted(folder.iterdir()) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES}


def _find_manifest(root: Path) -> Path | None:
    if root.is_file():
        return root
    for name in MANIFEST_NAMES:
        if (root / name).is_file():
            return root / name
    return None


def _read_manifest(path: Path) -> list[dict[str, Any]]:
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(text.splitlines())
        missing = {"source", "target"} - set(reader.fieldnames or [])
        if missing:
            raise DatasetError(f"dataset: {path.name} has no column(s) {', '.join(sorted(missing))}; the header "
                               "must be source,target,instruction", field="dataset")
        return [dict(row) for row in reader]
    if path.suffix.lower() in (".jsonl", ".json"):
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise DatasetError(f"dataset: {path.name} line {n} is not JSON ({exc}); write one object per "
                                   'line: {"source": ..., "target": ..., "instruction": ...}',
                                   field="dataset") from None
            if not isinstance(row, dict):
                raise DatasetError(f"dataset: {path.name} line {n} is not a JSON object", field="dataset")
            rows.append(row)
        return rows
    raise DatasetError(f"dataset: {path.name} is neither a .csv nor a .jsonl manifest", field="dataset")


def discover(root: str | Path, control: str | Path | None = None) -> tuple[str, list[Pair], list[Problem]]:
    """Find the pairs of a dataset without opening the pictures.

    Args:
        root: the dataset folder (ai-toolkit layout or holding a manifest) or a manifest file.
        control: the sources' folder for the ai-toolkit layout when it is not inside ``root``.

    Returns:
        The layout name, the pairs found and the missing-partner problems.

    Raises:
        DatasetError: the path does not exist or no known layout matches.
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise DatasetError(f"dataset: {root} does not exist", field="dataset")
    missing = Problem("missing_partner", Severity.ERROR, "no matching source or target",
                      "give every target a source with the same file name (or fix the manifest paths)")
    manifest = _find_manifest(root) if control is None else None
    if manifest is not None:
        base = manifest.parent
        pairs: list[Pair] = []
        for n, row in enumerate(_read_manifest(manifest), 1):
            src, tgt = str(row.get("source") or "").strip(), str(row.get("target") or "").strip()
            label = f"{manifest.name}:{n}"
            if not src or not tgt:
                missing.files.append(f"{label} (empty source or target)")
                continue
            s, t = base / src, base / tgt
            absent = [str(p.relative_to(base) if p.is_relative_to(base) else p) for p in (s, t) if not p.is_file()]
            if absent:
                missing.files.append(f"{label} ({', '.join(absent)} not found)")
                continue
            instruction = str(row.get("instruction") or row.get("caption") or "").strip() or None
            pairs.append(Pair(s, t, instruction, Path(tgt).stem if Path(tgt).stem else label))
        return "manifest", pairs, [missing] if missing.files else []
    if not root.is_dir():
        raise DatasetError(f"dataset: {root} is a file but not a .csv/.jsonl manifest", field="dataset")
    control_dir = Path(control).expanduser() if control else next(
        (root / c for c in CONTROL_FOLDERS if (root / c).is_dir()), None)
    if control_dir is None or not control_dir.is_dir():
        raise DatasetError(
            f"dataset: {root} has no manifest (manifest.csv / manifest.jsonl) and no control folder "
            f"({', '.join(CONTROL_FOLDERS)}); put the sources in {root}/control with the targets' file names, "
            "or pass --control", field="dataset")
    target_dir = next((root / t for t in TARGET_FOLDERS if (root / t).is_dir()), root)
    targets, sources = _images_in(target_dir), _images_in(control_dir)
    pairs = []
    for stem, target in targets.items():
        if stem not in sources:
            missing.files.append(f"{target.name} (no {control_dir.name}/{stem}.*)")
            continue
        caption = target.with_suffix(".txt")
        instruction = caption.read_text(encoding="utf-8").strip() or None if caption.is_file() else None
        pairs.append(Pair(sources[stem], target, instruction, stem))
    missing.files += [f"{control_dir.name}/{src.name} (no target {stem}.*)" for stem, src in sources.items()
                      if stem not in targets]
    return "ai-toolkit", pairs, [missing] if missing.files else []


def _measure(path: Path) -> tuple[tuple[int, int], str]:
    data = path.read_bytes()
    with Image.open(path) as img:
        img.load()  # decode fully: a truncated file fails here, not in the middle of training
        size = img.size
    return size, hashlib.sha256(data).hexdigest()


def check_dataset(root: str | Path, control: str | Path | None = None, default_instruction: str | None = None,
                  min_side: int = DEFAULT_MIN_SIDE) -> DatasetReport:
    """Open every picture of a dataset and report what would go wrong in training.

    Args:
        root: dataset folder or manifest file (see the module docstring).
        control: the sources' folder (ai-toolkit layout) when not inside ``root``.
        default_instruction: used for pairs without a caption; without it a missing caption is an error.
        min_side: the shortest side a picture may have.

    Returns:
        The report; ``report.usable`` holds the pairs that passed, ``report.ok`` whether it trains as is.

    Raises:
        DatasetError: the dataset cannot be read at all.
    """
    layout, pairs, problems = discover(root, control)
    unreadable = Problem("unreadable", Severity.ERROR, "not a readable image",
                         "re-export the picture as PNG or JPEG, or remove the pair")
    tiny = Problem("too_small", Severity.ERROR, f"shorter side below {min_side} px",
                   f"use pictures of at least {min_side} px, or train at a smaller --resolution")
    aspect = Problem("aspect_mismatch", Severity.ERROR, "source and target have different aspect ratios",
                     "crop both to the same framing; they are cut to one working size together")
    caption = Problem("missing_caption", Severity.ERROR if default_instruction is None else Severity.WARNING,
                      "no instruction (.txt caption or manifest column)" if default_instruction is None else
                      f"no instruction; the default {default_instruction!r} is used",
                      "write the instruction next to the target (same name, .txt), or pass --instruction "
                      "for all pairs")
    dupes = Problem("duplicate", Severity.WARNING, "same source and target pictures as an earlier pair",
                    "remove the copy: duplicates weigh that example twice")
    usable: list[PairStats] = []
    seen: dict[tuple[str, str], str] = {}
    for pair in pairs:
        try:
            (ssize, ssha), (tsize, tsha) = _measure(pair.source), _measure(pair.target)
        except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as exc:
            unreadable.files.append(f"{pair.name} ({exc.__class__.__name__})")
            continue
        small = [f"{p.name} {s[0]}x{s[1]}" for p, s in ((pair.source, ssize), (pair.target, tsize))
                 if min(s) < min_side]
        if small:
            tiny.files.append(f"{pair.name} ({', '.join(small)})")
            continue
        ra, rb = ssize[0] / ssize[1], tsize[0] / tsize[1]
        if abs(ra - rb) / max(ra, rb) > ASPECT_TOLERANCE:
            aspect.files.append(f"{pair.name} (source {ssize[0]}x{ssize[1]}, target {tsize[0]}x{tsize[1]})")
            continue
        if not pair.instruction:
            caption.files.append(pair.name)
            if default_instruction is None:
                continue
        key = (ssha, tsha)
        if key in seen:
            dupes.files.append(f"{pair.name} (same as {seen[key]})")
        else:
            seen[key] = pair.name
        usable.append(PairStats(pair, ssize, tsize, ssha, tsha, pair.instruction or str(default_instruction)))
    problems += [p for p in (unreadable, tiny, aspect, caption, dupes) if p.files]
    return DatasetReport(str(root), layout, len(pairs) + sum(
        len(p.files) for p in problems if p.code == "missing_partner"), usable, problems)
