"""What the service needs from file storage."""

from __future__ import annotations

from abc import ABC, abstractmethod


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
