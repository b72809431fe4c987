"""The delivery log (scope ``ops``): what was sent to whom, masked, and what is still trying."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query

from services.notifier import commands
from services.notifier.deps import NotifierStateDep
from services.notifier.domain import State
from services.notifier.schemas import NotificationLog, NotificationPublic
from shared.auth import Principal, Scope, require
from shared.deps import SessionDep

Ops = Annotated[Principal, Depends(require(Scope.OPS))]

router = APIRouter(prefix="/v1/notifications", tags=["delivery log"])


@router.get("", summary="Notifications of a referral, or in a state, oldest first")
async def list_notifications(
    _: Ops,
    notifier: NotifierStateDep,
    referral_id: Annotated[uuid.UUID | None, Query(description="the referral's notifications")] = None,
    state: Annotated[State | None, Query(description="e.g. failed, to find what needs ops")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> NotificationLog:
    return await notifier.queries.notifications(referral_id, state, limit)


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
    return NotificationPublic.of(await commands.retry(session, notification_id))
