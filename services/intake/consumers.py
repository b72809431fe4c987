"""Status events from the other services, kept on the referral's timeline.

Each handler runs inside the consumer loop's transaction (which also records the event id). Events of
one referral come from several topics, so they may arrive in any order and concurrently: the referral
row is locked, the entry is stored with the time it occurred, and the status is re-derived from the
whole timeline (``domain.project``), never copied from the last event that happened to arrive.
"""

from __future__ import annotations

import logging
from datetime import UTC

from sqlalchemy.ext.asyncio import AsyncSession

from services.intake import store
from services.intake.domain import describe
from services.intake.store import TimelineEntry
from shared.consumer import Handler, PoisonMessage
from shared.events import Envelope, EventData

log = logging.getLogger(__name__)


async def on_status_event(session: AsyncSession, envelope: Envelope, data: EventData) -> None:
    """Record one status event of another service on its referral's timeline."""
    referral = await store.get_referral(session, envelope.referral_id, lock=True)
    if referral is None:
        # Intake commits a referral before its first event leaves: an unknown id is not ours.
        raise PoisonMessage(f"no referral {envelope.referral_id} in intake")
    clinic_id = getattr(data, "clinic_id", None)
    if clinic_id is not None and clinic_id != referral.clinic_id:
        raise PoisonMessage("the event names another clinic than the referral's")
    if await store.has_entry(session, envelope.id):
        return  # already on the timeline (e.g. replayed under another consumer group)
    described = describe(data)
    occurred_at = envelope.occurred_at
    if occurred_at.tzinfo is None:  # a producer that forgot the zone: the design's times are UTC
        occurred_at = occurred_at.replace(tzinfo=UTC)
    entry = TimelineEntry(
        referral_id=referral.id,
        event_id=envelope.id,
        event_type=envelope.type,
        status=described.status.value if described.status else None,
        revision=described.revision,
        occurred_at=occurred_at,
        source=envelope.producer,
        reason=described.reason,
        details=described.details,
    )
    await store.record(session, referral, entry)
    log.info("status event recorded", extra={"event_type": envelope.type, "status": referral.status})


STATUS_EVENTS = (
    "referral.screened",
    "referral.routed",
    "referral.waitlisted",
    "referral.unroutable",
    "referral.notified",
    "referral.site_decided",
)

HANDLERS: dict[str, Handler] = dict.fromkeys(STATUS_EVENTS, on_status_event)
"""What intake's consumer group subscribes to, and the handler of each."""
