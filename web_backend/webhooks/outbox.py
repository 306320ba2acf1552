"""The webhook outbox: what to announce, written with the change it announces.

:func:`record` runs inside the transaction that ends a job (``queue.finish``,
``cancel``, ``reclaim_expired``), so either both the job's end and its pending
delivery are committed or neither is: a process killed between "succeeded" and the
call still has the call to make after a restart. Senders then take due rows with
:func:`claim_due` (a compare-and-set on ``next_attempt_at``, which doubles as a lease:
a sender that dies leaves the row due again) and end each attempt with :func:`settle`.
Delivery is at least once; receivers deduplicate on the row's id (``webhook-id``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from web_backend.core.models import DeliveryStatus, Job, JobStatus, WebhookDelivery, utcnow

__all__ = ["EVENT_OF_STATUS", "Due", "claim_due", "deliveries_for", "record", "settle"]

EVENT_OF_STATUS = {JobStatus.succeeded: "completed", JobStatus.failed: "failed",
                   JobStatus.cancelled: "cancelled"}
_MAX_ERROR_CHARS = 500


@dataclass(frozen=True)
class Due:
    """A delivery a sender now holds for one attempt."""

    id: str
    job_id: str
    owner_id: int      # whose job: a sender caps each account's deliveries in flight
    event: str
    attempt: int       # 1 for the first; the fence for settle


def record(session: Session, job_ids: Iterable[str], status: JobStatus) -> None:
    """Queue the webhooks of jobs that just ended in ``status`` (in the caller's
    transaction: it commits them with the job's change)."""
    event = EVENT_OF_STATUS.get(status)
    ids = list(job_ids)
    if event is None or not ids:
        return
    for job_id, events in session.execute(
            select(Job.id, Job.webhook_events).where(Job.id.in_(ids),
                                                     Job.webhook_url.is_not(None))):
        if event in (events or ()):
            session.add(WebhookDelivery(job_id=job_id, event=event))
    session.flush()


def claim_due(session: Session, *, hold_s: float, limit: int, max_attempts: int,
              per_owner: int, in_flight: Mapping[int, int]) -> list[Due]:
    """Take up to ``limit`` due deliveries for one attempt each, held ``hold_s``.

    An account gets at most ``per_owner`` attempts in flight, counting the caller's
    ``in_flight`` ones (owner -> attempts): the rest of its deliveries wait their turn.
    A delivery whose attempts are all spent without a recorded answer (its sender died
    during the last one) is failed here, never tried again.
    """
    now = utcnow()
    session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.status == DeliveryStatus.pending,
               WebhookDelivery.next_attempt_at <= now,
               WebhookDelivery.attempts >= max_attempts)
        .values(status=DeliveryStatus.failed,
                last_error=f"no answer was recorded for attempt {max_attempts} of "
                           f"{max_attempts}; not tried again"))
    query = (select(WebhookDelivery.id, WebhookDelivery.next_attempt_at, Job.user_id)
             .join(Job, Job.id == WebhookDelivery.job_id)
             .where(WebhookDelivery.status == DeliveryStatus.pending,
                    WebhookDelivery.next_attempt_at <= now)
             .order_by(WebhookDelivery.next_attempt_at).limit(limit))
    full = [owner for owner, n in in_flight.items() if n >= per_owner]
    if full:
        query = query.where(Job.user_id.not_in(full))
    taken: list[Due] = []
    owners = Counter(in_flight)
    for delivery_id, due_at, owner_id in session.execute(query).all():
        if owners[owner_id] >= per_owner:
            continue
        # another sender may take the same row: one wins
        row = session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id == delivery_id,
                   WebhookDelivery.status == DeliveryStatus.pending,
                   WebhookDelivery.next_attempt_at == due_at)
            .values(next_attempt_at=now + timedelta(seconds=hold_s),
                    attempts=WebhookDelivery.attempts + 1)
            .returning(WebhookDelivery.job_id, WebhookDelivery.event,
                       WebhookDelivery.attempts)).first()
        if row is not None:
            owners[owner_id] += 1
            taken.append(Due(id=delivery_id, job_id=row[0], owner_id=owner_id, event=row[1],
                             attempt=row[2]))
    session.commit()
    return taken


def settle(session: Session, due: Due, *, error: str | None, retry_in_s: float | None) -> None:
    """End an attempt: delivered (``error`` None), retried in ``retry_in_s``, or failed for
    good (``retry_in_s`` None). A sender that lost its hold (it took longer than
    ``hold_s`` and another took over) writes nothing."""
    now = utcnow()
    if error is None:
        values: dict[str, object] = dict(status=DeliveryStatus.delivered, delivered_at=now,
                                         last_error=None)
    elif retry_in_s is None:
        values = dict(status=DeliveryStatus.failed, last_error=error[:_MAX_ERROR_CHARS])
    else:
        values = dict(next_attempt_at=now + timedelta(seconds=retry_in_s),
                      last_error=error[:_MAX_ERROR_CHARS])
    session.execute(update(WebhookDelivery)
                    .where(WebhookDelivery.id == due.id,
                           WebhookDelivery.attempts == due.attempt,
                           WebhookDelivery.status == DeliveryStatus.pending)
                    .values(**values))
    session.commit()


def deliveries_for(session: Session, job_ids: Iterable[str],
                   ) -> dict[str, list[WebhookDelivery]]:
    """The deliveries of each job, oldest first (what a job view shows)."""
    found: dict[str, list[WebhookDelivery]] = {}
    for delivery in session.scalars(
            select(WebhookDelivery).where(WebhookDelivery.job_id.in_(list(job_ids)))
            .order_by(WebhookDelivery.created_at)):
        found.setdefault(delivery.job_id, []).append(delivery)
    return found
