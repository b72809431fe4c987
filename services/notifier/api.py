"""The delivery log (scope ``ops``): what was sent to whom, masked, and what is still trying."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import BaseModel, Field
from sqlalchemy.ext.asyncio import AsyncSession

from services.notifier import store
from services.notifier.domain import State
from services.notifier.store import Notification, as_utc
from shared.auth import Principal, Scope, require
from shared.db import Database
from shared.problems import Conflict, NotFound


async def _session(request: Request) -> AsyncIterator[AsyncSession]:
    db: Database = request.app.state.db
    async with db.session() as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(_session)]
Ops = Annotated[Principal, Depends(require(Scope.OPS))]

router = APIRouter(prefix="/v1/notifications", tags=["delivery log"])


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
            next_attempt_at=as_utc(row.next_attempt_at) if pending else None,
            last_error=row.last_error,
            skip_reason=row.skip_reason,
            recipient=row.recipient,
            message_id=row.message_id,
            created_at=as_utc(row.created_at),
            updated_at=as_utc(row.updated_at),
            sent_at=as_utc(row.sent_at) if row.sent_at else None,
        )


class NotificationLog(BaseModel):
    notifications: list[NotificationPublic]


@router.get("", summary="Notifications of a referral, or in a state, oldest first")
async def list_notifications(
    _: Ops,
    session: SessionDep,
    referral_id: Annotated[uuid.UUID | None, Query(description="the referral's notifications")] = None,
    state: Annotated[State | None, Query(description="e.g. failed, to find what needs ops")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> NotificationLog:
    rows = await store.for_referral(session, referral_id, state, limit)
    return NotificationLog(notifications=[NotificationPublic.of(r) for r in rows])


@router.post(
    "/{notification_id}/retry",
    summary="Give a failed notification a fresh set of attempts, once its cause is fixed",
    responses={404: {"description": "no such notification"}, 409: {"description": "not failed"}},
)
async def retry_notification(
    # The id column is a bigint: a larger id would fail in the store (a 500), not be a 404.
    notification_id: Annotated[int, Path(ge=1, le=2**63 - 1)],
    _: Ops,
    session: SessionDep,
) -> NotificationPublic:
    row = await store.retry_failed(session, notification_id, datetime.now(UTC))
    if row is None:
        raise NotFound(f"no notification {notification_id}")
    if row.state != State.PENDING:
        raise Conflict(f"notification {notification_id} is {row.state}; only a failed one is retried")
    return NotificationPublic.of(row)
