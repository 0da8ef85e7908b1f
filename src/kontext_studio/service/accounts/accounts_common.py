"""Records, errors and pure helpers shared by every accounts implementation.

Records are frozen dataclasses, not ORM objects, so callers never depend on a live database session.
Errors derive from :class:`kontext_studio.core.errors.KontextError`; their ``code`` is stable for APIs.
"""

from __future__ import annotations

import hashlib
import secrets
import string
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from kontext_studio.core.errors import InvalidRequest, KontextError

__all__ = [
    "API_KEY_PREFIX",
    "GRANTS_ACCOUNT",
    "REVENUE_ACCOUNT",
    "AccountsError",
    "ApiKeyRecord",
    "Conflict",
    "CreditBalance",
    "CreditHold",
    "CreditSettlement",
    "InsufficientCredits",
    "InvalidRequest",
    "NotFound",
    "SettlementKind",
    "UserRecord",
    "available_account",
    "generate_api_key",
    "hash_api_key",
    "held_account",
    "normalize_email",
    "parse_key_prefix",
]

# --- errors -------------------------------------------------------------------------------------------


class AccountsError(KontextError):
    """Base of the accounts and credits errors."""

    code = "accounts_error"


class NotFound(AccountsError):
    """The user, key, job or hold does not exist (or is not visible to the caller)."""

    code = "not_found"


class Conflict(AccountsError):
    """The request contradicts existing state (duplicate email, a second hold that differs from the first)."""

    code = "conflict"


class InsufficientCredits(AccountsError):
    """A hold needs more credits than the user has available.

    Attributes:
        available: the credits the user had available.
        required: the credits the hold needed.
    """

    code = "insufficient_credits"

    def __init__(self, available: int, required: int):
        super().__init__(f"insufficient credits: {required} required, {available} available")
        self.available = available
        self.required = required


# --- records ------------------------------------------------------------------------------------------

SettlementKind = Literal["capture", "release"]


@dataclass(frozen=True)
class UserRecord:
    id: int
    email: str
    name: str
    is_admin: bool
    created_at: datetime


@dataclass(frozen=True)
class ApiKeyRecord:
    """An API key as listed to its owner: the prefix identifies it, the secret is never available again."""

    id: int
    user_id: int
    prefix: str
    name: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


@dataclass(frozen=True)
class CreditBalance:
    """A user's credits: ``available`` to spend and ``held`` for jobs not yet settled."""

    user_id: int
    available: int
    held: int

    @property
    def total(self) -> int:
        return self.available + self.held


@dataclass(frozen=True)
class CreditHold:
    job_id: str
    user_id: int
    amount: int
    created_at: datetime


@dataclass(frozen=True)
class CreditSettlement:
    """How a job's hold ended: ``capture`` (charged to revenue) or ``release`` (returned to the user)."""

    job_id: str
    kind: SettlementKind
    amount: int
    created_at: datetime


# --- ledger accounts ----------------------------------------------------------------------------------

REVENUE_ACCOUNT = "revenue"
GRANTS_ACCOUNT = "grants"


def available_account(user_id: int) -> str:
    """Ledger account of a user's spendable credits."""
    return f"user:{user_id}:available"


def held_account(user_id: int) -> str:
    """Ledger account of a user's credits held for unsettled jobs."""
    return f"user:{user_id}:held"


# --- API keys -----------------------------------------------------------------------------------------

API_KEY_PREFIX = "ks_"
_PREFIX_CHARS = string.ascii_letters + string.digits
_PREFIX_LEN = len(API_KEY_PREFIX) + 8


def generate_api_key() -> tuple[str, str, str]:
    """Make a new API key.

    The token is ``ks_`` + 8 random letters/digits (the public prefix, shown in key lists and used to find
    the key) + ``_`` + 43 URL-safe characters of secret (256 bits).

    Returns:
        ``(plaintext, prefix, sha256_hex)``: show the plaintext once, store only the prefix and the hash.
    """
    prefix = API_KEY_PREFIX + "".join(secrets.choice(_PREFIX_CHARS) for _ in range(8))
    plaintext = f"{prefix}_{secrets.token_urlsafe(32)}"
    return plaintext, prefix, hash_api_key(plaintext)


def hash_api_key(plaintext: str) -> str:
    """SHA-256 (hex) of the whole token. The secret has 256 bits of entropy, so no salt or stretching is needed."""
    return hashlib.sha256(plaintext.encode("utf-8")).hexdigest()


def parse_key_prefix(plaintext: str) -> str | None:
    """The lookup prefix of a presented token, or None when it is not shaped like one of our keys."""
    if (
        len(plaintext) > _PREFIX_LEN + 1
        and len(plaintext) <= 200
        and plaintext.startswith(API_KEY_PREFIX)
        and plaintext[_PREFIX_LEN] == "_"
        and all(c in _PREFIX_CHARS for c in plaintext[len(API_KEY_PREFIX) : _PREFIX_LEN])
    ):
        return plaintext[:_PREFIX_LEN]
    return None


def normalize_email(email: str) -> str:
    """Trim and lowercase an email address.

    Raises:
        InvalidRequest: it is not shaped like ``local@domain`` or is longer than 320 characters.
    """
    value = str(email).strip().lower()
    local, _, domain = value.partition("@")
    if not local or not domain or "@" in domain or len(value) > 320 or any(c.isspace() for c in value):
        raise InvalidRequest(f"email must look like name@example.com, got {email!r}", field="email")
    return value


@dataclass(frozen=True)
class LedgerLine:
    """One credit movement on a user's account: ``account`` is ``available`` or ``held``."""

    id: int
    job_id: str | None
    account: str
    amount: int
    kind: str
    created_at: datetime
