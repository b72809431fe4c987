"""What the notifier's delivery log answers."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, Field

from services.notifier.domain import State
from services.notifier.store import Notification


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
