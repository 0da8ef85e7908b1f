"""What the service needs from file storage."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path


class Storage(ABC):
    """Content-addressed blobs under opaque keys (``uploads/<sha>.png``, ``outputs/<job>/0.png``)."""

    @abstractmethod
    def put(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key`` atomically (a reader never sees half a file)."""

    @abstractmethod
    def get(self, key: str) -> bytes:
        """The bytes under ``key``.

        Raises:
            FileNotFoundError: no such key.
        """

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether ``key`` is stored."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key`` if present."""

    def put_file(self, key: str, path: Path) -> None:
        """Store a file's content under ``key`` (implementations copy it without reading it whole)."""
        self.put(key, Path(path).read_bytes())
