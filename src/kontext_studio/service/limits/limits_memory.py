"""Rate limits counted in this process's memory: the single-machine default (one API process).

With several API processes each would count on its own (a client gets N times the limit): the composition
root uses ``limits_redis`` then.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

from kontext_studio.service.limits.limits_base import over_limit

# A sweep of forgotten keys runs after at least this many checks (and after as many checks as keys held), so
# its cost spread over the checks stays constant.
SWEEP_EVERY = 1024


class MemoryRateLimiter:
    """At most ``limit`` hits per ``window`` seconds per key, sliding window, in memory.

    Keys whose window emptied are dropped by an amortised sweep, so a caller rotating keys (one IPv6 address
    per request) cannot grow memory forever: at most the keys hit within the window, plus the keys created
    since the last sweep, are held.

    Args:
        limit: hits allowed in the window (0 switches the limit off).
        window: seconds.
        clock: monotonic clock (injectable for tests).
    """

    def __init__(self, limit: int = 60, window: float = 60.0, clock: Callable[[], float] = time.monotonic):
        self.limit, self.window, self.clock = limit, window, clock
        self._hits: dict[int | str, deque[float]] = {}
        self._lock = threading.Lock()
        self._checks = 0
        self._next_sweep = SWEEP_EVERY

    def check(self, key: int | str) -> None:
        """Count one hit for ``key`` (a user id, or another caller key such as a client address).

        Raises:
            RateLimited: over the limit; nothing is counted then.
        """
        if self.limit <= 0:
            return
        now = self.clock()
        with self._lock:
            self._checks += 1
            if self._checks >= self._next_sweep:
                self._sweep(now)
            hits = self._hits.get(key)
            if hits is None:
                hits = self._hits[key] = deque()
            while hits and hits[0] <= now - self.window:
                hits.popleft()
            if len(hits) >= self.limit:
                raise over_limit(self.limit, self.window, hits[0] + self.window - now)
            hits.append(now)

    def keys_held(self) -> int:
        """How many keys are in memory (for tests and health pages)."""
        with self._lock:
            return len(self._hits)

    def _sweep(self, now: float) -> None:
        """Drop every key whose newest hit left the window (caller holds the lock)."""
        cutoff = now - self.window
        for key in [k for k, hits in self._hits.items() if not hits or hits[-1] <= cutoff]:
            del self._hits[key]
        self._checks = 0
        self._next_sweep = max(SWEEP_EVERY, len(self._hits))


def memory_limiters(name: str, limit: int, window: float) -> MemoryRateLimiter:
    """A ``LimiterFactory``: each limit its own counter in this process (``name`` needs no namespace here)."""
    return MemoryRateLimiter(limit, window)
