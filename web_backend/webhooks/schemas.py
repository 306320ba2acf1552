"""Bodies about webhooks: which endings a job announces, its deliveries, the secret."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from web_backend.core.models import DeliveryStatus
from web_backend.core.schemas import UTCDatetime

__all__ = ["WEBHOOK_EVENTS", "WebhookDeliveryOut", "WebhookEvent", "WebhookOut",
           "WebhookSecret"]

WebhookEvent = Literal["completed", "failed", "cancelled"]
WEBHOOK_EVENTS: tuple[WebhookEvent, ...] = ("completed", "failed", "cancelled")


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
