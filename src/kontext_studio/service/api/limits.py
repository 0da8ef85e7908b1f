"""Per-user submit rate limit (sliding window) — checked before any credit is held.

In memory, per API process: on several API processes put it behind Redis (the same interface).
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable

from kontext_studio.core.errors import KontextError


class RateLimited(KontextError):
    """Too many submissions (HTTP 429 with Retry-After)."""

    code = "rate_limited"
    http_status = 429

    def __init__(self, message: str, retry_after: float):
        super().__init__(message)
        self.retry_after = max(1, int(retry_after + 0.999))


class RateLimiter:
    """At most ``limit`` submissions per ``window`` seconds per user.

    Args:
        limit: submissions allowed in the window (0 switches the limit off).
        window: seconds.
        clock: monotonic clock (injectable for tests).
    """

    def __init__(self, limit: int = 60, window: float = 60.0, clock: Callable[[], float] = time.monotonic):
        self.limit, self.window, self.clock = limit, window, clock
        self._hits: defaultdict[int | str, deque[float]] = defaultdict(deque)
        self._lock = threading.Lock()

    def check(self, user_id: int | str) -> None:
        """Count one submission by a user (or another caller key, such as a client address).

        Raises:
            RateLimited: over the limit; nothing is counted then.
        """
        if self.limit <= 0:
            return
        now = self.clock()
        with self._lock:
            hits = self._hits[user_id]
            while hits and hits[0] <= now - self.window:
                hits.popleft()
            if len(hits) >= self.limit:
                wait = hits[0] + self.window - now
                raise RateLimited(f"more than {self.limit} predictions in {self.window:.0f} s; retry in "
                                  f"{wait:.0f} s", retry_after=wait)
            hits.append(now)
