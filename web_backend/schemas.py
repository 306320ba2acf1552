"""API request and response bodies (the job request itself is ml_backend.protocol's)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, EmailStr, Field

from ml_backend.protocol import GenerationRequest
from web_backend.models import DeliveryStatus, JobStatus

__all__ = [
    "WEBHOOK_EVENTS", "Detail", "FieldError", "Health", "JobOut", "JobPage", "JobRequest",
    "Limits", "LimitsUpdate", "ModelInfo", "ModelList", "PasswordChange", "Progress",
    "Readiness", "RefreshRequest", "SignInForm", "TokenPair", "UTCDatetime", "UserCreate",
    "UserDetail", "UserOut", "WebhookDeliveryOut", "WebhookEvent", "WebhookOut",
    "WebhookSecret",
]


def _as_utc(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; everything we store is UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


UTCDatetime = Annotated[datetime, AfterValidator(_as_utc)]

USERNAME_PATTERN = r"^[A-Za-z0-9_.-]{3,32}$"


class UserCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"username": "alice", "email": "alice@example.com", "password": "correct horse"}]})

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

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"submissions_per_minute": 30, "max_active_jobs": 4, "daily_images": None}]})

    submissions_per_minute: int | None = Field(None, ge=1, le=10_000)
    max_active_jobs: int | None = Field(None, ge=1, le=1000)
    daily_images: int | None = Field(None, ge=1, le=1_000_000)


class PasswordChange(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"current_password": "correct horse", "new_password": "battery staple"}]})

    current_password: str = Field(min_length=1, max_length=1024)
    new_password: str = Field(min_length=8, max_length=1024)


class RefreshRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"refresh_token": "r1.4f0c…"}]})

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


WebhookEvent = Literal["completed", "failed", "cancelled"]
WEBHOOK_EVENTS: tuple[WebhookEvent, ...] = ("completed", "failed", "cancelled")


class JobRequest(GenerationRequest):
    """A picture to make, and optionally where to announce that it is done."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"prompt": "a girl with silver hair, smiling:1 | blurry:-0.5", "seed": "alice",
         "upscale": 2},
        {"prompt": "cat ears", "webhook_url": "https://bot.example.com/clipgan",
         "webhook_events": ["completed", "failed"]},
    ]})

    webhook_url: str | None = Field(None, max_length=2048, description=(
        "Called (POST, signed per Standard Webhooks with your webhook secret) when the job "
        "ends; https, on a public address."))
    webhook_events: list[WebhookEvent] = Field(
        default_factory=lambda: list(WEBHOOK_EVENTS), min_length=1, max_length=3,
        description="Which endings to announce.")


class WebhookDeliveryOut(BaseModel):
    """One announcement of the job's end: its ``webhook-id``, and how sending it went."""

    id: str = Field(description="The webhook-id header: receivers deduplicate on it.")
    event: WebhookEvent
    status: DeliveryStatus
    attempts: int
    last_error: str | None
    delivered_at: UTCDatetime | None


class WebhookOut(BaseModel):
    url: str
    events: list[WebhookEvent]
    deliveries: list[WebhookDeliveryOut]


class WebhookSecret(BaseModel):
    secret: str = Field(description=(
        "Verifies webhook signatures (Standard Webhooks, 'whsec_' + base64). Shown only "
        "now: keep it; making a new one replaces it."))


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
    webhook: WebhookOut | None = Field(None, description=(
        "The job's webhook and its deliveries, when it asked for one."))


class JobPage(BaseModel):
    items: list[JobOut]
    next_cursor: str | None


class SignInForm(BaseModel):
    """The OAuth2 password grant as a form (what Swagger's "Authorize" and OAuth2
    libraries send); extra OAuth2 fields (scope, client_id) are accepted and ignored."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"username": "alice", "password": "correct horse"}]})

    grant_type: str | None = Field(None, pattern="^password$")
    username: str = Field(min_length=1, max_length=254)
    password: str = Field(min_length=1, max_length=1024)


class FieldError(BaseModel):
    """One invalid field: where, what is wrong, and a stable machine-readable type."""

    loc: list[str | int]
    msg: str
    type: str


class Detail(BaseModel):
    """Every refusal: a sentence saying what to fix, or one entry per invalid field."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"detail": "not signed in: send 'Authorization: Bearer <access token>'"},
        {"detail": [{"loc": ["body", "steps"], "msg": "Input should be less than or equal "
                     "to 500", "type": "less_than_equal"}]}]})

    detail: str | list[FieldError]


class Health(BaseModel):
    status: Literal["ok", "stalled"]
    detail: str | None = None


class Readiness(BaseModel):
    status: Literal["ready", "not ready"]
    checks: dict[str, str] = Field(description=(
        "database, ml and (when configured) redis: ok, down or unreachable."))


class ModelInfo(BaseModel):
    description: str
    default_psi: float
    resolution: int
    parameters: int
    demo_weights: bool = Field(description="Untrained built-in weights: noise, not pictures.")
    format: str = Field(description="The checkpoint format the weights were read from.")


class ModelList(BaseModel):
    models: dict[str, ModelInfo]
    upscaler: str | None = Field(description="How upscale 2/4 is done.")
