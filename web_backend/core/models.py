"""Database tables (SQLAlchemy 2 typed models). Alembic migrations create them."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING_CONVENTION = {  # stable constraint names, so migrations can drop them on any database
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

__all__ = ["ApiKey", "AuthSession", "Base", "Blob", "BlobRef", "Counter", "Deletion",
           "DeliveryStatus", "Job", "JobStatus", "Lease", "RefreshToken", "User", "UserUsage",
           "WebhookDelivery", "utcnow"]


class JobStatus(StrEnum):
    """Where a job is. Only :mod:`web_backend.jobs.queue` moves a job between them."""

    queued = "queued"          # waiting for a dispatcher (maybe until available_at)
    running = "running"        # claimed under a lease; the ML side is working on it
    succeeded = "succeeded"    # its picture is stored (result_key)
    failed = "failed"          # with a reason in error
    cancelled = "cancelled"    # by its owner

    @property
    def active(self) -> bool:
        return self in (JobStatus.queued, JobStatus.running)

    @property
    def terminal(self) -> bool:
        return not self.active


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(32), unique=True)
    email: Mapped[str] = mapped_column(String(254), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # per-user overrides of the default limits; NULL means "the default"
    submissions_per_minute: Mapped[int | None] = mapped_column(Integer, nullable=True)
    max_active_jobs: Mapped[int | None] = mapped_column(Integer, nullable=True)
    daily_images: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # signs this user's webhooks (Standard Webhooks "whsec_..."); shown to them once
    webhook_secret: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # moved by every logout, revocation, disable or enable: how web processes that cache
    # logins hear of it on SQLite (migration 0006; PostgreSQL's triggers notify as well)
    logins_changed_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), nullable=True, index=True)

    sessions: Mapped[list[AuthSession]] = relationship(back_populates="user")

    # "Alice" and "alice" are one name (migration 0003)
    __table_args__ = (Index("ix_users_username_lower", func.lower(username), unique=True),)


class AuthSession(Base):
    """One login: the family its rotating refresh tokens belong to."""

    __tablename__ = "auth_sessions"

    id: Mapped[str] = mapped_column(String(36), primary_key=True,
                                    default=lambda: str(uuid.uuid4()))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    revoked_reason: Mapped[str | None] = mapped_column(String(64), nullable=True)

    user: Mapped[User] = relationship(back_populates="sessions")


class RefreshToken(Base):
    """Only the SHA-256 of the opaque token is stored; each is good for one use."""

    __tablename__ = "refresh_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("auth_sessions.id", ondelete="CASCADE"),
                                            index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class ApiKey(Base):
    """A program's credential (``accounts.keys``): only the SHA-256 of the key is kept."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(16), primary_key=True)  # public part of the key
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    secret_hash: Mapped[str] = mapped_column(String(64))
    scopes: Mapped[list[str]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True),
                                                          nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # the key's own submissions per minute, within the account's; NULL: the account's only
    rate_per_minute: Mapped[int | None] = mapped_column(Integer, nullable=True)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("user_id", "idempotency_key", name="uq_jobs_user_idempotency"),
        Index("ix_jobs_status_created", "status", "created_at"),
        Index("ix_jobs_user_created", "user_id", "created_at"),
        Index("ix_jobs_updated_at", "updated_at"),  # the SQLite change poller (live.sources)
        Index("ix_jobs_status_queue_seq", "status", "queue_seq"),  # the queue's head
        Index("ix_jobs_batch_id", "batch_id"),
        Index("ix_jobs_finished_at", "finished_at"),  # the retention sweeper
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True,
                                    default=lambda: str(uuid.uuid4()))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    status: Mapped[JobStatus] = mapped_column(
        Enum(JobStatus, native_enum=False, create_constraint=False, length=16,
             values_callable=lambda statuses: [s.value for s in statuses]),
        default=JobStatus.queued)
    request: Mapped[dict[str, Any]] = mapped_column(JSON)   # GenerationRequest, no image bytes
    image_prompt_key: Mapped[str | None] = mapped_column(String(80), nullable=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(128), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow,
                                                 onupdate=utcnow)
    progress_step: Mapped[int] = mapped_column(Integer, default=0)
    progress_total: Mapped[int] = mapped_column(Integer, default=0)
    score: Mapped[float | None] = mapped_column(Float, nullable=True)
    seed: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    result_key: Mapped[str | None] = mapped_column(String(80), nullable=True)
    preview_key: Mapped[str | None] = mapped_column(String(80), nullable=True)
    timings: Mapped[dict[str, float] | None] = mapped_column(JSON, nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    # execution lease (the dispatcher): owner, expiry and a fencing counter
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    lease_owner: Mapped[str | None] = mapped_column(String(64), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True),
                                                              nullable=True)
    fencing_token: Mapped[int] = mapped_column(BigInteger, default=0)
    # a queued job is not claimed before this (retry backoff); NULL = at once
    available_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True),
                                                          nullable=True)
    # where to announce the end of the job, and which endings (webhooks.outbox)
    webhook_url: Mapped[str | None] = mapped_column(String(2048), nullable=True)
    webhook_events: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    # its place in the order of submission (counters 'job_seq'): a queued job's position is
    # its number minus the queue head's, whatever the queue's length (migration 0007)
    queue_seq: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # the first job of the submission that made several (n > 1); NULL for one picture
    batch_id: Mapped[str | None] = mapped_column(String(36), nullable=True)


