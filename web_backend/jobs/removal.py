"""Deleting finished jobs: by their owner, with their account, or when they expire.

A deleted job's row goes with its webhook deliveries (the foreign key cascades) and
its references to blobs (``storage.refs``: the caller collects the keys returned,
after the commit, so a blob another job shares stays). The deletion is announced like
a change (``core.changes.mark_deleted``): views and streams of the job end on every
process. Deleting gives no quota back: the day's images were made.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from web_backend.core.changes import mark_deleted
from web_backend.core.models import Job, JobStatus
from web_backend.storage import refs

__all__ = ["delete_finished", "expired"]

_FINISHED = (JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled)


def delete_finished(session: Session, job_ids: Sequence[str]) -> tuple[list[str], list[str]]:
    """Delete those of ``job_ids`` that have ended (an active job is cancelled, never
    deleted: its dispatcher still writes to it), and commit. Returns (the ids deleted,
    the blob keys they let go of)."""
    if not job_ids:
        return [], []
    deleted = list(session.scalars(
        delete(Job).where(Job.id.in_(list(job_ids)), Job.status.in_(_FINISHED))
        .returning(Job.id)).all())
    released = refs.release(session, deleted)
    mark_deleted(session, jobs=deleted)
    session.commit()
    return deleted, released


def expired(session: Session, *, ended_before: datetime, limit: int) -> list[str]:
    """Up to ``limit`` jobs that ended before ``ended_before``, oldest first."""
    return list(session.scalars(
        select(Job.id).where(Job.finished_at < ended_before, Job.status.in_(_FINISHED))
        .order_by(Job.finished_at).limit(limit)).all())
