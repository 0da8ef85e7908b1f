"""Job errors shared by the store, the worker and the API."""

from __future__ import annotations

from kontext_studio.core.errors import KontextError


class JobNotFound(KontextError):
    """No such job for this user (other users' jobs are reported the same way: no existence leak)."""

    code = "not_found"


class StaleAttempt(KontextError):
    """A worker reported on an attempt that is no longer the job's current one (fenced: nothing changes)."""

    code = "stale_attempt"


class IdempotencyConflict(KontextError):
    """The Idempotency-Key was used with another request body."""

    code = "idempotency_conflict"


MAX_ATTEMPTS = 3
LEASE_SECONDS = 600
