"""Job execution: claim queued jobs under a lease, run them on the ML side, write results.

Safety rules, each enforced in SQL rather than in memory so that several dispatchers
(one per web process, or standalone) and crashes anywhere stay correct:

* **Claim**: the oldest ready job moves ``queued -> running`` in one conditional
  UPDATE (PostgreSQL picks the row with ``FOR UPDATE SKIP LOCKED``; SQLite runs the
  claim in an IMMEDIATE transaction). Each claim bumps ``fencing_token``.
* **Fencing**: every progress, preview and result write is
  ``UPDATE ... WHERE id = :id AND fencing_token = :token AND status = 'running'``; a
  dispatcher whose lease was taken over writes nothing and stops.
* **Lease**: writes and heartbeats push ``lease_expires_at`` forward; a lease that runs
  out (process killed, node lost) is reclaimed: re-queued while attempts remain,
  failed with a reason after the last.
* **Results**: the PNG is stored (content-addressed) before the job is marked
  succeeded, so a succeeded job always has its image.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import and_, func, or_, select, update

from ml_backend.protocol import Failure, GenerationRequest, Progress, Result
from web_backend.ml_client import MLBusy, MLClient, MLUnavailable
from web_backend.models import Job, utcnow
from web_backend.services import Services

log = logging.getLogger(__name__)


class LeaseLost(Exception):
    """Another dispatcher owns the job now (our lease ran out); stop touching it."""


@dataclass(frozen=True)
class Claim:
    job_id: str
    token: int
    attempt: int
    request: dict[str, Any]
    image_prompt_key: str | None


@dataclass(frozen=True)
class DispatchPolicy:
    lease_s: float = 30.0             # a silent owner loses the job after this
    max_attempts: int = 3             # tries for failures that may pass
    job_timeout_s: float = 1800.0     # per attempt
    backoff_s: tuple[float, ...] = (2.0, 10.0, 30.0)
    progress_interval_s: float = 0.5  # at most ~2 progress writes per second per job
    heartbeat_s: float = 1.0          # lease renewal and cancel check when nothing else writes


class JobStore:
    """The dispatcher's SQL: claims and fenced writes (synchronous; run in a thread)."""

    def __init__(self, services: Services, owner: str, policy: DispatchPolicy) -> None:
        self.services = services
        self.owner = owner
        self.policy = policy
        self._skip_locked = services.engine.dialect.name == "postgresql"

    def _lease_end(self):
        return utcnow() + timedelta(seconds=self.policy.lease_s)

    def claim(self) -> Claim | None:
        now = utcnow()
        ready = and_(Job.status == "queued", Job.cancel_requested.is_(False),
                     or_(Job.available_at.is_(None), Job.available_at <= now))
        pick = select(Job.id).where(ready).order_by(Job.created_at, Job.id).limit(1)
        if self._skip_locked:
            pick = pick.with_for_update(skip_locked=True)
        with self.services.write_session_factory() as session:
            job_id = session.scalar(pick)
            if job_id is None:
                session.commit()
                return None
            row = session.execute(
                update(Job).where(Job.id == job_id, Job.status == "queued")
                .values(status="running", lease_owner=self.owner,
                        lease_expires_at=self._lease_end(), started_at=now,
                        fencing_token=Job.fencing_token + 1, attempts=Job.attempts + 1,
                        available_at=None)
                .returning(Job.fencing_token, Job.attempts, Job.request, Job.image_prompt_key)
            ).first()
            session.commit()
        if row is None:
            return None
        return Claim(job_id=job_id, token=row[0], attempt=row[1], request=row[2],
                     image_prompt_key=row[3])

    def _fenced(self, claim: Claim, **values: Any) -> bool:
        """Apply ``values`` only while we hold the job; returns its cancel flag."""
        with self.services.write_session_factory() as session:
            row = session.execute(
                update(Job).where(Job.id == claim.job_id, Job.fencing_token == claim.token,
                                  Job.status == "running")
                .values(**values).returning(Job.cancel_requested)).first()
            session.commit()
        if row is None:
            raise LeaseLost(claim.job_id)
        return bool(row[0])

    def renew(self, claim: Claim, **values: Any) -> bool:
        return self._fenced(claim, lease_expires_at=self._lease_end(), **values)

    def finish(self, claim: Claim, status: str, **values: Any) -> None:
        self._fenced(claim, status=status, finished_at=utcnow(), lease_owner=None,
                     lease_expires_at=None, **values)

    def requeue(self, claim: Claim, reason: str, delay_s: float, *, count_attempt: bool = True,
                ) -> None:
        extra = {} if count_attempt else {"attempts": Job.attempts - 1}
        self._fenced(claim, status="queued", lease_owner=None, lease_expires_at=None,
                     available_at=utcnow() + timedelta(seconds=delay_s), error=reason,
                     progress_step=0, **extra)

    def reclaim_expired(self) -> int:
        """Jobs whose owner went silent: retry while attempts remain, else fail them."""
        now = utcnow()
        expired = and_(Job.status == "running", Job.lease_expires_at < now)
        with self.services.write_session_factory() as session:
            failed = session.execute(
                update(Job).where(expired, Job.attempts >= self.policy.max_attempts)
                .values(status="failed", finished_at=now, lease_owner=None,
                        lease_expires_at=None,
                        error=f"the image service stopped answering {self.policy.max_attempts} "
                              "times; please submit again")).rowcount
            retried = session.execute(
                update(Job).where(expired).values(
                    status="queued", lease_owner=None, lease_expires_at=None,
                    available_at=None, progress_step=0,
                    error="the image service stopped answering; retrying")).rowcount
            session.commit()
        if failed or retried:
            log.warning("reclaimed expired leases: %d re-queued, %d failed", retried, failed)
        return failed + retried

    def running_count(self) -> int:
        with self.services.session_factory() as session:
            return session.scalar(select(func.count()).select_from(Job).where(
                Job.status == "running", Job.lease_owner == self.owner)) or 0


