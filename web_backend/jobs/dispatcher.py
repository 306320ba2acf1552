"""The dispatcher: runs queued jobs on the ML side, at most ``capacity`` at a time.

It owns no rules of its own: claims, leases and fenced writes are
:mod:`web_backend.jobs.queue`'s, and what a failure means (retry, fail, wait) is the
``Failure``'s (:mod:`ml_backend.protocol`). Several dispatchers (one per web process,
or ``clipgan dispatcher``) can run against one database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy.orm import Session, sessionmaker

from ml_backend.protocol import Failure, GenerationRequest, Progress, Result
from web_backend.core.metrics import Metrics
from web_backend.core.settings import DispatchSettings
from web_backend.jobs import queue
from web_backend.jobs.eta import Throughput
from web_backend.jobs.ml_client import MLClient, MLUnavailable
from web_backend.jobs.queue import Claim, JobStatus, LeaseLost
from web_backend.storage.blobs import BlobMissing, StoreUnavailable
from web_backend.storage.keeper import BlobKeeper

__all__ = ["Dispatcher"]

log = logging.getLogger(__name__)

T = TypeVar("T")



class _StoreDown(Exception):
    """The blob store could not give a job its image prompt: wait, spend no attempt."""


class Dispatcher:
    """Claims queued jobs and streams them through the ML side until ``stop()``.

    ``capacity``: jobs at once. By default the whole deployment's figure as the Serve
    controller has it (``max_ongoing_requests`` x ``max_replicas``: at zero replicas
    too, so a burst is sent at once and Serve scales to it), else what the ML side's
    ``info()`` last reported, else ``CLIPGAN_ML_SLOTS``. ``info()`` is asked only while
    this dispatcher has jobs running there (the replicas are up anyway): an idle
    dispatcher makes no call that could start a replica of a deployment at zero.
    """

    def __init__(self, *,
                 sessions:   sessionmaker[Session],  # writing sessions (each transition)
                 blobs:      BlobKeeper,             # results, previews, image prompts
                 ml:         MLClient,               # the ML side
                 settings:   DispatchSettings,       # leases, attempts, time limits
                 throughput: Throughput,             # capacity, shared with the ETAs
                 metrics:    Metrics,                # job durations and steps
                 capacity:   int | None = None,      # fixed jobs at once (tests)
                 owner:      str | None = None,      # lease owner name
                 ) -> None:
        self.sessions = sessions
        self.blobs = blobs
        self.ml = ml
        self.settings = settings
        self.throughput = throughput
        self.metrics = metrics
        self._fixed_capacity = capacity
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._tasks: set[asyncio.Task[None]] = set()
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()  # a job was queued in this process: claim now
        self._loop: asyncio.AbstractEventLoop | None = None
        self._capacity_checked = -settings.capacity_refresh_s
        self._info_task: asyncio.Task[None] | None = None
        self.executions = 0  # ML calls started by this dispatcher (tests count them)

    @property
    def capacity(self) -> int:
        return self._fixed_capacity or self.throughput.capacity

    async def _write(self, transition: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run one queue transition in its own writing session, off the event loop."""
        def run() -> T:
            with self.sessions() as session:
                return transition(session, *args, **kwargs)

        return await asyncio.to_thread(run)

    async def _refresh_capacity(self) -> None:
        """Learn the ML side's capacity and running replicas every ``capacity_refresh_s``
        from the Serve controller (or what is known), which wakes nothing. While a job of
        ours runs there (the replicas are up anyway) also ask the ML side itself, in the
        background (and as soon as a job gets its first answer while the catalog is
        unknown): its answer is the model catalog ``/v1/models`` shows without asking a
        deployment that may be at zero, and the capacity where no controller answers."""
        if time.monotonic() - self._capacity_checked < self.settings.capacity_refresh_s:
            return
        if self._tasks:
            self._learn_info_soon()
        self._capacity_checked = time.monotonic()
        self.throughput.replicas = await self.ml.replicas()
        if self._fixed_capacity:
            return
        capacity = await self.ml.capacity()
        if capacity:
            self.throughput.capacity = capacity

    def _learn_info_soon(self) -> None:
        """Ask the ML side's ``info`` in the background (once at a time)."""
        if self._info_task is None or self._info_task.done():
            self._info_task = asyncio.create_task(self._learn_info())

    async def _learn_info(self) -> None:
        with contextlib.suppress(MLUnavailable):
            info = await self.ml.info()
            if not self._fixed_capacity and not await self.ml.capacity():
                self._use_capacity(info)

    def _use_capacity(self, info: dict[str, Any] | None) -> None:
        reported = (info or {}).get("capacity")
        if isinstance(reported, int) and reported > 0:
            self.throughput.capacity = reported

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        last_reclaim = 0.0
        try:
            while not self._stop.is_set():
                claim = None
                try:  # the database may be restarting: nothing here may end the loop
                    if time.monotonic() - last_reclaim > self.settings.lease_s / 3:
                        requeued, failed = await self._write(
                            queue.reclaim_expired, max_attempts=self.settings.max_attempts)
                        if requeued or failed:
                            log.warning("reclaimed expired leases: %d re-queued, %d failed",
                                        requeued, failed)
                        last_reclaim = time.monotonic()
                    await self._refresh_capacity()
                    if len(self._tasks) < self.capacity:
                        claim = await self._write(queue.claim, owner=self.owner,
                                                  lease_s=self.settings.lease_s)
                except Exception as exc:
                    log.warning("dispatcher database call failed (%s: %s); retrying",
                                type(exc).__name__, exc)
                if claim is not None:
                    task = asyncio.create_task(self._execute(claim), name=claim.job_id)
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                    task.add_done_callback(lambda _: self._wake.set())  # a slot is free
                    continue
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    # other processes' submissions are found by polling
                    await asyncio.wait_for(self._wake.wait(), self.settings.poll_s)
        finally:
            for task in [*self._tasks, *([self._info_task] if self._info_task else [])]:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def wake(self) -> None:
        """A job was queued in this process: skip the poll interval. Any thread."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._wake.set)

    # --- one job -------------------------------------------------------------------

    async def _execute(self, claim: Claim) -> None:
        try:
            await self._settle(claim, await self._attempt(claim))
        except LeaseLost:
            log.warning("job %s: lease lost (another dispatcher, or the job was deleted); "
                        "dropping it", claim.job_id)
            await self.blobs.forget_if_gone(claim.job_id)  # what we stored for a deleted job
        except _StoreDown as exc:
            log.warning("job %s: %s; waiting for the store", claim.job_id, exc)
            with contextlib.suppress(LeaseLost):
                await self._write(queue.requeue, claim, reason="waiting for the picture store",
                                  delay_s=self.settings.backoff_s[0], count_attempt=False)
        except asyncio.CancelledError:  # this dispatcher is shutting down: hand the job back
            with contextlib.suppress(LeaseLost, Exception):
                await self._write(queue.requeue, claim, reason="restarted", delay_s=0.0,
                                  count_attempt=False)
            raise
        except Exception as exc:
            log.exception("job %s failed in the dispatcher", claim.job_id)
            with contextlib.suppress(LeaseLost):
                await self._settle(claim, Failure(code="internal",
                                                  message=f"{type(exc).__name__}: {exc}"))

    async def _attempt(self, claim: Claim) -> Result | Failure:
        try:
            image = (await self.blobs.get(claim.image_prompt_key)
                     if claim.image_prompt_key else None)
        except StoreUnavailable as exc:
            raise _StoreDown(str(exc)) from None
        except BlobMissing:
            return Failure(code="invalid_request", message="the image prompt is gone")
        try:
            fields = {k: v for k, v in claim.request.items() if k != "image_prompt_sha256"}
            request = GenerationRequest.model_validate({**fields, "image_prompt": image})
        except Exception as exc:  # a stored request that no longer validates
            return Failure(code="invalid_request", message=f"invalid job: {exc}")
        self.executions += 1
        consumer = asyncio.create_task(self._consume(claim, request))
        heartbeat = asyncio.create_task(self._heartbeat(claim, consumer))
        try:
            return await asyncio.wait_for(consumer, self.settings.timeout_s)
        except TimeoutError:
            return Failure(code="timeout", message=(
                f"time limit of {self.settings.timeout_s:.0f} s exceeded"))
        except asyncio.CancelledError:
            if self._stop.is_set():
                raise
            return Failure(code="cancelled", message="cancelled by the user")
        finally:
            heartbeat.cancel()

    async def _consume(self, claim: Claim, request: GenerationRequest) -> Result | Failure:
        if request.is_sample:
            return await self.ml.sample(request)
        last_write = 0.0
        cold_since = time.monotonic() if self.throughput.at_zero else None
        async for message in self.ml.generate(request):
            if cold_since is not None:  # the first answer: a replica is up, and took this
                self.throughput.timed_cold_start(time.monotonic() - cold_since)
                cold_since = None
            if self.ml.known_info() is None:  # a replica answers now: learn the catalog
                self._learn_info_soon()
            if not isinstance(message, Progress):
                return message
            final = message.step >= message.total
            if message.preview_png is None and not final and \
                    time.monotonic() - last_write < self.settings.progress_interval_s:
                continue
            preview_key = None
            if message.preview_png is not None:
                try:
                    preview_key = await self.blobs.save(claim.job_id, message.preview_png)
                except StoreUnavailable as exc:  # a preview is not worth waiting for
                    log.warning("job %s: preview not stored: %s", claim.job_id, exc)
            released: list[str] = []
            if await self._write(queue.renew, claim, lease_s=self.settings.lease_s,
                                 progress_step=message.step, progress_total=message.total,
                                 score=message.score, preview_key=preview_key,
                                 released=released):
                return Failure(code="cancelled", message="cancelled by the user")
            await self._collect(released)  # the preview this one replaces
            last_write = time.monotonic()
        return Failure(code="unavailable", message="the image service ended the stream early")

    async def _heartbeat(self, claim: Claim, consumer: asyncio.Task[Any]) -> None:
        """Renew the lease and notice cancels while the ML side is silent (cold start)."""
        while not consumer.done():
            await asyncio.sleep(self.settings.heartbeat_s)
            try:
                if await self._write(queue.renew, claim, lease_s=self.settings.lease_s):
                    consumer.cancel()
                    return
            except LeaseLost:
                consumer.cancel()
                return
            except Exception as exc:  # database hiccup: the lease has slack, try again
                log.warning("heartbeat for %s failed (%s)", claim.job_id, type(exc).__name__)

    async def _collect(self, keys: list[str]) -> None:
        """Blobs this job let go of: deleted unless another job refers to them. Best
        effort: what fails here stays for ``clipgan storage gc``."""
        if not keys:
            return
        try:
            await self.blobs.collect(keys)
        except Exception as exc:
            log.warning("blobs %s not collected (%s: %s)", keys, type(exc).__name__, exc)

    async def _store_result(self, claim: Claim, png: bytes) -> str:
        """Store the picture, trying again while the store is down (the lease renewed
        meanwhile) for up to ``store_wait_s``: the GPU's work is not thrown away for a
        blip. Raises :class:`StoreUnavailable` after that, :class:`LeaseLost`."""
        deadline = time.monotonic() + self.settings.store_wait_s
        pause = 0.5
        while True:
            try:
                return await self.blobs.save(claim.job_id, png)
            except StoreUnavailable:
                if time.monotonic() + pause > deadline:
                    raise
            await asyncio.sleep(pause)
            pause = min(pause * 2, 10.0)
            await self._write(queue.renew, claim, lease_s=self.settings.lease_s)

    async def _settle(self, claim: Claim, outcome: Result | Failure) -> None:
        released: list[str] = []
        if isinstance(outcome, Result):
            try:
                key = await self._store_result(claim, outcome.png)
            except StoreUnavailable as exc:  # never a succeeded job without its picture
                log.warning("job %s attempt %d: the picture could not be stored: %s",
                            claim.job_id, claim.attempt, exc)
                if claim.attempt >= self.settings.max_attempts:
                    await self._write(queue.finish, claim, status=JobStatus.failed,
                                      error="the picture could not be stored (the picture "
                                            "store is unavailable); please submit again",
                                      released=released)
                else:
                    await self._write(queue.requeue, claim, released=released,
                                      reason="the picture could not be stored; retrying",
                                      delay_s=self.settings.backoff_before(claim.attempt))
                await self._collect(released)
                return
            await self._write(queue.finish, claim, status=JobStatus.succeeded, result_key=key,
                              seed=outcome.seed, score=outcome.score, timings=outcome.timings,
                              steps=outcome.steps, released=released)
            await self._collect(released)
            metrics = self.metrics
            metrics.job_seconds.labels(status="succeeded").observe(
                outcome.timings.get("total_s", 0.0))
            metrics.search_steps.inc(outcome.steps)
            return
        # the job row shows fixed sentences; what went wrong inside is logged here
        shown = outcome.public_message
        if outcome.code not in ("cancelled", "invalid_request"):
            log.warning("job %s attempt %d: %s: %s", claim.job_id, claim.attempt, outcome.code,
                        outcome.message)
        if outcome.code == "cancelled":
            await self._write(queue.finish, claim, status=JobStatus.cancelled, error=shown,
                              released=released)
        elif outcome.code == "busy":  # nothing started: wait, without spending an attempt
            await self._write(queue.requeue, claim, reason=f"waiting for capacity: {shown}",
                              delay_s=self.settings.backoff_s[0], count_attempt=False,
                              released=released)
        elif not outcome.retryable or claim.attempt >= self.settings.max_attempts:
            error = shown if not outcome.retryable else (
                f"the image service failed {claim.attempt} times; last error: {shown}")
            await self._write(queue.finish, claim, status=JobStatus.failed, error=error,
                              released=released)
        else:
            delay = self.settings.backoff_before(claim.attempt)
            log.info("job %s: retrying in %.0f s", claim.job_id, delay)
            await self._write(queue.requeue, claim, reason=f"retrying: {shown}", delay_s=delay,
                              released=released)
        await self._collect(released)
