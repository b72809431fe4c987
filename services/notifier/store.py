"""The notifier's store: one row per (source event, recipient role), and the queries that move it.

A row keeps the source event (which carries no patient identity) to render from, never a patient's
contact details: those are fetched from intake at send time and only a masked address is kept.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    JSON,
    Column,
    Index,
    Text,
    UniqueConstraint,
    and_,
    bindparam,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import Field, SQLModel, col

from services.notifier import SERVICE
from services.notifier.domain import DeliveryState, Planned, State
from shared import tracing
from shared.consumer import ProcessedEvent
from shared.events import Envelope, ReferralRouted
from shared.outbox import OutboxRecord
from shared.store import bigint_pk, table_of, tables, timestamp
from shared.wakeup import channel, notify_on_commit

EMAILS_CHANNEL = channel(SERVICE, "emails")
"""The email dispatcher listens here; a transaction that makes a notification due notifies it."""


class Notification(SQLModel, table=True):
    __tablename__ = "notification"
    __table_args__ = (
        # The key of exactly-once: one email per source event and recipient, however often delivered.
        UniqueConstraint("source_event_id", "recipient_role", name="uq_notification_event_role"),
        Index("ix_notification_due", "state", "next_attempt_at"),
        Index("ix_notification_referral", "referral_id", "created_at"),
    )

    id: int | None = bigint_pk()
    referral_id: uuid.UUID
    source_event_id: uuid.UUID
    source_topic: str = Field(max_length=100)
    recipient_role: str = Field(max_length=20)
    template: str = Field(max_length=100)
    language: str | None = Field(default=None, max_length=10)
    state: str = Field(default=State.PENDING.value, max_length=10)
    attempts: int = 0
    next_attempt_at: datetime = timestamp(now_by_default=False)
    claimed_until: datetime | None = timestamp(nullable=True, now_by_default=False)
    claim: str | None = Field(default=None, max_length=32, description="who holds the lease")
    last_error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    skip_reason: str | None = Field(default=None, max_length=200)
    recipient: str | None = Field(default=None, max_length=320, description="masked address")
    message_id: str = Field(max_length=200)
    source: str = Field(sa_column=Column(Text, nullable=False), description="the source envelope, JSON")
    previous_site: str | None = Field(
        default=None,
        max_length=200,
        description="for a routing: the name of the site it replaces, if the referral was routed before",
    )
    created_at: datetime = timestamp(now_by_default=False)
    updated_at: datetime = timestamp(now_by_default=False)
    sent_at: datetime | None = timestamp(nullable=True, now_by_default=False)
    traceparent: str | None = Field(
        default=None,
        max_length=100,
        description="W3C trace context of the event's handling: the send continues it",
    )


class WebhookEndpoint(SQLModel, table=True):
    """A clinic's webhook endpoint. The secret signs every delivery (Standard Webhooks); it is shown to
    the clinic once, when the endpoint is created. A deleted endpoint is kept for its deliveries' log."""

    __tablename__ = "webhook_endpoint"
    __table_args__ = (Index("ix_webhook_endpoint_clinic", "clinic_id", "created_at"),)

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    clinic_id: str = Field(max_length=200)
    url: str = Field(sa_column=Column(Text, nullable=False))
    event_types: list[str] = Field(
        default_factory=list, sa_column=Column(JSON, nullable=False), description="empty: every type"
    )
    description: str | None = Field(default=None, max_length=200)
    secret: str = Field(max_length=200)
    created_at: datetime = timestamp()
    deleted_at: datetime | None = timestamp(nullable=True, now_by_default=False)


