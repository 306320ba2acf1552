"""Bodies of the job routes: what to make (the request) and how a job looks."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ml_backend.protocol import GenerationRequest
from web_backend.core.models import JobStatus
from web_backend.core.schemas import UTCDatetime
from web_backend.webhooks.schemas import WEBHOOK_EVENTS, WebhookEvent, WebhookOut

__all__ = ["MAX_PICTURES_PER_SUBMISSION", "JobOut", "JobPage", "JobRequest", "Progress"]

MAX_PICTURES_PER_SUBMISSION = 16


class Progress(BaseModel):
    step: int
    total: int
    score: float | None


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
    n: int = Field(1, ge=1, le=MAX_PICTURES_PER_SUBMISSION, description=(
        "Pictures to make, each its own job (limits and quotas count each). With a seed, "
        "picture i uses seed + i. The answer is the first job, with every job's id in "
        "`batch`."))


class JobOut(BaseModel):
    id: str
    status: JobStatus
    created_at: UTCDatetime
    started_at: UTCDatetime | None
    finished_at: UTCDatetime | None
    request: dict[str, Any] = Field(description=(
        "What was asked for; an image prompt appears as its image_prompt_sha256."))
    progress: Progress
    queue_position: int | None = Field(description=(
        "1 = next to start. Counted from the order of submission (it costs the same for "
        "any queue length), so it may also count jobs ahead that were cancelled or that "
        "started early; null once started."))
    eta_s: float | None = Field(description="Estimated seconds until the picture is ready.")
    starting_gpu: bool = Field(False, description=(
        "True while the job waits for a GPU to start: the image service was at zero "
        "replicas when last asked, and the job has no progress yet. eta_s includes the "
        "expected start (the last one timed, or CLIPGAN_COLD_START_S)."))
    seed: int | None
    error: str | None
    timings: dict[str, float] | None
    image_url: str | None = Field(description="Signed link, usable without a token.")
    preview_url: str | None
    events_url: str = Field(description="Signed SSE link (EventSource cannot send headers).")
    webhook: WebhookOut | None = Field(None, description=(
        "The job's webhook and its deliveries, when it asked for one."))
    batch: list[str] | None = Field(None, description=(
        "The ids of every job the submission made, in order, when it asked for n > 1 "
        "pictures (this job is the first)."))
    deleted: bool = Field(False, description=(
        "True only in the answer to the DELETE that deleted this (finished) job: it is "
        "gone, with its picture, and its links no longer work."))


class JobPage(BaseModel):
    items: list[JobOut]
    next_cursor: str | None
