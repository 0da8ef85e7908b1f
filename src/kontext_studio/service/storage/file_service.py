"""Files as a service: uploads (checked, stripped of private metadata, recorded as the uploader's), listings,
and reads through signed URLs. The ``/v1/files`` router and the studio call it."""

from __future__ import annotations

import re
from dataclasses import dataclass

from kontext_studio.core.errors import InvalidRequest
from kontext_studio.service.accounts.accounts_common import NotFound
from kontext_studio.service.inputs import upload_key, upload_sha256
from kontext_studio.service.security.uploads import MEDIA_TYPES, sniff_image, strip_private_metadata
from kontext_studio.service.storage.files_sql import FileRecord, SqlFiles
from kontext_studio.service.storage.signed_urls import UrlSigner
from kontext_studio.service.storage.storage_base import Storage

FILE_TYPES = {"png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg", "webp": "image/webp"}
_KEY = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*(/[A-Za-z0-9_-][A-Za-z0-9._-]*)*")


@dataclass(frozen=True)
class StoredFile:
    """An upload as stored: its key, content type and size."""

    key: str
    content_type: str
    size: int


def check_key(key: str) -> str:
    """``key`` when it is a plain storage key (no ``..``, no empty or hidden segments, no odd characters).

    Raises:
        InvalidRequest: anything else.
    """
    if len(key) > 300 or not _KEY.fullmatch(key) or any(part.startswith(".") for part in key.split("/")):
        raise InvalidRequest(f"file id: {key[:80]!r} is not a file id this server issues", field="key")
    return key


class FileService:
    """Uploads and downloads.

    Args:
        storage: where the bytes live.
        files: which user owns which upload.
        signer: signs and checks download URLs.
    """

    def __init__(self, storage: Storage, files: SqlFiles, signer: UrlSigner):
        self.storage, self.files, self.signer = storage, files, signer

    def upload(self, user_id: int, data: bytes) -> StoredFile:
        """Check an image, strip its private metadata (GPS, camera EXIF), store it by content and record it
        as the user's. Blocking: call it off the event loop.

        Raises:
            UnsupportedMediaType, UnprocessableImage: not an allowed, sane image.
        """
        kind = sniff_image(data)
        clean = strip_private_metadata(data, keep_recipe=True)
        key = upload_key(clean, kind)
        if not self.storage.exists(key):
            self.storage.put(key, clean)
        self.files.record(user_id, key, upload_sha256(key), MEDIA_TYPES[kind], len(clean))
        return StoredFile(key, MEDIA_TYPES[kind], len(clean))

    def list(self, user_id: int, limit: int = 100) -> list[FileRecord]:
        """The user's uploads, newest first."""
        return self.files.list(user_id, max(1, min(500, limit)))

    def read(self, key: str, expires: int, sig: str) -> tuple[bytes, str]:
        """The bytes and content type behind a signed URL.

        Raises:
            InvalidRequest: not a key this server issues.
            SignatureError: tampered or expired.
            NotFound: signed, but the file is gone.
        """
        check_key(key)
        self.signer.verify(key, expires, sig)
        try:
            data = self.storage.get(key)
        except (FileNotFoundError, IsADirectoryError, ValueError):
            raise NotFound(f"file {key} is no longer stored") from None
        return data, FILE_TYPES.get(key.rsplit(".", 1)[-1], "application/octet-stream")
