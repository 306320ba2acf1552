"""Rate limits in Redis are shared by every web process; in memory they are per process."""

import uuid
from collections.abc import Callable

from fastapi.testclient import TestClient

from web_backend.app import create_app
from web_backend.core.ratelimit import RateLimiter
from web_backend.core.settings import WebSettings


def test_two_app_instances_share_one_limit(make_settings: Callable[..., WebSettings],
                                           redis_url: str) -> None:
    prefix = uuid.uuid4().hex  # this test's own keys in the shared Redis
    settings = make_settings(data={"redis_url": redis_url},
                             auth={"login_attempts_per_minute": 4})
    a, b = create_app(settings), create_app(settings)
    for app in (a, b):
        app.state.services.limiter = RateLimiter(redis_url, prefix=prefix)
    with TestClient(a) as one, TestClient(b) as two:
        codes = [c.post("/v1/auth/token", data={"username": "x", "password": "y"}).status_code
                 for c in (one, two, one, two, one)]
    assert codes == [401, 401, 401, 401, 429]


def test_memory_limits_are_per_process() -> None:
    a, b = RateLimiter(), RateLimiter()
    assert [a.hit("t", "ip", limit=1).allowed for _ in range(2)] == [True, False]
    assert b.hit("t", "ip", limit=1).allowed


def test_redis_limiter_reports_window(redis_url: str) -> None:
    limiter = RateLimiter(redis_url, prefix=uuid.uuid4().hex)
    results = [limiter.hit("submit", "42", limit=2) for _ in range(3)]
    assert [r.allowed for r in results] == [True, True, False]
    assert results[0].remaining == 1 and results[2].refusal("no").headers["Retry-After"]
    assert limiter.ping()
