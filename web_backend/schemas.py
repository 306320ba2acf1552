"""API request and response bodies (the job request itself is ml_backend.protocol's)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, EmailStr, Field

from web_backend.models import JobStatus

__all__ = [
    "Detail", "JobOut", "JobPage", "Limits", "LimitsUpdate", "PasswordChange", "Progress",
    "RefreshRequest", "TokenPair", "UTCDatetime", "UserCreate", "UserDetail", "UserOut",
]


def _as_utc(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; everything we store is UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


UTCDatetime = Annotated[datetime, AfterValidator(_as_utc)]

USERNAME_PATTERN = r"^[A-Za-z0-9_.-]{3,32}$"


class UserCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: str = Field(pattern=USERNAME_PATTERN, description="3-32 of A-Z a-z 0-9 _ . -")
    email: EmailStr = Field(max_length=254, description="Checked by email-validator.")
    password: str = Field(min_length=8, max_length=1024)


class UserOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    username: str
    email: str
    is_admin: bool
    is_active: bool
    created_at: UTCDatetime


class Limits(BaseModel):
    submissions_per_minute: int
    max_active_jobs: int
    daily_images: int


class UserDetail(UserOut):
    limits: Limits


class LimitsUpdate(BaseModel):
    """null resets a limit to the service default."""

    model_config = ConfigDict(extra="forbid")

    submissions_per_minute: int | None = Field(None, ge=1, le=10_000)
    max_active_jobs: int | None = Field(None, ge=1, le=1000)
    daily_images: int | None = Field(None, ge=1, le=1_000_000)


class PasswordChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    current_password: str = Field(min_length=1, max_length=1024)
    new_password: str = Field(min_length=8, max_length=1024)


class RefreshRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    refresh_token: str = Field(min_length=1, max_length=512)


class TokenPair(BaseModel):
    access_token: str
    token_type: str = "bearer"  # noqa: S105 (the OAuth2 token type, not a secret)
    expires_in: int
    refresh_token: str


class Progress(BaseModel):
    step: int
    total: int
    score: float | None


class JobOut(BaseModel):
    id: str
    status: JobStatus
    created_at: UTCDatetime
    started_at: UTCDatetime | None
    finished_at: UTCDatetime | None
    request: dict[str, Any] = Field(description=(
        "What was asked for; an image prompt appears as its image_prompt_sha256."))
    progress: Progress
    queue_position: int | None = Field(description="1 = next to start; null once started.")
    eta_s: float | None = Field(description="Estimated seconds until the picture is ready.")
    seed: int | None
    error: str | None
    timings: dict[str, float] | None
    image_url: str | None = Field(description="Signed link, usable without a token.")
    preview_url: str | None
    events_url: str = Field(description="Signed SSE link (EventSource cannot send headers).")


class JobPage(BaseModel):
    items: list[JobOut]
    next_cursor: str | None


class Detail(BaseModel):
    detail: Any
