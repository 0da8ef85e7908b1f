"""Server settings on SQL, secret values encrypted (AES-GCM) under a key derived from the server secret."""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from kontext_studio.core.engine import Editor
from kontext_studio.core.errors import InvalidRequest, KontextError
from kontext_studio.service.db import utcnow
from kontext_studio.service.db.models_admin import ServerSetting

BFL_KEY = "bfl_api_key"


class SettingsUnavailable(KontextError):
    """Secret settings need the ``cryptography`` package to be stored encrypted."""

    code = "settings_unavailable"
    http_status = 501


@dataclass(frozen=True)
class SettingState:
    """What may be shown about a secret setting: whether it is set and when (never the value)."""

    name: str
    set: bool
    updated_at: datetime | None


class SqlServerSettings:
    """Encrypted named settings.

    Args:
        sessions: the database session factory.
        secret: the server secret (the encryption key is derived from it, so a database copy alone does not
            reveal the values).
    """

    def __init__(self, sessions: sessionmaker[Session], secret: bytes):
        self._sessions = sessions
        self._key = hmac.new(secret, b"kontext-studio server settings", hashlib.sha256).digest()

    def _cipher(self) -> Any:
        try:
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        except ImportError:
            raise SettingsUnavailable("storing keys needs the cryptography package on this server") from None
        return AESGCM(self._key)

    def put(self, name: str, value: str, by: int | None) -> None:
        """Store ``value`` (encrypted) under ``name``."""
        nonce = os.urandom(12)
        blob = nonce + self._cipher().encrypt(nonce, value.encode(), name.encode())
        with self._sessions.begin() as s:
            row = s.get(ServerSetting, name)
            if row is None:
                s.add(ServerSetting(name=name, value=blob, updated_at=utcnow(), updated_by=by))
            else:
                row.value, row.updated_at, row.updated_by = blob, utcnow(), by

    def get(self, name: str) -> str | None:
        """The stored value, or None (also when it cannot be decrypted: another server secret)."""
        with self._sessions() as s:
            row = s.get(ServerSetting, name)
            if row is None:
                return None
            blob = bytes(row.value)
        try:
            return str(self._cipher().decrypt(blob[:12], blob[12:], name.encode()).decode())
        except Exception:
            return None

    def delete(self, name: str) -> None:
        """Forget ``name``."""
        with self._sessions.begin() as s:
            row = s.get(ServerSetting, name)
            if row is not None:
                s.delete(row)

    def state(self, name: str) -> SettingState:
        """Whether ``name`` is set and since when (for the settings page)."""
        with self._sessions() as s:
            row = s.get(ServerSetting, name)
            return SettingState(name, row is not None, row.updated_at if row is not None else None)


def install_bfl_key(editor: Editor, key: str | None) -> None:
    """Point the hosted tiers at BFL with ``key`` (None: take the stored backend away).

    Raises:
        InvalidRequest: a key that cannot be one (empty, spaces, far too long).
    """
    if key is None:
        editor.use_backend("bfl_api", None)
        return
    key = key.strip()
    if not key or len(key) > 200 or any(c.isspace() for c in key):
        raise InvalidRequest("the BFL API key must be one word of up to 200 characters, as shown in your BFL "
                             "account", field="key")
    from kontext_studio.core.backends.bfl_api import BflApiBackend, BflConfig

    editor.use_backend("bfl_api", BflApiBackend(BflConfig(api_key=key)))
