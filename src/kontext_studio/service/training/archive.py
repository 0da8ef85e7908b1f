"""Dataset zips from the network: checked member by member before anything is written.

Refused: paths that leave the folder (absolute, ``..``, drive letters), links, too many members, too many
uncompressed bytes (zip bombs), and member types other than pictures, captions and manifests.
"""

from __future__ import annotations

import io
import shutil
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import IO

from kontext_studio.core.errors import InvalidRequest

ALLOWED_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".txt", ".csv", ".jsonl")
MAX_MEMBERS = 10_000
MAX_UNCOMPRESSED = 4 * 2**30
CHUNK = 1 << 20
MAX_RATIO = 200  # a picture or caption compressing 200:1 is a bomb, not data


def extract_dataset(data: bytes | Path, dest: Path, max_uncompressed: int = MAX_UNCOMPRESSED) -> Path:
    """Unpack a dataset zip into ``dest`` and return the dataset folder inside it.

    A zip whose members all sit in one top folder gives that folder (zipping a folder does that). ``data`` may
    be the zip's bytes or its path (then it is read from disk, never whole into memory).

    Raises:
        InvalidRequest: (field ``dataset``) naming the member at fault and why.
    """
    def bad(message: str) -> InvalidRequest:
        return InvalidRequest(f"dataset: {message}", field="dataset")

    try:
        archive = zipfile.ZipFile(data if isinstance(data, Path) else io.BytesIO(data))
    except (zipfile.BadZipFile, OSError, EOFError):
        raise bad("not a zip file; zip the dataset folder (targets, .txt captions and control/)") from None
    with archive:
        members = [m for m in archive.infolist() if not m.is_dir()]
        if not members:
            raise bad("the zip is empty")
        if len(members) > MAX_MEMBERS:
            raise bad(f"{len(members)} files; at most {MAX_MEMBERS}")
        total = 0
        for m in members:
            path = PurePosixPath(m.filename.replace("\\", "/"))
            if path.is_absolute() or ".." in path.parts or ":" in m.filename:
                raise bad(f"{m.filename!r} points outside the dataset folder")
            if (m.external_attr >> 16) & 0o170000 == 0o120000:
                raise bad(f"{m.filename!r} is a symbolic link")
            if path.name.startswith(".") or "__MACOSX" in path.parts:
                continue
            if path.suffix.lower() not in ALLOWED_SUFFIXES:
                raise bad(f"{m.filename!r}: only pictures (png, jpg, webp), .txt captions and .csv/.jsonl "
                          "manifests may be in the zip")
            total += m.file_size
            if total > max_uncompressed:
                raise bad(f"more than {max_uncompressed // 2**20} MB once unpacked")
            if m.compress_size and m.file_size / m.compress_size > MAX_RATIO:
                raise bad(f"{m.filename!r} unpacks {m.file_size / m.compress_size:.0f} times larger than stored")
        dest.mkdir(parents=True, exist_ok=True)
        kept = []
        for m in members:
            path = PurePosixPath(m.filename.replace("\\", "/"))
            if path.name.startswith(".") or "__MACOSX" in path.parts:
                continue
            target = dest.joinpath(*path.parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                with archive.open(m) as src, target.open("wb") as out:
                    shutil.copyfileobj(_Capped(src, m.file_size + 1), out, CHUNK)
                    written = out.tell()
            except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError, ValueError) as exc:
                # a corrupt member, a CRC that does not match (the header lied), encryption, or an odd method
                raise bad(f"{m.filename!r} cannot be unpacked ({exc})") from None
            if written != m.file_size:  # the header lied about the size
                raise bad(f"{m.filename!r} is {'larger' if written > m.file_size else 'smaller'} than its "
                          "header says")
            kept.append(path)
    tops = {p.parts[0] for p in kept if len(p.parts) > 1} | {"" for p in kept if len(p.parts) == 1}
    return dest / tops.pop() if len(tops) == 1 and "" not in tops else dest


class _Capped(io.RawIOBase):
    """A reader that stops after ``limit`` bytes (a member claiming a small size never unpacks more)."""

    def __init__(self, src: IO[bytes], limit: int):
        self.src, self.left = src, limit

    def read(self, n: int | None = -1) -> bytes:
        if self.left <= 0:
            return b""
        n = self.left if n is None or n < 0 else min(n, self.left)
        data = self.src.read(n)
        self.left -= len(data)
        return data
