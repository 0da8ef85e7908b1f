"""Signed, expiring file URLs: ``/v1/files/<key>?expires=<unix>&sig=<hmac>``.

The signature covers the key and the expiry, so a URL cannot be pointed at another file or extended;
verification is constant-time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

from kontext_studio.core.errors import KontextError


class SignatureError(KontextError):
    """A file URL whose signature is wrong or whose time has passed (HTTP 403)."""

    code = "invalid_signature"
    http_status = 403


class UrlSigner:
    """Signs and verifies file URLs.

    Args:
        secret: server secret (bytes); rotate it to invalidate every URL at once.
        ttl_seconds: default lifetime of a URL.
    """

    def __init__(self, secret: bytes, ttl_seconds: int = 3600):
        if len(secret) < 16:
            raise ValueError("the URL signing secret must be at least 16 bytes")
        self.secret = secret
        self.ttl = ttl_seconds

    def _sig(self, key: str, expires: int) -> str:
        mac = hmac.new(self.secret, f"{key}\n{expires}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).decode().rstrip("=")

    def sign(self, key: str, now: float | None = None, ttl: int | None = None) -> tuple[int, str]:
        """(expires, signature) for ``key``."""
        expires = int((now if now is not None else time.time()) + (ttl or self.ttl))
        return expires, self._sig(key, expires)

    def verify(self, key: str, expires: int, sig: str, now: float | None = None) -> None:
        """Raises:
        SignatureError: tampered key/expiry/signature, or expired.
        """
        # Compared as bytes: a signature with non-ASCII characters is simply wrong, not an error.
        if not hmac.compare_digest(self._sig(key, int(expires)).encode(), sig.encode("utf-8", "surrogatepass")):
            raise SignatureError("the file URL's signature does not match")
        if (now if now is not None else time.time()) > int(expires):
            raise SignatureError("the file URL has expired; fetch the prediction again for a fresh one")
