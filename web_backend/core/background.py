"""Background workers beside the API: started together, reported when they die, stopped
in reverse order.

A web process runs a few long-lived tasks next to its routes (the change feed, the
dispatcher, the webhook sender, and whatever sweeper comes next). Each is a
:class:`Worker`: something with ``run()`` until ``stop()``. :func:`running` is the one
place that starts them, logs the one that dies early (the process keeps serving, but
what that worker did has stopped, and the log says what that means), and stops them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Protocol

__all__ = ["Background", "Worker", "running"]

log = logging.getLogger(__name__)


class Worker(Protocol):
    async def run(self) -> None: ...
    def stop(self) -> None: ...


@dataclass(frozen=True)
class Background:
    """A worker, its task's name, and what its death means to users (logged)."""

    name: str
    worker: Worker
    if_it_dies: str        # e.g. "jobs wait until this process restarts"


def _report_exit(background: Background) -> Callable[[asyncio.Task[None]], None]:
    def report(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.critical("the %s stopped: %s", background.name, background.if_it_dies,
                         exc_info=task.exception())
    return report


@asynccontextmanager
async def running(workers: Sequence[Background]) -> AsyncIterator[None]:
    """Run ``workers`` while the block runs; then stop each (last started first) and wait
    for it to finish what stopping means to it (a failure was logged already)."""
    tasks: list[tuple[Background, asyncio.Task[None]]] = []
    try:
        for background in workers:
            task = asyncio.create_task(background.worker.run(), name=background.name)
            task.add_done_callback(_report_exit(background))
            tasks.append((background, task))
        yield
    finally:
        for background, task in reversed(tasks):
            background.worker.stop()
            await asyncio.gather(task, return_exceptions=True)
