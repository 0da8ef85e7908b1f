"""What a rate limit is: at most ``limit`` hits per ``window`` seconds per key (a user id, a client address).

Two implementations: ``limits_memory.MemoryRateLimiter`` counts in this process (one API process: the
default) and ``limits_redis.RedisRateLimiter`` counts in Redis, so every API process behind a load balancer
shares one count. ``composition.build_services`` picks one; the routers and the submit path only see
``Limiter``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

from kontext_studio.core.errors import KontextError


class RateLimited(KontextError):
    """Too many submissions (HTTP 429 with Retry-After)."""

    code = "rate_limited"
    http_status = 429

    def __init__(self, message: str, retry_after: float):
        super().__init__(message)
        self.retry_after = max(1, int(retry_after + 0.999))


def over_limit(limit: int, window: float, wait: float, noun: str = "predictions") -> RateLimited:
    """The refusal every implementation raises (one wording, whichever counts).

    Args:
        limit, window: the limit that was reached.
        wait: seconds until the oldest counted hit leaves the window.
        noun: what is counted, in the words of the caller ("predictions", "free tool runs").

    Returns:
        The error to raise (Retry-After: ``wait`` rounded up, at least 1 s).
    """
    return RateLimited(f"more than {limit} {noun} in {window:.0f} s; retry in {wait:.0f} s",
                       retry_after=wait)


@runtime_checkable
class Limiter(Protocol):
    """At most ``limit`` hits per ``window`` seconds per key; ``limit`` 0 switches the limit off."""

    limit: int
    window: float

    def check(self, key: int | str) -> None:
        """Count one hit for ``key`` (a user id, or another caller key such as a client address).

        Raises:
            RateLimited: over the limit; nothing is counted then.
        """
        ...


# Builds one named limit (``name`` keeps the counts of different limits apart where they share a store).
LimiterFactory = Callable[[str, int, float], Limiter]
