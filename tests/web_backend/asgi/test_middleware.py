"""Admission control keeps requests in progress under the limit and serves everyone."""

import asyncio

import httpx

from web_backend.app import create_app
from web_backend.asgi.admission import Admission, ConcurrencyLimit


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


async def _stuck_then_released(app, gate: asyncio.Event) -> tuple[int, int]:
    """Liveness while every slot is held by a request that does not finish, and after."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        held = [asyncio.create_task(client.get("/stuck")) for _ in range(2)]  # 1 runs, 1 waits
        await asyncio.sleep(0.3)
        while_stuck = (await client.get("/healthz")).status_code
        gate.set()
        await asyncio.gather(*held)
        after = (await client.get("/healthz")).status_code
    return while_stuck, after


def test_liveness_fails_while_requests_are_stuck_and_recovers(make_settings) -> None:
    app = create_app(make_settings(http={"max_concurrent_requests": 1, "stalled_after_s": 0.1}))
    gate = asyncio.Event()

    @app.get("/stuck")
    async def stuck() -> dict[str, str]:
        await gate.wait()
        return {}

    assert asyncio.run(_stuck_then_released(app, gate)) == (503, 200)


def test_busy_but_moving_is_alive() -> None:
    state = Admission(limit=2)
    state.in_progress, state.waiting = 2, 5
    assert state.stalled_for() < 0.1  # a slot came free just now
    state.last_freed -= 60
    assert state.stalled_for() >= 60
    state.waiting = 0
    assert state.stalled_for() == 0  # all busy, nobody waiting: fine
