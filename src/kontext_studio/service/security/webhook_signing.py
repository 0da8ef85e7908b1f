"""Webhook signatures in the Standard Webhooks scheme (the one Replicate uses).

A delivery carries three headers:

- ``webhook-id``: the message id, the SAME on every retry of one event, so receivers can deduplicate;
- ``webhook-timestamp``: integer Unix seconds of this attempt;
- ``webhook-signature``: ``v1,<base64 HMAC-SHA256(key, f"{id}.{timestamp}.{body}")>``, possibly several
  space-separated signatures (during a secret rotation both old and new are sent).

The secret is ``whsec_`` + base64 of the key bytes; the HMAC key is the decoded bytes, not the string.
Receivers check the timestamp against a tolerance so a captured delivery cannot be replayed later.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from collections.abc import Mapping

from kontext_studio.core.errors import KontextError

__all__ = [
    "DEFAULT_TOLERANCE",
    "SECRET_PREFIX",
    "WebhookVerificationError",
    "headers",
    "new_message_id",
    "new_secret",
    "sign",
    "stable_message_id",
    "verify",
]

SECRET_PREFIX = "whsec_"
DEFAULT_TOLERANCE = 300  # seconds, as the Standard Webhooks reference libraries
SIGNATURE_VERSION = "v1"


class WebhookVerificationError(KontextError):
    """A webhook delivery whose signature, timestamp or headers do not check out."""

    code = "invalid_webhook_signature"
    http_status = 401


def new_secret(nbytes: int = 32) -> str:
    """A fresh signing secret, ``whsec_`` + base64 of ``nbytes`` random bytes.

    Args:
        nbytes: key length (24-64 bytes is what Standard Webhooks allows; 32 by default).

    Returns:
        The secret string to store and to show the user once.
    """
    if not 24 <= nbytes <= 64:
        raise ValueError(f"nbytes must be between 24 and 64, got {nbytes}")
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(nbytes)).decode("ascii")


def new_message_id() -> str:
    """A random message id (``msg_`` + 22 url-safe characters); create it once per event, not per try."""
    return "msg_" + secrets.token_urlsafe(16)


def stable_message_id(*parts: str) -> str:
    """A message id derived from what the event is (e.g. prediction id and event type).

    Retries from another process (after a worker restart) then still send the same ``webhook-id``.

    Args:
        *parts: identifying strings, e.g. ``(prediction_id, "completed")``.

    Returns:
        ``msg_`` + 32 hex characters.
    """
    digest = hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()
    return "msg_" + digest[:32]


def _key(secret: str) -> bytes:
    raw = secret[len(SECRET_PREFIX):] if secret.startswith(SECRET_PREFIX) else secret
    try:
        key = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the webhook secret is not 'whsec_' followed by base64") from None
    if not key:
        raise ValueError("the webhook secret is empty")
    return key


def _signature(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode("ascii")


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value for one delivery.

    Args:
        secret: ``whsec_<base64 key>`` (a bare base64 key is accepted too).
        msg_id: the ``webhook-id``.
        timestamp: the ``webhook-timestamp`` (integer Unix seconds).
        body: the exact bytes sent as the request body.

    Returns:
        ``"v1,<base64 signature>"``.

    Raises:
        ValueError: the secret is not valid base64, or the id contains a period.
    """
    if not msg_id or "." in msg_id:
        # The id is a field of the signed "id.timestamp.body" string: a period would make it ambiguous.
        raise ValueError(f"webhook message id must be non-empty and contain no '.', got {msg_id!r}")
    return f"{SIGNATURE_VERSION},{_signature(_key(secret), msg_id, int(timestamp), bytes(body))}"


def headers(secret: str, msg_id: str, body: bytes, now: float | None = None) -> dict[str, str]:
    """The three Standard Webhooks headers for one delivery attempt.

    Call it again for each retry with the SAME ``msg_id``: the timestamp and signature are fresh, the id
    stays, so receivers can tell a retry from a new event.

    Args:
        secret: the ``whsec_`` secret.
        msg_id: the event's message id.
        body: the exact body bytes.
        now: Unix time to stamp (default: the current time).

    Returns:
        ``{"webhook-id", "webhook-timestamp", "webhook-signature"}``.
    """
    timestamp = int(time.time() if now is None else now)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, msg_id, timestamp, body),
    }


def verify(secret: str, headers: Mapping[str, str], body: bytes, tolerance: int = DEFAULT_TOLERANCE,
           now: float | None = None) -> None:
    """Check a received delivery (what a receiver, or our own tests, do).

    Args:
        secret: the ``whsec_`` secret shared with the sender.
        headers: the request headers (any case).
        body: the raw body bytes as received (before any JSON parsing).
        tolerance: the largest accepted distance, in seconds, between the timestamp and ``now``.
        now: the receiver's Unix time (default: the current time).

    Raises:
        WebhookVerificationError: a header is missing, the timestamp is malformed, too old or in the
            future, or no ``v1`` signature matches.
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    msg_id = lowered.get("webhook-id")
    stamp = lowered.get("webhook-timestamp")
    given = lowered.get("webhook-signature")
    if not msg_id or not stamp or not given:
        raise WebhookVerificationError("missing webhook-id, webhook-timestamp or webhook-signature header")
    if not (stamp.isascii() and stamp.isdigit()) or len(stamp) > 12:  # isdigit alone accepts e.g. Arabic digits
        raise WebhookVerificationError(f"webhook-timestamp {stamp[:20]!r} is not integer seconds")
    timestamp = int(stamp)
    current = time.time() if now is None else now
    if timestamp < current - tolerance:
        raise WebhookVerificationError("webhook-timestamp is too old (a replayed or long-delayed delivery)")
    if timestamp > current + tolerance:
        raise WebhookVerificationError("webhook-timestamp is in the future")
    try:
        expected = _signature(_key(secret), msg_id, timestamp, bytes(body)).encode("ascii")
    except ValueError as exc:
        raise WebhookVerificationError(str(exc)) from None
    matched = False
    for candidate in given.split(" "):
        version, _, value = candidate.partition(",")
        if version != SIGNATURE_VERSION:
            continue  # other schemes (v1a asymmetric) may be listed alongside; they are not ours to check
        # compare_digest on every candidate (no early exit on the first mismatch): timing says nothing.
        matched |= hmac.compare_digest(value.encode("ascii", "replace"), expected)
    if not matched:
        raise WebhookVerificationError("no webhook signature matches (wrong secret, or the body was altered)")
