"""The rate limits under the contract: the in-memory limiter (one API process) and the Redis one (several)
pass the same checks, on a clock the test moves.

Redis is found at ``KONTEXT_TEST_REDIS_URL`` (default ``redis://127.0.0.1:6379/0``); each test's keys carry a
random prefix, deleted afterwards. When Redis is unreachable the Redis cases are skipped, or fail when ``CI``
is set (as the Celery tests do).
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from benchmarks.chaos_soak import delete_keys

from kontext_studio.service.api.limits import RateLimiter  # the older import path still works
from kontext_studio.service.limits import Limiter, MemoryRateLimiter, RateLimited
from kontext_studio.service.limits.limits_redis import KEY_SPACE, RedisLimiters, RedisRateLimiter
from tests.conftest import REDIS_URL, require_redis

WINDOW = 60.0


@pytest.fixture()
def redis_prefix() -> Iterator[str]:
    """A fresh key prefix on the test Redis; every key under it is deleted afterwards."""
    url = require_redis("the Redis rate-limit tests")
    prefix = f"ks-test-{uuid.uuid4().hex[:10]}:"
    yield prefix
    delete_keys(url, prefix)


class Clock:
    """Seconds that move only when the test says so."""

    def __init__(self, start: float = 1_000.0):
        self.now = start

    def __call__(self) -> float:
        return self.now


@dataclass
class Case:
    """One implementation: ``make(limit, window, clock)`` builds a limiter counting from a fresh start."""

    name: str
    make: Callable[[int, float, Clock], Limiter]


def memory_case() -> Case:
    return Case("memory", lambda limit, window, clock: MemoryRateLimiter(limit, window, clock=clock))


def redis_case(prefix: str) -> Case:
    limiters = RedisLimiters(REDIS_URL, prefix)

    def make(limit: int, window: float, clock: Clock) -> Limiter:
        return RedisRateLimiter(limiters.client, f"{prefix}{KEY_SPACE}{uuid.uuid4().hex[:6]}", limit, window,
                                clock=clock)

    return Case("redis", make)


@pytest.fixture(params=["memory", "redis"])
def case(request: pytest.FixtureRequest) -> Case:
    if request.param == "memory":
        return memory_case()
    return redis_case(request.getfixturevalue("redis_prefix"))


def refusal(limiter: Limiter, key: int | str) -> RateLimited:
    with pytest.raises(RateLimited) as caught:
        limiter.check(key)
    return caught.value


def test_the_limit_is_enforced_with_the_message_clients_see(case: Case) -> None:
    limiter = case.make(3, WINDOW, Clock())
    for _ in range(3):
        limiter.check(7)
    refused = refusal(limiter, 7)
    assert str(refused).startswith("more than 3 predictions in 60 s; retry in ")
    assert refused.code == "rate_limited" and refused.http_status == 429


def test_retry_after_is_when_the_oldest_hit_leaves_the_window(case: Case) -> None:
    clock = Clock()
    limiter = case.make(3, WINDOW, clock)
    for _ in range(3):
        limiter.check("u")
        clock.now += 10
    refused = refusal(limiter, "u")  # hits at 0, 10, 20; now 30: the first leaves at 60
    assert refused.retry_after == 30 and "retry in 30 s" in str(refused)
    clock.now += 29.9
    assert refusal(limiter, "u").retry_after == 1  # never 0: a client told 0 would retry at once


def test_the_window_slides_and_a_refusal_is_not_counted(case: Case) -> None:
    clock = Clock()
    limiter = case.make(2, WINDOW, clock)
    limiter.check("u")
    clock.now += 10
    limiter.check("u")
    for _ in range(5):
        refusal(limiter, "u")  # refused hits take no slot
    clock.now = 1_000.0 + WINDOW  # the first hit just left the window
    limiter.check("u")
    assert refusal(limiter, "u").retry_after == 10  # the second hit leaves at 70
    clock.now += 10
    limiter.check("u")


def test_keys_are_independent(case: Case) -> None:
    limiter = case.make(1, WINDOW, Clock())
    limiter.check(1)
    refusal(limiter, 1)
    limiter.check(2)
    limiter.check("203.0.113.7")
    limiter.check("2001:db8::1")
    refusal(limiter, "203.0.113.7")


def test_limit_zero_switches_the_limit_off(case: Case) -> None:
    limiter = case.make(0, WINDOW, Clock())
    for _ in range(500):
        limiter.check(1)


def test_the_older_import_path_builds_the_in_memory_limiter() -> None:
    limiter = RateLimiter(1, WINDOW)
    limiter.check(1)
    refusal(limiter, 1)


def test_memory_forgets_callers_whose_window_emptied() -> None:
    """A caller rotating addresses (one IPv6 address per request) does not grow memory forever."""
    clock = Clock()
    limiter = MemoryRateLimiter(1, 1.0, clock=clock)
    for i in range(50_000):  # 1000 requests a second, each from a new address: 1000 live at any time
        limiter.check(f"2001:db8::{i:x}")
        clock.now += 0.001
    assert limiter.keys_held() < 4_000
    refusal(limiter, f"2001:db8::{49_999:x}")  # a live caller is still counted
    clock.now += 2
    limiter.check(f"2001:db8::{49_999:x}")


def test_redis_keys_expire_and_hold_at_most_the_limit(redis_prefix: str) -> None:
    limiters = RedisLimiters(REDIS_URL, redis_prefix)
    limiter = limiters("tools-address", 3, WINDOW)
    for _ in range(10):
        with contextlib.suppress(RateLimited):
            limiter.check("203.0.113.9")
    key = limiter.key("203.0.113.9")
    assert key == f"{redis_prefix}kontext:ratelimit:tools-address:203.0.113.9"
    assert limiters.client.zcard(key) == 3
    assert 0 < limiters.client.pttl(key) <= WINDOW * 1000


def test_two_api_processes_on_one_redis_share_the_count(redis_prefix: str) -> None:
    """Two limiters with their own connections (two API processes) give a client the limit once, not twice;
    another installation on the same Redis (another prefix) counts apart."""
    first = RedisLimiters(REDIS_URL, redis_prefix)("predictions", 3, WINDOW)
    second = RedisLimiters(REDIS_URL, redis_prefix)("predictions", 3, WINDOW)
    first.check(42)
    second.check(42)
    first.check(42)
    refused = refusal(second, 42)
    assert 1 <= refused.retry_after <= WINDOW
    refusal(first, 42)
    RedisLimiters(REDIS_URL, redis_prefix + "other:")("predictions", 3, WINDOW).check(42)


def test_unreachable_redis_counts_in_memory_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    """The limits never take the service down: without Redis a request is still answered, the limit holds
    per process, and the operator is told."""
    limiter = RedisLimiters("redis://127.0.0.1:1/0")("predictions", 2, WINDOW)
    with caplog.at_level(logging.WARNING, logger="kontext_studio.limits"):
        limiter.check(1)
        limiter.check(1)
        refusal(limiter, 1)
    assert any("Redis failed" in r.getMessage() and "counting in this process" in r.getMessage()
               for r in caplog.records)
