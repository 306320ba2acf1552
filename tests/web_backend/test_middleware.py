"""Admission control keeps requests in progress under the limit and serves everyone."""

import asyncio

from web_backend.middleware import ConcurrencyLimit


def test_requests_in_progress_never_exceed_the_limit() -> None:
    running = peak = done = 0

    async def app(scope, receive, send) -> None:
        nonlocal running, peak, done
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.01)
        running -= 1
        done += 1

    limited = ConcurrencyLimit(app, limit=3, exempt_suffixes=("/events",))

    async def main() -> None:
        calls = [limited({"type": "http", "path": "/v1/jobs"}, None, None) for _ in range(40)]
        await asyncio.gather(*calls)

    asyncio.run(main())
    assert peak == 3 and done == 40


def test_exempt_paths_are_not_queued() -> None:
    running = peak = 0

    async def app(scope, receive, send) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.01)
        running -= 1

    limited = ConcurrencyLimit(app, limit=1, exempt_suffixes=("/events",))

    async def main() -> None:
        await asyncio.gather(*(limited({"type": "http", "path": "/v1/jobs/x/events"}, None, None)
                               for _ in range(10)))

    asyncio.run(main())
    assert peak == 10
