"""Concurrent searches on one engine share each generator + CLIP pass.

Why not ``@serve.batch``: it batches *calls* (N requests in, N results out, one
batch at a time). A search is hundreds of steps with per-step progress and cancel;
batched per call, a job arriving mid-batch would wait for the whole batch to end
(minutes), and nothing could stream. Batching at *step* granularity lets jobs join
and leave between any two steps, each with its own progress stream and cancel.
The engine steps run on one worker thread per model, never on the event loop.
"""

from __future__ import annotations

import atexit
import functools
import itertools
import logging
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

from ml_backend.protocol import GenerationRequest, Result
from ml_backend.search import LatentSearchEngine, ProgressCallback, SearchCancelled, SearchJob

__all__ = ["BatchScheduler", "SearchHandle"]

log = logging.getLogger(__name__)


class SearchHandle:
    """The caller's side of a submitted search: cancel it, wait for its Result."""

    _ids = itertools.count(1)

    def __init__(self, wake: Callable[[], None] = lambda: None) -> None:
        self.id = next(self._ids)
        self.future: Future[Result] = Future()
        self._cancel = threading.Event()
        self._wake = wake

    def cancel(self) -> None:
        """Stop the search at the next step boundary (at most one step later)."""
        self._cancel.set()
        self._wake()

    @property
    def cancel_requested(self) -> bool:
        return self._cancel.is_set()

    def result(self, timeout: float | None = None) -> Result:
        return self.future.result(timeout)

    def done(self) -> bool:
        return self.future.done()


@dataclass(eq=False)
class _Entry:
    job: SearchJob
    handle: SearchHandle
    on_progress: ProgressCallback | None


def _close_at_exit(scheduler: weakref.ref[BatchScheduler]) -> None:
    live = scheduler()
    if live is not None:
        live.close()


class BatchScheduler:
    """Runs searches on one engine in a worker thread, ``slots`` of them per pass.

    Callers submit from any thread and get a :class:`SearchHandle`. Progress
    callbacks run on the worker thread between steps, so they must be quick
    (hand off to a queue); one that raises cancels its job.
    """

    def __init__(self, engine: LatentSearchEngine, *, slots: int = 8) -> None:
        self.engine = engine
        self.slots = slots
        self._pending: deque[_Entry] = deque()
        self._active: list[_Entry] = []
        self._cond = threading.Condition()
        self._closed = False
        self.steps_done = 0
        self._thread = threading.Thread(target=self._run, name=f"search-{engine.model_name}",
                                        daemon=True)
        self._thread.start()
        # A daemon thread frozen mid-step while the interpreter finalises makes torch
        # abort the process ("terminate called without an active exception"), so a
        # server stopped during a search would exit with SIGABRT. Stop it first; the
        # weak reference keeps this hook from holding the models alive.
        self._exit_hook = functools.partial(_close_at_exit, weakref.ref(self))
        atexit.register(self._exit_hook)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def load(self) -> tuple[int, int]:
        """(active, pending) job counts."""
        with self._cond:
            return len(self._active), len(self._pending)

    def submit(self, request: GenerationRequest,
               on_progress: ProgressCallback | None = None) -> SearchHandle:
        """Queue a search. Prompt problems raise here, before anything is queued."""
        self.engine.check(request)
        entry = _Entry(job=self.engine.new_job(request), handle=SearchHandle(self._wake),
                       on_progress=on_progress)
        with self._cond:
            if self._closed:
                raise RuntimeError("the search engine is shut down")
            self._pending.append(entry)
            self._cond.notify_all()
        return entry.handle

    def close(self, timeout: float | None = 10.0) -> None:
        atexit.unregister(self._exit_hook)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout)

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not (self._closed or self._active or self._pending):
                    self._cond.wait()
                if self._closed:
                    for entry in [*self._active, *self._pending]:
                        entry.handle.future.set_exception(SearchCancelled("engine shut down"))
                    self._active.clear()
                    self._pending.clear()
                    return
                admitted: list[_Entry] = []
                while self._pending and len(self._active) + len(admitted) < self.slots:
                    admitted.append(self._pending.popleft())
            for entry in admitted:
                if entry.handle.cancel_requested:
                    entry.handle.future.set_exception(SearchCancelled("cancelled before start"))
                    continue
                try:
                    self.engine.start(entry.job)
                except Exception as exc:  # bad image prompt, CLIP error: this job only
                    entry.handle.future.set_exception(exc)
                    continue
                with self._cond:
                    self._active.append(entry)
            self._step_active()

    def _drop(self, entry: _Entry, outcome: Result | BaseException) -> None:
        with self._cond:
            self._active.remove(entry)
        if isinstance(outcome, BaseException):
            entry.handle.future.set_exception(outcome)
        else:
            entry.handle.future.set_result(outcome)

    def _step_active(self) -> None:
        for entry in [e for e in self._active if e.handle.cancel_requested]:
            self._drop(entry, SearchCancelled(f"cancelled after {entry.job.step} steps"))
        entries = list(self._active)
        if not entries:
            return
        jobs = [e.job for e in entries]
        t0 = time.perf_counter()
        try:
            self.engine.step(jobs)
        except Exception as exc:  # e.g. CUDA OOM: fail this batch, keep serving
            log.exception("search step failed for %d job(s)", len(jobs))
            for entry in entries:
                self._drop(entry, exc)
            return
        elapsed = time.perf_counter() - t0
        self.steps_done += len(jobs)
        preview_jobs = [j for j in jobs if j.wants_preview]
        previews = dict(zip(preview_jobs, self.engine.previews(preview_jobs), strict=True)
                        ) if preview_jobs else {}
        for entry in entries:
            job = entry.job
            job.timings["search_s"] = job.timings.get("search_s", 0.0) + elapsed
            if entry.on_progress is not None:
                try:
                    entry.on_progress(job.progress(previews.get(job)))
                except Exception as exc:
                    log.warning("progress consumer of job %d failed (%s); cancelling it",
                                entry.handle.id, exc)
                    entry.handle.cancel()
            if job.done and not entry.handle.cancel_requested:
                try:
                    self._drop(entry, self.engine.finish(job))
                except Exception as exc:
                    log.exception("finishing job %d failed", entry.handle.id)
                    self._drop(entry, exc)
