"""Leases on named work: one process at a time does it, another takes over if it dies.

The same rule as a job's lease (``jobs.queue``), for work that is not a job: a holder
renews before expiry; a lease whose holder went silent is anybody's. One conditional
``UPDATE`` (or the first ``INSERT``) decides, so two processes never both hold it.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import or_, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from web_backend.core.models import Lease, utcnow

__all__ = ["hold", "release"]


def hold(session: Session, name: str, owner: str, *, ttl_s: float) -> bool:
    """Take or renew lease ``name`` for ``owner`` (commits). False: someone else holds it."""
    now = utcnow()
    taken = session.execute(
        update(Lease).where(Lease.name == name,
                            or_(Lease.owner == owner, Lease.expires_at < now))
        .values(owner=owner, expires_at=now + timedelta(seconds=ttl_s))
        .returning(Lease.name)).first()
    if taken is not None:
        session.commit()
        return True
    try:
        session.add(Lease(name=name, owner=owner, expires_at=now + timedelta(seconds=ttl_s)))
        session.commit()
    except IntegrityError:  # the row exists: held by another, not expired
        session.rollback()
        return False
    return True


def release(session: Session, name: str, owner: str) -> None:
    """Give the lease up now (a clean shutdown), if ``owner`` holds it (commits)."""
    session.execute(update(Lease).where(Lease.name == name, Lease.owner == owner)
                    .values(expires_at=utcnow()))
    session.commit()
