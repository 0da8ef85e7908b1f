"""The accounts interface: users, API keys and the double-entry credits ledger.

Ledger rules every implementation keeps (reliability.md, "Credits ledger"):

* every movement writes two entries whose amounts sum to zero, so the sum over all entries is always 0;
* a job has at most one hold and at most one settlement (capture or release), enforced by the database;
* a user's available and held balances never go below zero.

Lifecycle of a job's credits: :meth:`hold` at submit; then exactly one of :meth:`capture` (succeeded) or
:meth:`release` (failed, canceled, aborted by deadline). Retries of any of these calls are safe.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from kontext_studio.service.accounts.accounts_common import (
    ApiKeyRecord,
    CreditBalance,
    CreditHold,
    CreditSettlement,
    LedgerLine,
    UserRecord,
)


class AccountsBase(ABC):
    """Users, API keys and credits."""

    # --- users --------------------------------------------------------------------------------------

    @abstractmethod
    def create_user(self, email: str, name: str = "", *, is_admin: bool = False) -> UserRecord:
        """Create a user with an empty balance.

        Args:
            email: unique (case-insensitively); stored trimmed and lowercased.
            name: display name.
            is_admin: whether the user may administer the installation.

        Returns:
            The new user.

        Raises:
            InvalidRequest: the email is malformed.
            Conflict: a user with this email exists.
        """

    @abstractmethod
    def get_user(self, user_id: int) -> UserRecord:
        """Look a user up by id.

        Raises:
            NotFound: no such user.
        """

    @abstractmethod
    def get_user_by_email(self, email: str) -> UserRecord | None:
        """Look a user up by email (case-insensitive); None when there is none."""

    # --- API keys -----------------------------------------------------------------------------------

    @abstractmethod
    def create_api_key(self, user_id: int, name: str = "") -> tuple[str, ApiKeyRecord]:
        """Issue an API key.

        Args:
            user_id: the owner.
            name: a label for key lists ("laptop", "ci").

        Returns:
            ``(plaintext, record)``. The plaintext is shown once; only its prefix and SHA-256 are stored.

        Raises:
            NotFound: no such user.
        """

    @abstractmethod
    def list_api_keys(self, user_id: int) -> list[ApiKeyRecord]:
        """A user's keys, revoked ones included, oldest first (no secrets: they are not stored)."""

    @abstractmethod
    def authenticate(self, plaintext: str) -> UserRecord | None:
        """The owner of an active API key, or None.

        The key is found by its prefix and its hash compared in constant time; unknown, malformed and
        revoked keys all give None (the caller answers 401 without saying which).

        Args:
            plaintext: the token as presented (``Authorization: Bearer ...`` or ``x-key``).
        """

    @abstractmethod
    def revoke_key(self, key_id: int, *, user_id: int | None = None) -> ApiKeyRecord:
        """Revoke a key; revoking a revoked key changes nothing and returns it.

        Args:
            key_id: the key.
            user_id: when given, the key must belong to this user (tenant isolation).

        Raises:
            NotFound: no such key, or it belongs to another user.
        """

    # --- credits ------------------------------------------------------------------------------------

    @abstractmethod
    def grant(self, user_id: int, amount: int) -> CreditBalance:
        """Add credits to a user's available balance (from the ``grants`` account).

        Args:
            user_id: the user.
            amount: credits, > 0.

        Returns:
            The balance after the grant.

        Raises:
            InvalidRequest: amount is not a positive integer.
            NotFound: no such user.
        """

    @abstractmethod
    def balance(self, user_id: int) -> CreditBalance:
        """A user's available and held credits.

        Raises:
            NotFound: no such user.
        """

    @abstractmethod
    def ledger(self, user_id: int, limit: int = 100) -> list[LedgerLine]:
        """The user's credit movements, newest first (holds, captures, releases, grants)."""

    @abstractmethod
    def hold(self, job_id: str, user_id: int, amount: int) -> CreditHold:
        """Reserve a job's price at submit: ``amount`` moves from available to held.

        Idempotent: a second hold for the same job with the same user and amount changes nothing and
        returns the first hold (a retried submit). A second hold that differs raises :class:`Conflict`.

        Args:
            job_id: the job (must exist and belong to ``user_id``).
            user_id: the payer.
            amount: credits, >= 0 (with prices switched off, always 0 and never refused).

        Returns:
            The job's hold.

        Raises:
            InvalidRequest: amount is negative.
            NotFound: no such job.
            Conflict: the job belongs to another user, or already holds a different amount.
            InsufficientCredits: available < amount; nothing is written.
        """

    @abstractmethod
    def capture(self, job_id: str) -> CreditSettlement:
        """Settle a job's hold by charging it (held -> revenue): the job succeeded.

        Exactly one settlement per job: when the job is already settled this is a no-op that returns the
        first settlement, whatever its kind (a capture after a release returns the release, and charges
        nothing). Check ``kind`` if it matters.

        Raises:
            NotFound: the job has no hold.
        """

    @abstractmethod
    def release(self, job_id: str) -> CreditSettlement:
        """Settle a job's hold by returning it (held -> available): failed, canceled or aborted.

        Same exactly-once rule as :meth:`capture`: a settled job returns its first settlement unchanged.

        Raises:
            NotFound: the job has no hold.
        """

    @abstractmethod
    def get_hold(self, job_id: str) -> CreditHold | None:
        """The job's hold, or None."""

    @abstractmethod
    def get_settlement(self, job_id: str) -> CreditSettlement | None:
        """The job's settlement, or None while it is unsettled (or was never held)."""

    @abstractmethod
    def audit(self) -> list[str]:
        """Check the ledger's invariants over the whole database.

        Returns:
            One line per violation found; empty when the ledger is consistent.
        """
