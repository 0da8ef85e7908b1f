"""Rate limits: the interface (``limits_base``), in memory (one API process) and in Redis (several)."""

from kontext_studio.service.limits.limits_base import Limiter, LimiterFactory, RateLimited, over_limit
from kontext_studio.service.limits.limits_memory import MemoryRateLimiter, memory_limiters

__all__ = ["Limiter", "LimiterFactory", "MemoryRateLimiter", "RateLimited", "memory_limiters", "over_limit"]
