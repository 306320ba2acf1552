"""Who refers to which blob, in the database: so a shared blob goes only with its last job.

The rules, which make "delete a blob only when nothing refers to it" hold with any
number of writers and deleters on any number of nodes:

* **A writer pins before it stores** (:func:`pin`): its ``blob_refs`` row (and the
  ``blobs`` row, if new) is committed before the bytes are written, and only then may
  a job's column name the key. A job column therefore never names a blob without a
  reference holding it.
* **A deleter locks, looks, deletes** (:func:`doomed`): it locks the ``blobs`` rows
  (``FOR UPDATE`` on PostgreSQL; SQLite's writing transaction is IMMEDIATE, so writers
  take turns), then, in a new statement that sees every committed pin, picks those no
  reference holds, deletes their rows, and deletes their objects *before* it commits.
  A writer pinning the same content meanwhile waits on the row lock (the reference's
  foreign key), then finds no row, inserts it again and stores the bytes again.
* A pin whose bytes were never stored (a crash between) only keeps a row alive; an
  object whose row is gone (a crash after the commit of a deletion whose object
  deletion failed) is found by ``clipgan storage gc``.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from datetime import datetime

from sqlalchemy import ColumnElement, and_, delete, exists, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from web_backend.core.models import Blob, BlobRef, Job, utcnow

__all__ = ["UPLOAD_PREFIX", "adopt", "doomed", "hand_over", "ownerless", "pin", "release",
           "release_if_gone", "release_jobs_of", "release_stale", "stale_uploads",
           "unreferenced_rows", "usage_by_user"]

UPLOAD_PREFIX = "upload:"  # the owner of an image prompt stored before its job exists


def _insert_ignoring_conflicts(session: Session, table: type[Blob] | type[BlobRef],
                               rows: list[dict[str, object]]) -> None:
    if not rows:
        return
    if session.get_bind().dialect.name == "postgresql":
        session.execute(postgresql.insert(table).on_conflict_do_nothing(), rows)
    else:
        session.execute(sqlite.insert(table).on_conflict_do_nothing(), rows)


def pin(session: Session, owner: str, blobs: Mapping[str, int]) -> None:
    """``owner`` refers to these blobs (key -> size) from now on; the caller commits
    *before* storing them. On PostgreSQL a deleter that removed a row between the two
    inserts makes the second fail (``IntegrityError``): roll back and pin again."""
    now = utcnow()
    _insert_ignoring_conflicts(session, Blob, [
        {"key": key, "size": size, "created_at": now} for key, size in sorted(blobs.items())])
    _insert_ignoring_conflicts(session, BlobRef, [
        {"owner": owner, "key": key, "created_at": now} for key in sorted(blobs)])


def hand_over(session: Session, uploads: Mapping[str, tuple[str, Collection[str]]]) -> list[str]:
    """Uploads become their jobs' references: ``uploads`` maps an upload owner to (its
    key, the jobs made with it: none when the submission was refused or replayed). The
    uploads' own references go; returns the keys they held (to collect)."""
    if not uploads:
        return []
    now = utcnow()
    _insert_ignoring_conflicts(session, BlobRef, [
        {"owner": job_id, "key": key, "created_at": now}
        for key, job_ids in uploads.values() for job_id in job_ids])
    return release(session, uploads.keys())


def release(session: Session, owners: Collection[str], *,
            keep: Collection[str] = ()) -> list[str]:
    """These owners no longer refer to their blobs (but ``keep``); returns the keys let go."""
    if not owners:
        return []
    query = delete(BlobRef).where(BlobRef.owner.in_(list(owners)))
    if keep:
        query = query.where(BlobRef.key.not_in(list(keep)))
    return sorted(set(session.scalars(query.returning(BlobRef.key)).all()))


def release_jobs_of(session: Session, user_id: int) -> list[str]:
    """Every job of this user lets go of its blobs (its account is being deleted)."""
    theirs = select(Job.id).where(Job.user_id == user_id).scalar_subquery()
    return sorted(set(session.scalars(delete(BlobRef).where(BlobRef.owner.in_(theirs))
                                      .returning(BlobRef.key)).all()))