class UserUsage(Base):
    """What a user's limits count, kept by the transitions that change it (in their own
    transaction) so that admitting a job reads one row instead of counting jobs."""

    __tablename__ = "user_usage"

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"),
                                         primary_key=True)
    active_jobs: Mapped[int] = mapped_column(Integer, default=0)   # queued or running
    day: Mapped[date] = mapped_column(Date)                        # the UTC day counted below
    images_today: Mapped[int] = mapped_column(Integer, default=0)  # jobs of that day, not failed


class Counter(Base):
    """Named counters (``job_seq``: the last queue number handed out)."""

    __tablename__ = "counters"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger, default=0)


class DeliveryStatus(StrEnum):
    pending = "pending"        # due at next_attempt_at (also while a sender holds it)
    delivered = "delivered"    # the receiver answered 2xx
    failed = "failed"          # every attempt failed; last_error says why


class WebhookDelivery(Base):
    """The outbox: one row per webhook to send, written in the transaction that ended the
    job, so a crash between the two loses nothing. Its id is the ``webhook-id`` receivers
    deduplicate on (delivery is at least once)."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True,
                                    default=lambda: f"msg_{uuid.uuid4().hex}")
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    event: Mapped[str] = mapped_column(String(16))            # completed | failed | cancelled
    status: Mapped[DeliveryStatus] = mapped_column(
        Enum(DeliveryStatus, native_enum=False, create_constraint=False, length=16,
             values_callable=lambda statuses: [s.value for s in statuses]),
        default=DeliveryStatus.pending)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # when to try next; a sender pushes it past its attempt (a lease: if it dies, it is due)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True),
                                                          nullable=True)


class Blob(Base):
    """A blob in the store (``web_backend.storage``), known to the database: its row is
    what a writer and a deleter of the same content take turns on (migration 0009)."""

    __tablename__ = "blobs"

    key: Mapped[str] = mapped_column(String(80), primary_key=True)  # sha256 + suffix
    size: Mapped[int | None] = mapped_column(BigInteger, nullable=True)  # NULL: not known
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class BlobRef(Base):
    """``owner`` refers to blob ``key``: a job (its result, its latest preview, its image
    prompt) or, for the moment between storing an upload and queueing its job,
    ``upload:<uuid>``. A blob is deleted only when no row refers to it, and a row is
    written before its blob, so a blob something needs is never deleted under it."""

    __tablename__ = "blob_refs"
    __table_args__ = (Index("ix_blob_refs_key", "key"),)

    owner: Mapped[str] = mapped_column(String(48), primary_key=True)
    key: Mapped[str] = mapped_column(ForeignKey("blobs.key"), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Deletion(Base):
    """A job or a user (``user:<id>``) deleted: how change pollers, which read rows
    changed since a time, hear of rows that are gone. Kept an hour."""

    __tablename__ = "deletions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    subject: Mapped[str] = mapped_column(String(48))
    deleted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow,
                                                 index=True)


class Lease(Base):
    """Work that one process at a time does (the retention sweeper): who holds it, until
    when. A holder that dies lets it expire; another takes it over."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
