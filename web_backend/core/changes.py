"""What a transaction changed, announced after it commits (and forgotten on rollback).

Two kinds of change matter beyond the transaction that made them: jobs whose row
moved (their views, their streams) and users whose logins or standing changed (the
logins other code trusts without a query). Domain code records them here while it
writes (:func:`mark_changed`, :func:`logins_changed`); whoever built the session
factory decides who hears them after the commit (:func:`announce_commits`): this
process's caches at once, and a feed's publisher for the other processes. Domain
code never needs to know who listens.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import timedelta
from typing import Any, Final

from sqlalchemy import delete, event, insert, update
from sqlalchemy.orm import Session, sessionmaker

from web_backend.core.models import Deletion, Job, User, utcnow

__all__ = ["DELETIONS_KEPT", "JobsHeard", "LoginsHeard", "announce_commits", "logins_changed",
           "mark_changed", "mark_deleted"]

DELETIONS_KEPT = timedelta(hours=1)  # far longer than any poller's overlap

_JOBS: Final = "clipgan_changed_jobs"
_LOGINS: Final = "clipgan_changed_logins"

JobsHeard = Callable[[frozenset[str]], None]
LoginsHeard = Callable[[frozenset[int]], None]


def mark_changed(session: Session, job_ids: Iterable[str]) -> None:
    """Record that this transaction changed these jobs (for writes the ORM does not track:
    Core ``UPDATE`` statements). Announced after the commit, dropped on rollback."""
    session.info.setdefault(_JOBS, set()).update(job_ids)


def logins_changed(session: Session, user_ids: Iterable[int]) -> None:
    """This transaction revokes, disables or enables these users' logins: moves their
    ``logins_changed_at`` (the SQLite poller's signal; PostgreSQL's trigger notifies) and
    has them announced after the commit."""
    ids = set(user_ids)
    if not ids:
        return
    session.execute(update(User).where(User.id.in_(ids)).values(logins_changed_at=utcnow()))
    session.info.setdefault(_LOGINS, set()).update(ids)


def mark_deleted(session: Session, *, jobs: Iterable[str] = (),
                 users: Iterable[int] = ()) -> None:
    """This transaction deletes these jobs, or these users with everything of theirs.
    Announced like changes (a view that is re-read finds nothing, a login that is
    checked finds no account), and recorded in ``deletions`` for processes that poll
    for changed rows: a deleted row shows no change. Records older than
    ``DELETIONS_KEPT`` are dropped here, so the table stays small."""
    job_ids, user_ids = list(jobs), list(users)
    subjects = job_ids + [f"user:{user_id}" for user_id in user_ids]
    if not subjects:
        return
    now = utcnow()
    session.execute(delete(Deletion).where(Deletion.deleted_at < now - DELETIONS_KEPT))
    session.execute(insert(Deletion), [{"subject": subject, "deleted_at": now}
                                       for subject in subjects])
    mark_changed(session, job_ids)
    if user_ids:
        logins_changed(session, user_ids)


def announce_commits(factory: sessionmaker[Session], *,
                     jobs: Sequence[JobsHeard] = (),      # called with the jobs changed
                     logins: Sequence[LoginsHeard] = (),  # called with the users changed
                     ) -> None:
    """After each commit of a session from ``factory``, call each of ``jobs`` with the
    jobs it changed (ORM writes, and Core updates named by :func:`mark_changed`) and each
    of ``logins`` with the users named by :func:`logins_changed`; nothing for a
    rollback. Call it once per factory: the first listener takes the changes."""

    @event.listens_for(factory, "after_flush")
    def _collect(session: Session, _context: Any) -> None:
        changed = [obj.id for obj in (*session.new, *session.dirty, *session.deleted)
                   if isinstance(obj, Job)]
        if changed:
            mark_changed(session, changed)

    @event.listens_for(factory, "after_commit")
    def _announce(session: Session) -> None:
        job_ids = session.info.pop(_JOBS, None)
        user_ids = session.info.pop(_LOGINS, None)
        if job_ids:
            for call in jobs:
                call(frozenset(job_ids))
        if user_ids:
            for heard in logins:
                heard(frozenset(user_ids))

    @event.listens_for(factory, "after_rollback")
    def _forget(session: Session) -> None:
        session.info.pop(_JOBS, None)
        session.info.pop(_LOGINS, None)