def release_stale(session: Session, job_id: str) -> list[str]:
    """The job's references to blobs its row no longer names (a preview replaced, a
    result whose storing failed): let go; returns their keys."""
    row = session.execute(select(Job.result_key, Job.preview_key, Job.image_prompt_key)
                          .where(Job.id == job_id)).first()
    keep = [key for key in (row or ()) if key]
    return release(session, [job_id], keep=keep)


def release_if_gone(session: Session, owner: str) -> list[str]:
    """The references of job ``owner`` if the job no longer exists (deleted while its
    dispatcher was still storing a preview or its picture); returns their keys."""
    gone = ~exists().where(Job.id == owner)
    return sorted(set(session.scalars(delete(BlobRef).where(BlobRef.owner == owner, gone)
                                      .returning(BlobRef.key)).all()))


def doomed(session: Session, keys: Iterable[str]) -> list[str]:
    """Of ``keys``, the blobs nothing refers to: their rows locked and deleted here. The
    caller deletes their objects, then commits (rolling back keeps the rows)."""
    wanted = sorted(set(keys))
    if not wanted:
        return []
    locking = select(Blob.key).where(Blob.key.in_(wanted)).order_by(Blob.key)
    if session.get_bind().dialect.name == "postgresql":
        session.execute(locking.with_for_update()).all()
    unreferenced = session.scalars(
        select(Blob.key).where(Blob.key.in_(wanted),
                               ~exists().where(BlobRef.key == Blob.key))).all()
    if unreferenced:
        session.execute(delete(Blob).where(Blob.key.in_(unreferenced)))
    return sorted(unreferenced)


def usage_by_user(session: Session, user_ids: Collection[int]) -> dict[int, int]:
    """Bytes each user's jobs refer to (a blob shared by two of their jobs counts once;
    blobs of unknown size, from before migration 0009, count nothing until ``gc``)."""
    if not user_ids:
        return {}
    theirs = (select(Job.user_id, BlobRef.key).join(BlobRef, BlobRef.owner == Job.id)
              .where(Job.user_id.in_(list(user_ids))).distinct().subquery())
    rows = session.execute(
        select(theirs.c.user_id, func.coalesce(func.sum(Blob.size), 0))
        .join(Blob, Blob.key == theirs.c.key).group_by(theirs.c.user_id)).all()
    used = {user_id: 0 for user_id in user_ids}
    used.update({user_id: int(total) for user_id, total in rows})
    return used


def unreferenced_rows(session: Session, *, limit: int, after: str = "") -> list[str]:
    """Blobs rows nothing refers to (left by a deletion that failed midway), in key
    order from ``after``: a page at a time."""
    return list(session.scalars(
        select(Blob.key).where(Blob.key > after, ~exists().where(BlobRef.key == Blob.key))
        .order_by(Blob.key).limit(limit)).all())


def adopt(session: Session, blobs: Mapping[str, int]) -> None:
    """Give these stored objects rows (none refers to them): from then on they are
    collected by the rules, under the row locks, like any unreferenced blob."""
    now = utcnow()
    _insert_ignoring_conflicts(session, Blob, [
        {"key": key, "size": size, "created_at": now} for key, size in sorted(blobs.items())])


def _upload_owners() -> ColumnElement[bool]:
    """Owners that are uploads: a range the primary key's index serves (not a LIKE)."""
    return and_(BlobRef.owner >= UPLOAD_PREFIX,
                BlobRef.owner < UPLOAD_PREFIX[:-1] + chr(ord(UPLOAD_PREFIX[-1]) + 1))


def ownerless(session: Session, *, before: datetime, limit: int) -> list[str]:
    """Job owners of references pinned before ``before`` whose job is gone: what a
    dispatcher that died between its pin and learning of the deletion left."""
    uploads = _upload_owners()
    return list(session.scalars(
        select(BlobRef.owner).where(~uploads, BlobRef.created_at < before,
                                    ~exists().where(Job.id == BlobRef.owner))
        .distinct().limit(limit)).all())


def stale_uploads(session: Session, *, before: datetime, limit: int) -> list[str]:
    """Upload pins older than ``before``: their submission died between storing the image
    prompt and queueing its job (a crash, the database away)."""
    uploads = _upload_owners()
    return list(session.scalars(select(BlobRef.owner).where(uploads, BlobRef.created_at < before)
                                .distinct().limit(limit)).all())
