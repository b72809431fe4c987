"""The notifier's use cases: record the notifications an event causes; retry a failed one; a clinic's
webhook endpoints (create, delete), the deliveries a change causes, and their replay.

Each runs in the caller's transaction: the consumer loop's (which also records the event id, so an event
delivered three times records its notifications once) or a route's. None of them sends mail: an SMTP or
intake outage must not hold up a partition, and with it every other referral on it. The dispatcher sends.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from services.notifier import store
from services.notifier.config import NotifierSettings
from services.notifier.domain import (
    DeliveryState,
    State,
    message_id,
    new_webhook_secret,
    plan,
    webhook_url_refusal,
)
from services.notifier.schemas import EndpointCreate
from services.notifier.store import Notification, WebhookDelivery, WebhookEndpoint
from shared import tracing
from shared.events import (
    Envelope,
    EventData,
    ReferralInfoRequestOpened,
    ReferralProgressed,
    ReferralRouted,
    ReferralSiteDecided,
    ReferralStatusChanged,
)
from shared.problems import Conflict, NotFound, Unprocessable


async def record_routings(
    session: AsyncSession, items: list[tuple[Envelope, ReferralRouted]], *, message_id_domain: str
) -> None:
    """Site coordinator, patient and referrer; a referral routed again names the site it leaves. The
    routings before these are read with one query for the whole transaction: routed events of a
    referral share a partition, so an earlier one is recorded, or earlier in ``items``. All their
    notifications are written with one statement."""
    before = await store.routings(session, {envelope.referral_id for envelope, _ in items})
    last = {referral_id: routed[0].site for referral_id, routed in before.items()}
    rows: list[dict[str, Any]] = []
    for envelope, data in items:
        previous = last.get(envelope.referral_id)
        previous_site = previous.name if previous and previous.code != data.site.code else None
        rows += _planned(envelope, data, previous_site, message_id_domain)
        last[envelope.referral_id] = data.site
    await store.add_planned(session, rows)


async def record_site_decision(
    session: AsyncSession, envelope: Envelope, data: ReferralSiteDecided, *, message_id_domain: str
) -> None:
    """The referrer hears of every site decision. The site's name is looked up at send time: this
    topic is not ordered with ``referral.routed``, so the routing may not be recorded yet."""
    await store.add_planned(session, _planned(envelope, data, None, message_id_domain))


async def record_progress(
    session: AsyncSession, envelope: Envelope, data: ReferralProgressed, *, message_id_domain: str
) -> None:
    """The referrer hears of the site's outcome (``domain.plan``: a step before it causes no email),
    once per event (the event id and role are the notification's key)."""
    await store.add_planned(session, _planned(envelope, data, None, message_id_domain))


async def record_info_request(
    session: AsyncSession, envelope: Envelope, data: ReferralInfoRequestOpened, *, message_id_domain: str
) -> None:
    """The referrer is asked for the facts, once per request (the request's event id is the key)."""
    await store.add_planned(session, _planned(envelope, data, None, message_id_domain))


async def retry(session: AsyncSession, notification_id: int) -> Notification:
    """Give a failed notification a fresh set of attempts, once its cause is fixed; only a failed one."""
    row = await store.retry_failed(session, notification_id, datetime.now(UTC))
    if row is None:
        raise NotFound(f"no notification {notification_id}")
    if row.state != State.PENDING:
        raise Conflict(f"notification {notification_id} is {row.state}; only a failed one is retried")
    return row


def _planned(envelope: Envelope, data: EventData, site_name: str | None, domain: str) -> list[dict[str, Any]]:
    planned = plan(data)
    return store.planned_rows(
        referral_id=envelope.referral_id,
        source_event_id=envelope.id,
        source_topic=envelope.type,
        source=envelope.model_dump_json(),
        planned=planned,
        message_ids=[message_id(envelope.id, p.role, domain) for p in planned],
        previous_site=site_name,
        now=datetime.now(UTC),
    )


# --- webhooks ------------------------------------------------------------------------------------


async def record_status_changes(
    session: AsyncSession, items: list[tuple[Envelope, ReferralStatusChanged]]
) -> None:
    """One pending delivery per endpoint of the clinic that wants this type; the dispatcher sends them.
    The body is fixed here (ids, statuses, reasons and times: no patient identity), so every attempt
    and replay sends, and signs, the same bytes under the same ``webhook-id``. The clinics' endpoints
    are read once for the transaction's status changes (most clinics have none)."""
    endpoints = await store.endpoints(session, {data.clinic_id for _, data in items})
    now = datetime.now(UTC)
    for envelope, data in items:
        wanted = [
            endpoint
            for endpoint in endpoints.get(data.clinic_id, [])
            if not endpoint.event_types or data.source_event_type in endpoint.event_types
        ]
        if not wanted:
            continue
        body = delivery_body(envelope.referral_id, data)
        source = envelope.model_dump_json()
        for endpoint in wanted:
            session.add(
                WebhookDelivery(
                    endpoint_id=endpoint.id,
                    clinic_id=data.clinic_id,
                    referral_id=envelope.referral_id,
                    source_event_id=envelope.id,
                    event_type=data.source_event_type,
                    payload=body,
                    source=source,
                    window_started_at=now,
                    next_attempt_at=now,
                    created_at=now,
                    updated_at=now,
                    traceparent=tracing.current_traceparent(),
                )
            )


def delivery_body(referral_id: uuid.UUID, data: ReferralStatusChanged) -> str:
    """The JSON a webhook carries, in the Standard Webhooks shape (``type``, ``timestamp``, ``data``)."""
    return json.dumps(
        {
            "type": data.source_event_type,
            "timestamp": data.recorded_at.isoformat(),
            "data": {
                "referral_id": str(referral_id),
                "seq": data.seq,
                "status": data.status,
                "entry_status": data.entry_status,
                "revision": data.revision,
                "entry_revision": data.entry_revision,
                "reason": data.reason,
                "occurred_at": data.occurred_at.isoformat(),
                "recorded_at": data.recorded_at.isoformat(),
                "event_id": str(data.source_event_id),
            },
        },
        separators=(",", ":"),
    )


async def create_endpoint(
    session: AsyncSession, clinic_id: str, body: EndpointCreate, settings: NotifierSettings
) -> WebhookEndpoint:
    """Register a clinic's endpoint with a new secret (the caller shows it once)."""
    refusal = webhook_url_refusal(
        body.url,
        allow_http=settings.webhook_allow_http,
        allow_private=settings.webhook_allow_private_addresses,
    )
    if refusal is not None:
        raise Unprocessable("1 invalid field(s)", errors=[{"field": "url", "reason": refusal}])
    count = await session.execute(
        select(func.count())
        .select_from(WebhookEndpoint)
        .where(col(WebhookEndpoint.clinic_id) == clinic_id, col(WebhookEndpoint.deleted_at).is_(None))
    )
    if int(count.scalar_one()) >= settings.webhook_max_endpoints:
        raise Conflict(f"a clinic has at most {settings.webhook_max_endpoints} endpoints; delete one first")
    endpoint = WebhookEndpoint(
        clinic_id=clinic_id,
        url=body.url,
        event_types=list(dict.fromkeys(body.event_types)),
        description=body.description,
        secret=new_webhook_secret(),
    )
    session.add(endpoint)
    return endpoint


async def delete_endpoint(session: AsyncSession, clinic_id: str, endpoint_id: uuid.UUID) -> None:
    """Stop delivering to the endpoint; its waiting deliveries are cancelled, its log kept."""
    endpoint = await store.get_endpoint(session, clinic_id, endpoint_id, lock=True)
    if endpoint is None:
        raise NotFound("no such endpoint for this clinic")
    now = datetime.now(UTC)
    endpoint.deleted_at = now
    await store.cancel_deliveries(session, endpoint_id, now)


async def replay_delivery(session: AsyncSession, clinic_id: str, delivery_id: uuid.UUID) -> WebhookDelivery:
    """Deliver again (same body and ``webhook-id``) a delivered or failed delivery, with a fresh window."""
    delivery = await store.get_delivery(session, clinic_id, delivery_id, lock=True)
    if delivery is None:
        raise NotFound("no such delivery for this clinic")
    if await store.get_endpoint(session, clinic_id, delivery.endpoint_id) is None:
        raise Conflict("the endpoint was deleted", current_state=delivery.state)
    if delivery.state not in (DeliveryState.DELIVERED, DeliveryState.FAILED, DeliveryState.CANCELLED):
        raise Conflict(
            f"the delivery is {delivery.state}; it is being tried already", current_state=delivery.state
        )
    now = datetime.now(UTC)
    delivery.state = DeliveryState.PENDING
    delivery.attempts = 0
    delivery.window_started_at = now
    delivery.next_attempt_at = now
    delivery.updated_at = now
    return delivery
