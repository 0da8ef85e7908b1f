"""Rate limits counted in Redis, so every API process behind a load balancer shares one count.

One sorted set per limit and key (``<prefix>kontext:ratelimit:<name>:<key>``), scored by the hit's time in
milliseconds: a sliding window log, as exact as the in-memory limiter. One Lua script drops the hits that
left the window, counts, and adds the new hit, atomically (two API processes cannot both take the last
slot). A set holds at most ``limit`` members and expires one window after its last hit, so Redis memory is
bounded by the callers seen within a window. Time is Redis's own clock (``TIME``), so API machines with
slightly different clocks agree.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any

from kontext_studio.service.limits.limits_base import over_limit
from kontext_studio.service.limits.limits_memory import MemoryRateLimiter

logger = logging.getLogger("kontext_studio.limits")

KEY_SPACE = "kontext:ratelimit:"
# After Redis failed, requests count in memory for this long before Redis is tried again: an unreachable
# Redis must not cost every request a connection timeout.
RETRY_AFTER_FAILURE = 5.0

# KEYS[1]: the key. ARGV: now in ms (empty: Redis TIME), window in ms, limit, a unique member.
# Returns {1, "0"} when counted, {0, "<ms until the oldest hit leaves the window>"} when refused (a string:
# Lua numbers returned to Redis lose their fraction).
SLIDING_WINDOW = """
local now = tonumber(ARGV[1])
if now == nil then
  if redis.replicate_commands then redis.replicate_commands() end
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
end
local window = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) >= limit then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return {0, tostring(tonumber(oldest[2]) + window - now)}
end
redis.call('ZADD', KEYS[1], now, ARGV[4])
redis.call('PEXPIRE', KEYS[1], math.ceil(window))
return {1, '0'}
"""


class RedisRateLimiter:
    """At most ``limit`` hits per ``window`` seconds per key, counted in Redis.

    Redis unreachable (or failing) at a request: the request is not refused for it. The limits must not take
    the service down, so the hit is counted in this process's memory instead (the limit then holds per API
    process, as on one machine) and a warning is logged; Redis is tried again after ``RETRY_AFTER_FAILURE``
    seconds.

    Args:
        client: a ``redis.Redis`` client (short socket timeouts: a check waits on it).
        name: the key namespace, prefix included (``<prefix>kontext:ratelimit:<limit's name>``).
        limit: hits allowed in the window (0 switches the limit off).
        window: seconds.
        clock: seconds for the window (injectable for tests); None: Redis's own clock.
    """

    def __init__(self, client: Any, name: str, limit: int = 60, window: float = 60.0,
                 clock: Callable[[], float] | None = None):
        self.client, self.name, self.limit, self.window, self.clock = client, name, limit, window, clock
        self._script = client.register_script(SLIDING_WINDOW)
        self._fallback = MemoryRateLimiter(limit, window)
        self._down_until = 0.0
        self._lock = threading.Lock()

    def key(self, key: int | str) -> str:
        """The Redis key of a caller's count."""
        return f"{self.name}:{key}"

    def check(self, key: int | str) -> None:
        """Count one hit for ``key`` (a user id, or another caller key such as a client address).

        Raises:
            RateLimited: over the limit; nothing is counted then.
        """
        if self.limit <= 0:
            return
        if time.monotonic() < self._down_until:
            self._fallback.check(key)
            return
        import redis

        now = "" if self.clock is None else repr(self.clock() * 1000.0)
        try:
            counted, wait_ms = self._script(keys=[self.key(key)], args=[
                now, repr(self.window * 1000.0), self.limit, secrets.token_hex(8)])
        except (redis.RedisError, OSError) as exc:
            self._failed(exc)
            self._fallback.check(key)
            return
        if not int(counted):
            raise over_limit(self.limit, self.window, float(wait_ms) / 1000.0)

    def _failed(self, exc: BaseException) -> None:
        with self._lock:
            first = self._down_until == 0.0
            self._down_until = time.monotonic() + RETRY_AFTER_FAILURE
        logger.warning("rate limit %s: Redis failed (%s: %s); counting in this process for %.0f s%s",
                       self.name, type(exc).__name__, exc, RETRY_AFTER_FAILURE,
                       "" if first else " again")


class RedisLimiters:
    """A ``LimiterFactory`` whose limiters count in one Redis (one client and connection pool for all).

    Args:
        url: the Redis, e.g. ``redis://redis:6379/0`` (the installation's ``KONTEXT_BROKER_URL``).
        prefix: put before every key (``KONTEXT_BROKER_PREFIX``), so several installations share a Redis.
        client: a client to use instead of one built from ``url`` (tests).
    """

    def __init__(self, url: str, prefix: str = "", *, client: Any = None):
        import redis

        # Short timeouts: a check is on the request's path, and a failure only means counting in memory.
        self.client = client if client is not None else redis.Redis.from_url(
            url, socket_connect_timeout=0.5, socket_timeout=0.5, health_check_interval=30)
        self.prefix = prefix

    def __call__(self, name: str, limit: int, window: float) -> RedisRateLimiter:
        """The limiter of one named limit (``predictions``, ``tools-user``...)."""
        return RedisRateLimiter(self.client, f"{self.prefix}{KEY_SPACE}{name}", limit, window)
