"""Who uploaded which file: the ``files`` table behind ``/v1/files``.

Blobs are stored once by content hash (``uploads/<sha256>.<ext>``); ownership is a row per (user, blob). A
file id in a prediction input is honoured only for a user with such a row, so knowing (or guessing) another
user's file id gives nothing: the answer is the same "no uploaded file" as for an id that never existed.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from kontext_studio.service.db import File


@dataclass(frozen=True)
class FileRecord:
    """One uploaded file as its owner sees it."""

    id: str
    key: str
    sha256: str
    content_type: str
    size: int
    created_at: datetime


def _record(row: File) -> FileRecord:
    return FileRecord(row.id, row.path, row.sha256, row.content_type, row.size, row.created_at)


class SqlFiles:
    """Upload ownership in the service database.

    Args:
        sessions: session factory of a migrated database.
        readers: session factory for reads (e.g. one whose SQLite transactions take no write lock, so the
            ownership check of every submit naming a file does not queue behind writers); None: ``sessions``.
    """

    def __init__(self, sessions: Callable[[], AbstractContextManager[Session]],
                 readers: Callable[[], AbstractContextManager[Session]] | None = None):
        self._sessions = sessions
        self._readers = readers or sessions

    def record(self, user_id: int, key: str, sha256: str, content_type: str, size: int) -> FileRecord:
        """Note that ``user_id`` uploaded the blob under ``key``; uploading the same bytes again reuses the row.

        Returns:
            The user's record of the file.
        """
        query = select(File).where(File.user_id == user_id, File.sha256 == sha256, File.path == key)
        # A reference sent again (the same picture inline in many submits) is found by a read that takes no
        # write lock; only a new one is written (looked up again under the lock, so two at once make one row).
        with self._readers() as s:
            found = s.scalar(query)
            if found is not None:
                return _record(found)
        with self._sessions() as s, s.begin():
            row = s.scalar(query)
            if row is None:
                row = File(user_id=user_id, sha256=sha256, path=key, content_type=content_type, size=size)
                s.add(row)
                s.flush()
            return _record(row)

    def owns(self, user_id: int, key: str) -> bool:
        """Whether ``user_id`` uploaded the blob under ``key``."""
        with self._readers() as s:
            return s.scalar(select(File.id).where(File.user_id == user_id, File.path == key).limit(1)) is not None

    def list(self, user_id: int, limit: int = 100) -> list[FileRecord]:
        """The user's uploads, newest first."""
        with self._readers() as s:
            rows = s.scalars(select(File).where(File.user_id == user_id)
                             .order_by(File.created_at.desc(), File.id.desc()).limit(max(1, min(500, limit))))
            return [_record(r) for r in rows]
