"""Cookie sessions for the studio, with a CSRF token bound to each session.

The cookie is signed: ``<user id>.<expiry>.<nonce>.<HMAC>`` under a key derived from the server secret,
``HttpOnly`` and ``SameSite=Strict``; with a session factory the nonce also names a server-side session row,
so signing out, or revoking the API key the session was opened with, ends it at once. Every request that
changes something and is authenticated by the cookie must also carry the session's CSRF token in
``X-CSRF-Token`` (the studio's pages put it in a meta tag; its JavaScript and htmx send it). API keys in
headers need no token: a browser never adds them on its own.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from starlette.requests import HTTPConnection

from kontext_studio.core.errors import KontextError

COOKIE = "ks_session"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
LIFETIME = 12 * 3600


class CsrfRejected(KontextError):
    """A cookie-authenticated request that changes state came without its session's CSRF token."""

    code = "csrf_failed"
    http_status = 403


@dataclass(frozen=True)
class StudioSession:
    user_id: int
    expires: int
    nonce: str

    @property
    def value(self) -> str:
        return f"{self.user_id}.{self.expires}.{self.nonce}"


class StudioAuth:
    """Issue and check studio session cookies and their CSRF tokens.

    Args:
        secret: the server secret (a purpose-specific key is derived from it).
        lifetime: seconds a session stays valid.
        sessions: the database's session factory; sessions are then kept server-side and revocable (None:
            stateless signed cookies, valid until they expire).
    """

    def __init__(self, secret: bytes, lifetime: int = LIFETIME, sessions: Any = None):
        self._key = hmac.new(secret, b"kontext-studio web sessions", hashlib.sha256).digest()
        self.lifetime = lifetime
        self._db = sessions

    def _sign(self, text: str) -> str:
        return hmac.new(self._key, text.encode(), hashlib.sha256).hexdigest()

    def issue(self, user_id: int, api_key_id: int | None = None) -> tuple[str, StudioSession]:
        """A new session for ``user_id`` (opened with API key ``api_key_id``, or None for the single-user
        sign-in): (cookie value, session)."""
        session = StudioSession(user_id, int(time.time()) + self.lifetime, secrets.token_urlsafe(16))
        if self._db is not None:
            from kontext_studio.service.db.models_sessions import StudioSessionRow

            with self._db.begin() as s:
                s.add(StudioSessionRow(id=session.nonce, user_id=user_id, api_key_id=api_key_id,
                                       expires_at=datetime.fromtimestamp(session.expires, UTC)))
        return f"{session.value}.{self._sign(session.value)}", session

    def key_id(self, plaintext: str) -> int | None:
        """The id of the API key a sign-in used (looked up by its public prefix)."""
        if self._db is None:
            return None
        from kontext_studio.service.accounts.accounts_common import parse_key_prefix
        from kontext_studio.service.db import ApiKey

        prefix = parse_key_prefix(plaintext)
        with self._db() as s:
            return s.scalar(select(ApiKey.id).where(ApiKey.prefix == prefix)) if prefix else None

    def revoke(self, session: StudioSession) -> None:
        """End ``session`` server-side (sign-out)."""
        if self._db is None:
            return
        from kontext_studio.service.db.models_sessions import StudioSessionRow

        with self._db.begin() as s:
            row = s.get(StudioSessionRow, session.nonce)
            if row is not None and row.revoked_at is None:
                row.revoked_at = datetime.now(UTC)

    def _alive(self, session: StudioSession) -> bool:
        if self._db is None:
            return True
        from kontext_studio.service.db import ApiKey
        from kontext_studio.service.db.models_sessions import StudioSessionRow

        with self._db() as s:
            row = s.execute(select(StudioSessionRow.user_id, StudioSessionRow.revoked_at, ApiKey.revoked_at)
                            .outerjoin(ApiKey, ApiKey.id == StudioSessionRow.api_key_id)
                            .where(StudioSessionRow.id == session.nonce)).first()
        return row is not None and row[0] == session.user_id and row[1] is None and row[2] is None

    def read(self, cookie: str | None) -> StudioSession | None:
        """The session a cookie carries, or None when it is absent, forged or expired."""
        if not cookie or cookie.count(".") != 3:
            return None
        value, _, sig = cookie.rpartition(".")
        if not hmac.compare_digest(sig, self._sign(value)):
            return None
        uid, expires, nonce = value.split(".")
        try:
            session = StudioSession(int(uid), int(expires), nonce)
        except ValueError:
            return None
        return session if session.expires > time.time() and self._alive(session) else None

    def csrf_token(self, session: StudioSession) -> str:
        """The CSRF token of ``session`` (the pages embed it; the cookie alone cannot produce it)."""
        return self._sign("csrf:" + session.value)

    def user_id(self, conn: HTTPConnection) -> int | None:
        """The user a request's studio cookie signs in, checking CSRF on state-changing methods.

        Returns:
            The user id, or None when there is no valid studio cookie.

        Raises:
            CsrfRejected: the cookie is valid, the method changes state and the token is missing or wrong.
        """
        session = self.read(conn.cookies.get(COOKIE))
        if session is None:
            return None
        method = conn.scope.get("method", "GET")
        if method not in SAFE_METHODS:
            sent = conn.headers.get(CSRF_HEADER, "")
            if not hmac.compare_digest(sent, self.csrf_token(session)):
                raise CsrfRejected("this request is signed in by the studio's cookie but has no valid CSRF token "
                                   "(X-CSRF-Token); reload the page and try again, or use an API key")
        return session.user_id


def is_cross_site(conn: HTTPConnection) -> bool:
    """True when a browser says the request was started by another site (``Sec-Fetch-Site``) or its
    ``Origin`` is not this server; such requests never get the single-user loopback sign-in."""
    site = conn.headers.get("sec-fetch-site")
    if site in ("cross-site", "same-site"):
        return True
    origin = conn.headers.get("origin")
    if origin and origin != "null":
        own = f"{conn.url.scheme}://{conn.headers.get('host', '')}"
        return origin.rstrip("/") != own
    return origin == "null"
