"""Older home of the rate limits, kept so existing imports work: see ``service.limits``."""

from __future__ import annotations

from kontext_studio.service.limits.limits_base import RateLimited
from kontext_studio.service.limits.limits_memory import MemoryRateLimiter

RateLimiter = MemoryRateLimiter  # the in-memory limiter's earlier name

__all__ = ["RateLimited", "RateLimiter"]