class Dispatcher:
    """Runs queued jobs, at most ``capacity`` at a time, until ``stop()``."""

    def __init__(self, services: Services, ml: MLClient, *, capacity: int,
                 policy: DispatchPolicy | None = None, owner: str | None = None,
                 poll_s: float = 0.5) -> None:
        self.services = services
        self.ml = ml
        self.capacity = capacity
        self.policy = policy or DispatchPolicy()
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.store = JobStore(services, self.owner, self.policy)
        self.poll_s = poll_s
        self._tasks: set[asyncio.Task[None]] = set()
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()  # a job was submitted in this process: claim now
        self.executions = 0  # ML calls started by this dispatcher (tests count them)

    async def run(self) -> None:
        last_reclaim = 0.0
        try:
            while not self._stop.is_set():
                claim = None
                try:  # the database may be restarting: nothing here may end the loop
                    if time.monotonic() - last_reclaim > self.policy.lease_s / 3:
                        await asyncio.to_thread(self.store.reclaim_expired)
                        last_reclaim = time.monotonic()
                    if len(self._tasks) < self.capacity:
                        claim = await asyncio.to_thread(self.store.claim)
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
                    await asyncio.wait_for(self._wake.wait(), self.poll_s)
        finally:
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def wake(self) -> None:
        """Call from the dispatcher's event loop after queueing a job (or a finished one
        frees a slot): skips the poll interval."""
        self._wake.set()

    # --- one job -------------------------------------------------------------------

    async def _execute(self, claim: Claim) -> None:
        try:
            await self._attempt(claim)
        except LeaseLost:
            log.warning("job %s: lease lost to another dispatcher; dropping it", claim.job_id)
        except asyncio.CancelledError:  # this dispatcher is shutting down: hand the job back
            with contextlib.suppress(LeaseLost, Exception):
                await asyncio.to_thread(self.store.requeue, claim, "restarted", 0.0,
                                        count_attempt=False)
            raise
        except Exception as exc:
            log.exception("job %s failed in the dispatcher", claim.job_id)
            with contextlib.suppress(LeaseLost):
                await self._retry_or_fail(claim, f"{type(exc).__name__}: {exc}")

    async def _attempt(self, claim: Claim) -> None:
        store = self.store
        try:
            image = (self.services.storage.get(claim.image_prompt_key)
                     if claim.image_prompt_key else None)
            request = GenerationRequest.model_validate({**claim.request, "image_prompt": image})
        except Exception as exc:  # a stored request that no longer validates
            await asyncio.to_thread(store.finish, claim, "failed", error=f"invalid job: {exc}")
            return
        self.executions += 1
        consumer = asyncio.create_task(self._consume(claim, request))
        heartbeat = asyncio.create_task(self._heartbeat(claim, consumer))
        try:
            outcome = await asyncio.wait_for(consumer, self.policy.job_timeout_s)
        except TimeoutError:
            outcome = Failure(code="invalid_request", message=(
                f"time limit of {self.policy.job_timeout_s:.0f} s exceeded"))
        except asyncio.CancelledError:
            if self._stop.is_set():
                raise
            outcome = Failure(code="cancelled", message="cancelled by the user")
        except MLBusy as exc:
            await asyncio.to_thread(store.requeue, claim, f"waiting for capacity: {exc}",
                                    self.policy.backoff_s[0], count_attempt=False)
            return
        except MLUnavailable as exc:
            outcome = Failure(code="internal", message=str(exc))
        finally:
            heartbeat.cancel()
        await self._settle(claim, outcome)

    async def _consume(self, claim: Claim, request: GenerationRequest,
                       ) -> Result | Failure:
        store = self.store
        if request.is_sample:
            return await self.ml.sample(request)
        last_write = 0.0
        async for message in self.ml.generate(request):
            if isinstance(message, Progress):
                now = time.monotonic()
                final = message.step >= message.total
                if message.preview_png is None and not final and \
                        now - last_write < self.policy.progress_interval_s:
                    continue
                values: dict[str, Any] = {"progress_step": message.step,
                                          "progress_total": message.total,
                                          "score": message.score}
                if message.preview_png is not None:
                    values["preview_key"] = await asyncio.to_thread(
                        self.services.storage.put, message.preview_png)
                if await asyncio.to_thread(store.renew, claim, **values):
                    return Failure(code="cancelled", message="cancelled by the user")
                last_write = time.monotonic()
            else:
                return message
        return Failure(code="internal", message="the image service ended the stream early")

    async def _heartbeat(self, claim: Claim, consumer: asyncio.Task[Any]) -> None:
        """Renew the lease and notice cancels while the ML side is silent (cold start)."""
        while not consumer.done():
            await asyncio.sleep(self.policy.heartbeat_s)
            try:
                if await asyncio.to_thread(self.store.renew, claim):
                    consumer.cancel()
                    return
            except LeaseLost:
                consumer.cancel()
                return
            except Exception as exc:  # database hiccup: the lease has slack, try again
                log.warning("heartbeat for %s failed (%s)", claim.job_id, type(exc).__name__)

    async def _settle(self, claim: Claim, outcome: Result | Failure) -> None:
        store = self.store
        if isinstance(outcome, Result):
            key = await asyncio.to_thread(self.services.storage.put, outcome.png)
            await asyncio.to_thread(
                store.finish, claim, "succeeded", result_key=key, seed=outcome.seed,
                score=outcome.score, timings=outcome.timings, error=None,
                progress_step=outcome.steps, progress_total=outcome.steps)
            metrics = self.services.metrics
            metrics.job_seconds.labels(status="succeeded").observe(
                outcome.timings.get("total_s", 0.0))
            metrics.search_steps.inc(outcome.steps)
        elif outcome.code == "cancelled":
            await asyncio.to_thread(store.finish, claim, "cancelled", error=outcome.message)
        elif outcome.code == "invalid_request":
            await asyncio.to_thread(store.finish, claim, "failed", error=outcome.message)
        else:
            await self._retry_or_fail(claim, outcome.message)

    async def _retry_or_fail(self, claim: Claim, reason: str) -> None:
        if claim.attempt >= self.policy.max_attempts:
            await asyncio.to_thread(
                self.store.finish, claim, "failed",
                error=f"the image service failed {claim.attempt} times; last error: {reason}")
            return
        delay = self.policy.backoff_s[min(claim.attempt - 1, len(self.policy.backoff_s) - 1)]
        log.warning("job %s attempt %d failed (%s); retrying in %.0f s", claim.job_id,
                    claim.attempt, reason, delay)
        await asyncio.to_thread(self.store.requeue, claim, f"retrying: {reason}", delay)
