"""How fast the queue moves: the ETA's inputs.

A queued job's ETA is (jobs ahead / jobs run at once + 1) x the time one job takes;
a running job's is what is left of that time. Both inputs are kept here, in one object
per process: how many jobs the ML side runs at once (configured, or what the ML side
reports, set by the dispatcher) and the mean run time of recent jobs (read from the
database at most every few seconds: every status read of an active job needs it, and
it moves only when a job finishes). While the ML side is at zero replicas, a job's ETA
also holds the wait for a GPU to start.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from sqlalchemy import select
from sqlalchemy.orm import Session

from web_backend.core.models import Job, JobStatus

__all__ = ["Throughput"]


class Throughput:
    """Jobs the ML side runs at once, and how long one takes (the ETA's unit)."""

    def __init__(self, *,
                 capacity:      int,            # jobs at once until the ML side says
                 default_job_s: float,          # the unit before any job has finished
                 cold_start_s:  float = 60.0,   # a GPU replica's start, until one is timed
                 ttl_s:         float = 5.0,    # re-read the mean at most this often
                 clock:         Callable[[], float] = time.monotonic) -> None:
        self.capacity = capacity
        self.default_job_s = default_job_s
        self.cold_start_s = cold_start_s
        # Generator replicas running, as the Serve controller last said (the dispatcher
        # asks it); None where nobody can tell (the ingress transport, no dispatcher).
        self.replicas: int | None = None
        self.ttl_s = ttl_s
        self._clock = clock
        self._average: tuple[float, float] | None = None  # (seconds, when read)

    def average_job_seconds(self, session: Session) -> float:
        """Mean run time of the last 50 succeeded jobs, read at most every ``ttl_s`` (an
        ETA a few seconds behind is still an estimate)."""
        cached = self._average
        if cached is not None and self._clock() - cached[1] < self.ttl_s:
            return cached[0]
        rows = session.execute(
            select(Job.started_at, Job.finished_at).where(Job.status == JobStatus.succeeded,
                                                          Job.started_at.is_not(None))
            .order_by(Job.finished_at.desc()).limit(50)).all()
        durations = [(f - s).total_seconds() for s, f in rows if s and f]
        average = sum(durations) / len(durations) if durations else self.default_job_s
        self._average = (average, self._clock())
        return average

    def queued_eta(self, average_s: float, ahead: int) -> float:
        """Seconds until a job with ``ahead`` jobs before it is done."""
        return average_s * (1 + ahead // self.capacity)

    @property
    def at_zero(self) -> bool:
        """Whether the ML side has no replica running: a job waits for a GPU to start."""
        return self.replicas == 0

    def timed_cold_start(self, seconds: float) -> None:
        """A job that found the ML side at zero got its first progress after ``seconds``:
        the next user waiting for a GPU is told that figure."""
        self.cold_start_s = seconds
        self.replicas = max(1, self.replicas or 0)

    def starting_wait(self, waited_s: float) -> float:
        """Seconds of a GPU start still ahead of a job that has waited ``waited_s``."""
        return max(0.0, self.cold_start_s - waited_s)

    @staticmethod
    def running_eta(average_s: float, step: int, total: int) -> float:
        """Seconds left of a running job at ``step`` of ``total``."""
        done = step / total if total else 0.0
        return average_s * (1 - done)
