"""The delivery log (scope ``ops``): what was sent to whom, masked, and what is still trying; and a
clinic's webhooks (scope ``webhooks:manage``, the clinic from the token): endpoints and deliveries."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Response

from services.notifier import commands
from services.notifier.deps import NotifierStateDep
from services.notifier.domain import DeliveryState, State
from services.notifier.schemas import (
    DeliveryList,
    DeliveryPublic,
    EndpointCreate,
    EndpointCreated,
    EndpointList,
    EndpointPublic,
    NotificationLog,
    NotificationPublic,
)
from shared.auth import Principal, Scope, require
from shared.deps import SessionDep

Ops = Annotated[Principal, Depends(require(Scope.OPS))]
Clinic = Annotated[Principal, Depends(require(Scope.WEBHOOKS_MANAGE))]

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


webhooks_router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])

_SIGNING = (
    "Each change of the clinic's referrals is POSTed to every endpoint that wants its type, as JSON "
    "`{type, timestamp, data}` (ids, statuses, reasons and times; never patient identity), signed as the "
    "Standard Webhooks specification says: headers `webhook-id` (the same on every attempt and replay), "
    "`webhook-timestamp`, `webhook-signature` (`v1,` + HMAC-SHA256 with the endpoint's secret); verify "
    "with any Standard Webhooks library. Any 2xx answer is a delivery; anything else is retried with "
    "exponential backoff for 24 hours, then the delivery is failed (replay it once the endpoint works)."
)


@webhooks_router.post(
    "/endpoints",
    status_code=201,
    summary="Register a webhook endpoint; the answer shows its signing secret, once",
    description="Scope `webhooks:manage` (clinic token, audience `notifier`). `url`: https only, never a "
    "loopback, link-local or private address (its host is checked again at every delivery). "
    "`event_types`: the timeline events wanted (empty: all). The secret (`whsec_` + base64) is generated "
    "here and shown only in this answer.\n\n" + _SIGNING,
    responses={
        401: {"description": "no valid token"},
        403: {"description": "not a clinic token with webhooks:manage"},
        409: {"description": "too many endpoints"},
        422: {"description": "bad URL"},
    },
)
async def create_endpoint(
    body: EndpointCreate, principal: Clinic, notifier: NotifierStateDep, session: SessionDep
) -> EndpointCreated:
    endpoint = await commands.create_endpoint(session, principal.require_clinic(), body, notifier.settings)
    await session.flush()
    return EndpointCreated(**EndpointPublic.of(endpoint).model_dump(), secret=endpoint.secret)


@webhooks_router.get("/endpoints", summary="The clinic's webhook endpoints (never their secrets)")
async def list_endpoints(principal: Clinic, notifier: NotifierStateDep) -> EndpointList:
    return await notifier.queries.endpoints(principal.require_clinic())


@webhooks_router.delete(
    "/endpoints/{endpoint_id}",
    status_code=204,
    summary="Delete an endpoint: nothing more is delivered to it; its deliveries stay listed",
    responses={404: {"description": "no such endpoint for this clinic"}},
)
async def delete_endpoint(endpoint_id: uuid.UUID, principal: Clinic, session: SessionDep) -> Response:
    await commands.delete_endpoint(session, principal.require_clinic(), endpoint_id)
    return Response(status_code=204)


@webhooks_router.get("/deliveries", summary="The clinic's webhook deliveries and their outcome, newest first")
async def list_deliveries(
    principal: Clinic,
    notifier: NotifierStateDep,
    endpoint_id: Annotated[uuid.UUID | None, Query(description="one endpoint's")] = None,
    referral_id: Annotated[uuid.UUID | None, Query(description="one referral's")] = None,
    state: Annotated[DeliveryState | None, Query(description="e.g. failed")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> DeliveryList:
    return await notifier.queries.deliveries(
        principal.require_clinic(), endpoint_id=endpoint_id, referral_id=referral_id, state=state, limit=limit
    )


@webhooks_router.post(
    "/deliveries/{delivery_id}/replay",
    status_code=202,
    summary="Deliver again a delivered or failed delivery (same body and webhook-id), with a fresh window",
    responses={
        404: {"description": "no such delivery for this clinic"},
        409: {"description": "still being tried, or its endpoint was deleted"},
    },
)
async def replay_delivery(delivery_id: uuid.UUID, principal: Clinic, session: SessionDep) -> DeliveryPublic:
    delivery = await commands.replay_delivery(session, principal.require_clinic(), delivery_id)
    return DeliveryPublic.of(delivery)