class WebhookDelivery(SQLModel, table=True):
    """One change for one endpoint: the signed body, and how delivering it went. ``id`` is the
    ``webhook-id`` of every attempt and replay, so a receiver can drop a copy."""

    __tablename__ = "webhook_delivery"
    __table_args__ = (
        UniqueConstraint("source_event_id", "endpoint_id", name="uq_webhook_delivery_event_endpoint"),
        Index("ix_webhook_delivery_due", "state", "next_attempt_at"),
        Index("ix_webhook_delivery_clinic", "clinic_id", "created_at"),
    )

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    endpoint_id: uuid.UUID = Field(index=True)
    clinic_id: str = Field(max_length=200)
    referral_id: uuid.UUID
    source_event_id: uuid.UUID = Field(description="the referral.status_changed event")
    event_type: str = Field(max_length=100, description="the delivery's type: the timeline entry's event")
    payload: str = Field(sa_column=Column(Text, nullable=False), description="the JSON body, as signed")
    source: str = Field(sa_column=Column(Text, nullable=False), description="the source envelope, JSON")
    state: str = Field(default=DeliveryState.PENDING.value, max_length=10)
    attempts: int = 0
    window_started_at: datetime = timestamp()  # retries stop a retry window after this
    next_attempt_at: datetime = timestamp()
    claimed_until: datetime | None = timestamp(nullable=True, now_by_default=False)
    claim: str | None = Field(default=None, max_length=32)
    last_status_code: int | None = None
    last_error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    delivered_at: datetime | None = timestamp(nullable=True, now_by_default=False)
    created_at: datetime = timestamp()
    updated_at: datetime = timestamp()
    traceparent: str | None = Field(
        default=None,
        max_length=100,
        description="W3C trace context of the event's handling: the POST continues it",
    )


TABLES = tables(Notification, WebhookEndpoint, WebhookDelivery, OutboxRecord, ProcessedEvent)


def planned_rows(
    *,
    referral_id: uuid.UUID,
    source_event_id: uuid.UUID,
    source_topic: str,
    source: str,
    planned: Sequence[Planned],
    message_ids: Sequence[str],
    previous_site: str | None,
    now: datetime,
) -> list[dict[str, Any]]:
    """The pending notifications an event causes, as the rows ``add_planned`` writes (in the
    handling's trace, which each send continues)."""
    traceparent = tracing.current_traceparent()
    return [
        {
            "referral_id": referral_id,
            "source_event_id": source_event_id,
            "source_topic": source_topic,
            "recipient_role": item.role,
            "template": item.template.value,
            "state": State.PENDING.value,
            "attempts": 0,
            "message_id": mid,
            "source": source,
            "previous_site": previous_site,
            "next_attempt_at": now,
            "created_at": now,
            "updated_at": now,
            "traceparent": traceparent,
        }
        for item, mid in zip(planned, message_ids, strict=True)
    ]


async def add_planned(session: AsyncSession, rows: Sequence[dict[str, Any]]) -> None:
    """Record pending notifications (``planned_rows``) in the consumer's transaction, all in one cached
    INSERT rather than as ORM objects (the notifier's largest write per referral); its commit wakes the
    dispatcher."""
    if not rows:
        return
    notify_on_commit(session, EMAILS_CHANNEL)
    await session.execute(insert(table_of(Notification)), list(rows))


async def routings(
    session: AsyncSession, referral_ids: Collection[uuid.UUID]
) -> dict[uuid.UUID, list[ReferralRouted]]:
    """Each referral's routings the notifier has recorded (one site email each), newest first; a
    referral with none is not in the dict."""
    result = await session.execute(
        select(col(Notification.referral_id), col(Notification.source))
        .where(
            col(Notification.referral_id).in_(list(referral_ids)), col(Notification.recipient_role) == "site"
        )
        .order_by(col(Notification.id).desc())
    )
    found: dict[uuid.UUID, list[ReferralRouted]] = {}
    for referral_id, source in result:
        data = Envelope.model_validate_json(source).payload()
        if isinstance(data, ReferralRouted):
            found.setdefault(referral_id, []).append(data)
    return found


