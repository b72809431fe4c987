"""What the notifier's delivery log answers."""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from services.notifier.domain import WEBHOOK_EVENT_TYPES, DeliveryState, State, WebhookEventType
from services.notifier.store import Notification, WebhookDelivery, WebhookEndpoint


class NotificationPublic(BaseModel):
    """One email of the delivery log; the recipient only masked (``m***@example.com``)."""

    id: int
    referral_id: uuid.UUID
    source_event_id: uuid.UUID
    source_topic: str = Field(examples=["referral.routed"])
    recipient_role: str = Field(examples=["site", "patient", "referrer"])
    template: str = Field(examples=["site_new_referral"])
    language: str | None = Field(description="set once rendered", examples=["es"])
    state: State
    attempts: int
    next_attempt_at: datetime | None = Field(description="when a pending notification is tried next")
    last_error: str | None
    skip_reason: str | None
    recipient: str | None = Field(examples=["m***@example.com"])
    message_id: str
    created_at: datetime
    updated_at: datetime
    sent_at: datetime | None

    @classmethod
    def of(cls, row: Notification) -> NotificationPublic:
        pending = row.state == State.PENDING
        return cls(
            id=row.id or 0,
            referral_id=row.referral_id,
            source_event_id=row.source_event_id,
            source_topic=row.source_topic,
            recipient_role=row.recipient_role,
            template=row.template,
            language=row.language,
            state=State(row.state),
            attempts=row.attempts,
            next_attempt_at=row.next_attempt_at if pending else None,
            last_error=row.last_error,
            skip_reason=row.skip_reason,
            recipient=row.recipient,
            message_id=row.message_id,
            created_at=row.created_at,
            updated_at=row.updated_at,
            sent_at=row.sent_at,
        )


class NotificationLog(BaseModel):
    notifications: list[NotificationPublic]


# --- webhooks ------------------------------------------------------------------------------------


class EndpointCreate(BaseModel):
    """A clinic's endpoint: where to POST each change, and which kinds it wants."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(
        min_length=8,
        max_length=2000,
        description="https only; never a loopback, link-local or private address",
        examples=["https://ehr.clinic.example.org/trialroute/webhooks"],
    )
    event_types: list[WebhookEventType] = Field(
        default_factory=list,
        max_length=len(WEBHOOK_EVENT_TYPES),
        description="the deliveries' types wanted (the timeline event); empty: every type",
        examples=[["referral.screened", "referral.routed", "referral.site_decided"]],
    )
    description: str | None = Field(default=None, max_length=200, examples=["EHR inbound interface"])


class EndpointPublic(BaseModel):
    id: uuid.UUID
    url: str
    event_types: list[str]
    description: str | None
    created_at: datetime

    @classmethod
    def of(cls, row: WebhookEndpoint) -> EndpointPublic:
        return cls(
            id=row.id,
            url=row.url,
            event_types=list(row.event_types),
            description=row.description,
            created_at=row.created_at,
        )


class EndpointCreated(EndpointPublic):
    secret: str = Field(
        description="the Standard Webhooks signing secret (`whsec_` + base64): shown this once, keep it",
        examples=["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"],
    )


class EndpointList(BaseModel):
    endpoints: list[EndpointPublic]


class DeliveryPublic(BaseModel):
    """One change for one endpoint and how delivering it went; ``id`` is its ``webhook-id``."""

    id: uuid.UUID
    endpoint_id: uuid.UUID
    referral_id: uuid.UUID
    event_type: str = Field(examples=["referral.routed"])
    state: DeliveryState
    attempts: int
    next_attempt_at: datetime | None = Field(description="when a pending delivery is tried next")
    last_status_code: int | None = Field(description="the endpoint's last HTTP status, if it answered")
    last_error: str | None
    delivered_at: datetime | None
    created_at: datetime
    updated_at: datetime
    payload: dict[str, Any] = Field(description="the body delivered (ids, statuses, reasons, times)")

    @classmethod
    def of(cls, row: WebhookDelivery) -> DeliveryPublic:
        return cls(
            id=row.id,
            endpoint_id=row.endpoint_id,
            referral_id=row.referral_id,
            event_type=row.event_type,
            state=DeliveryState(row.state),
            attempts=row.attempts,
            next_attempt_at=row.next_attempt_at if row.state == DeliveryState.PENDING else None,
            last_status_code=row.last_status_code,
            last_error=row.last_error,
            delivered_at=row.delivered_at,
            created_at=row.created_at,
            updated_at=row.updated_at,
            payload=json.loads(row.payload),
        )


class DeliveryList(BaseModel):
    deliveries: list[DeliveryPublic]
