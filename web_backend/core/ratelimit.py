"""Moving-window rate limits: in-process memory by default, Redis to share across workers."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from limits import RateLimitItemPerDay, RateLimitItemPerHour, RateLimitItemPerMinute
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter

from web_backend.core.errors import TooManyRequests

__all__ = ["LimitResult", "RateLimiter"]


@dataclass(frozen=True)
class LimitResult:
    allowed: bool
    limit: int
    remaining: int
    reset_after_s: int

    def headers(self) -> dict[str, str]:
        return {"RateLimit-Limit": str(self.limit), "RateLimit-Remaining": str(self.remaining),
                "RateLimit-Reset": str(self.reset_after_s)}

    def refusal(self, detail: str) -> TooManyRequests:
        """The 429 to raise when this hit was not allowed."""
        return TooManyRequests(detail, retry_after_s=self.reset_after_s, headers=self.headers())


_PERIODS = {"minute": RateLimitItemPerMinute, "hour": RateLimitItemPerHour,
            "day": RateLimitItemPerDay}


class RateLimiter:
    """``hit("login", ip, limit=10, per="minute")`` counts one event and says if it fits."""

    def __init__(self, redis_url: str | None = None, *, prefix: str = "clipgan") -> None:
        uri = redis_url or "memory://"
        self.storage = storage_from_string(uri, key_prefix=prefix) if redis_url else \
            storage_from_string(uri)
        self.limiter = MovingWindowRateLimiter(self.storage)
        self.shared = redis_url is not None

    def hit(self, name: str, identity: str, *, limit: int, per: str = "minute",
            cost: int = 1) -> LimitResult:
        """Count ``cost`` events (all or none) and say whether they fit."""
        return self._check(name, identity, limit=limit, per=per, count=True, cost=cost)

    def peek(self, name: str, identity: str, *, limit: int, per: str = "minute") -> LimitResult:
        """Whether one more hit would fit, without counting one (limits on failures)."""
        return self._check(name, identity, limit=limit, per=per, count=False)

    def _check(self, name: str, identity: str, *, limit: int, per: str, count: bool,
               cost: int = 1) -> LimitResult:
        item = _PERIODS[per](limit)
        if count:
            allowed = self.limiter.hit(item, name, identity, cost=cost)
        else:
            allowed = self.limiter.test(item, name, identity)
        stats = self.limiter.get_window_stats(item, name, identity)
        reset = max(0, math.ceil(stats.reset_time - time.time()))
        return LimitResult(allowed=allowed, limit=limit, remaining=max(0, stats.remaining),
                           reset_after_s=reset)

    def ping(self) -> bool:
        return bool(self.storage.check())