async def _claim(
    session: AsyncSession,
    model: type[Notification] | type[WebhookDelivery],
    *,
    is_sqlite: bool,
    now: datetime,
    lease_s: float,
    limit: int,
) -> str | None:
    """Put up to ``limit`` due rows of ``model`` (an email or a webhook delivery) under a lease for this
    pass: ``sending``, one more attempt counted. Returns the lease's token, None when nothing was due.

    Due: ``pending`` and its time has come, or ``sending`` with a lease that ran out (its holder crashed
    or hung mid-delivery, so the message may or may not have gone: it goes again with the same id).
    Concurrent passes never claim the same row.
    """
    token = uuid.uuid4().hex
    state, claimed_until = col(model.state), col(model.claimed_until)
    due = (
        select(col(model.id))
        .where(
            or_(
                and_(state == "pending", col(model.next_attempt_at) <= now),
                and_(state == "sending", claimed_until < now),
            )
        )
        .order_by(col(model.next_attempt_at), col(model.id))
        .limit(limit)
    )
    ids: Any
    if is_sqlite:
        # SQLite has no row locks: the UPDATE takes the database's write lock, so a second pass waits
        # and then finds these rows no longer due.
        ids = due.scalar_subquery()
    else:
        ids = (await session.execute(due.with_for_update(skip_locked=True))).scalars().all()
        if not ids:
            return None
    await session.execute(
        update(model)
        .where(col(model.id).in_(ids))
        .values(
            state="sending",
            claim=token,
            claimed_until=now + timedelta(seconds=lease_s),
            attempts=col(model.attempts) + 1,
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    return token


async def claim_due(
    session: AsyncSession, *, is_sqlite: bool, now: datetime, lease_s: float, limit: int
) -> Sequence[Notification]:
    """Take up to ``limit`` due notifications for this dispatcher (``_claim``)."""
    token = await _claim(session, Notification, is_sqlite=is_sqlite, now=now, lease_s=lease_s, limit=limit)
    if token is None:
        return []
    result = await session.execute(
        select(Notification).where(col(Notification.claim) == token).order_by(col(Notification.id))
    )
    return result.scalars().all()


async def finish(
    session: AsyncSession, outcomes: Sequence[tuple[Notification, dict[str, Any]]], *, now: datetime
) -> set[int]:
    """Record the outcomes (row, column values) of claimed notifications whose claim is still ours, and
    return their ids; a row whose lease ran out and passed to another dispatcher is left to it (that
    dispatcher records its own outcome). The rows are locked first, so no lease passes on meanwhile
    (SQLite: its single writer does that), then each kind of outcome is one multi-row UPDATE."""
    ids = sorted(row.id for row, _ in outcomes if row.id is not None)
    held = await session.execute(
        select(col(Notification.id), col(Notification.claim))
        .where(col(Notification.id).in_(ids), col(Notification.state) == State.SENDING)
        .order_by(col(Notification.id))
        .with_for_update()
    )
    claims = dict(held.all())
    ours = {
        row.id
        for row, _ in outcomes
        if row.id is not None and row.claim is not None and claims.get(row.id) == row.claim
    }
    table = table_of(Notification)
    by_columns: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for row, values in outcomes:
        if row.id in ours:
            done = {**values, "claim": None, "claimed_until": None, "updated_at": now}
            params = {f"v_{name}": value for name, value in done.items()}
            by_columns.setdefault(tuple(sorted(done)), []).append({"b_id": row.id, **params})
    for names, rows in by_columns.items():
        statement = (
            update(table)
            .where(table.c.id == bindparam("b_id"))
            .values({name: bindparam(f"v_{name}") for name in names})
        )
        await session.execute(statement, rows)
    return ours


async def for_referral(
    session: AsyncSession, referral_id: uuid.UUID | None, state: State | None, limit: int
) -> Sequence[Notification]:
    """The delivery log: a referral's notifications, or those in a state, oldest first."""
    query = select(Notification).order_by(col(Notification.created_at), col(Notification.id)).limit(limit)
    if referral_id is not None:
        query = query.where(col(Notification.referral_id) == referral_id)
    if state is not None:
        query = query.where(col(Notification.state) == state)
    return (await session.execute(query)).scalars().all()


async def retry_failed(session: AsyncSession, notification_id: int, now: datetime) -> Notification | None:
    """Give a failed notification a fresh set of attempts (ops, once the cause is fixed)."""
    row = await session.get(Notification, notification_id, with_for_update=True)
    if row is None:
        return None
    if row.state == State.FAILED:
        row.state = State.PENDING
        row.attempts = 0
        row.next_attempt_at = now
        row.updated_at = now
        notify_on_commit(session, EMAILS_CHANNEL)
    return row


# --- webhooks ------------------------------------------------------------------------------------


async def endpoints(session: AsyncSession, clinic_ids: Collection[str]) -> dict[str, list[WebhookEndpoint]]:
    """The clinics' endpoints (not deleted), oldest first; a clinic with none is not in the dict. One
    query for a transaction's status changes, whatever their clinics."""
    query = (
        select(WebhookEndpoint)
        .where(
            col(WebhookEndpoint.clinic_id).in_(list(clinic_ids)), col(WebhookEndpoint.deleted_at).is_(None)
        )
        .order_by(col(WebhookEndpoint.created_at), col(WebhookEndpoint.id))
    )
    found: dict[str, list[WebhookEndpoint]] = {}
    for endpoint in (await session.execute(query)).scalars():
        found.setdefault(endpoint.clinic_id, []).append(endpoint)
    return found


async def get_endpoint(
    session: AsyncSession, clinic_id: str, endpoint_id: uuid.UUID, *, lock: bool = False
) -> WebhookEndpoint | None:
    """The clinic's endpoint (not deleted); another clinic's is ``None``."""
    query = select(WebhookEndpoint).where(
        col(WebhookEndpoint.id) == endpoint_id,
        col(WebhookEndpoint.clinic_id) == clinic_id,
        col(WebhookEndpoint.deleted_at).is_(None),
    )
    if lock:
        query = query.with_for_update()
    return (await session.execute(query)).scalars().first()


async def cancel_deliveries(session: AsyncSession, endpoint_id: uuid.UUID, now: datetime) -> None:
    """A deleted endpoint's waiting deliveries are not tried again."""
    await session.execute(
        update(WebhookDelivery)
        .where(
            col(WebhookDelivery.endpoint_id) == endpoint_id,
            col(WebhookDelivery.state) == DeliveryState.PENDING,
        )
        .values(state=DeliveryState.CANCELLED, updated_at=now)
    )


async def deliveries(
    session: AsyncSession,
    clinic_id: str,
    *,
    endpoint_id: uuid.UUID | None,
    referral_id: uuid.UUID | None,
    state: DeliveryState | None,
    limit: int,
) -> Sequence[WebhookDelivery]:
    """The clinic's deliveries, newest first."""
    query = select(WebhookDelivery).where(col(WebhookDelivery.clinic_id) == clinic_id)
    if endpoint_id is not None:
        query = query.where(col(WebhookDelivery.endpoint_id) == endpoint_id)
    if referral_id is not None:
        query = query.where(col(WebhookDelivery.referral_id) == referral_id)
    if state is not None:
        query = query.where(col(WebhookDelivery.state) == state)
    query = query.order_by(col(WebhookDelivery.created_at).desc(), col(WebhookDelivery.id)).limit(limit)
    return (await session.execute(query)).scalars().all()


async def get_delivery(
    session: AsyncSession, clinic_id: str, delivery_id: uuid.UUID, *, lock: bool = False
) -> WebhookDelivery | None:
    query = select(WebhookDelivery).where(
        col(WebhookDelivery.id) == delivery_id, col(WebhookDelivery.clinic_id) == clinic_id
    )
    if lock:
        query = query.with_for_update()
    return (await session.execute(query)).scalars().first()


async def claim_deliveries(
    session: AsyncSession, *, is_sqlite: bool, now: datetime, lease_s: float, limit: int
) -> Sequence[tuple[WebhookDelivery, WebhookEndpoint]]:
    """Take up to ``limit`` due deliveries, with their endpoints (``_claim``)."""
    token = await _claim(session, WebhookDelivery, is_sqlite=is_sqlite, now=now, lease_s=lease_s, limit=limit)
    if token is None:
        return []
    result = await session.execute(
        select(WebhookDelivery, WebhookEndpoint)
        .join(WebhookEndpoint, col(WebhookEndpoint.id) == col(WebhookDelivery.endpoint_id))
        .where(col(WebhookDelivery.claim) == token)
        .order_by(col(WebhookDelivery.id))
    )
    return [(delivery, endpoint) for delivery, endpoint in result.all()]


async def finish_delivery(
    session: AsyncSession, delivery: WebhookDelivery, values: dict[str, Any], now: datetime
) -> bool:
    """Record a claimed delivery's outcome if the claim is still ours (else another pass owns it)."""
    result = await session.execute(
        update(WebhookDelivery)
        .where(
            col(WebhookDelivery.id) == delivery.id,
            col(WebhookDelivery.state) == DeliveryState.SENDING,
            col(WebhookDelivery.claim) == delivery.claim,
        )
        .values(**values, claim=None, claimed_until=None, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    return bool(getattr(result, "rowcount", 0))
