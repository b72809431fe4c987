"""Status events from the other services, kept on the referral's timeline.

The handler runs inside the consumer loop's transaction (which also records the event ids), for all the
new events of that transaction at once. Events of one referral come from several topics, so they may
arrive in any order and concurrently: the referral row is locked, each entry is stored with the time it
occurred, and the status is re-derived from the whole timeline (``domain.project``), never copied from
the last event that happened to arrive.
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC

from sqlalchemy.ext.asyncio import AsyncSession

from services.intake import store
from services.intake.domain import describe
from services.intake.store import TimelineEntry
from shared.events import STATUS_EVENTS, Envelope, EventData
from shared.handlers import Handlers, PoisonMessage
from shared.observability import referral_context

log = logging.getLogger(__name__)


async def on_status_events(session: AsyncSession, items: list[tuple[Envelope, EventData]]) -> None:
    """Record status events of other services on their referrals' timelines: the referrals are locked
    and their timelines read once for all of them, and each touched referral is folded once."""
    ids = sorted({envelope.referral_id for envelope, _ in items})
    referrals = await store.get_referrals(session, ids, lock=True)
    entries = await store.timelines(session, list(referrals))
    known = {entry.event_id for timeline in entries.values() for entry in timeline}
    touched: set[uuid.UUID] = set()
    for envelope, data in items:
        referral = referrals.get(envelope.referral_id)
        if referral is None:
            # Intake commits a referral before its first event leaves: an unknown id is not ours.
            raise PoisonMessage(f"no referral {envelope.referral_id} in intake")
        clinic_id = getattr(data, "clinic_id", None)
        if clinic_id is not None and clinic_id != referral.clinic_id:
            raise PoisonMessage("the event names another clinic than the referral's")
        if envelope.id in known:
            continue  # already on the timeline (e.g. replayed under another consumer group)
        known.add(envelope.id)
        entry = _entry(envelope, data)
        session.add(entry)
        entries[referral.id].append(entry)
        touched.add(referral.id)
        with referral_context(envelope.referral_id, envelope.trace):
            log.info("status event recorded", extra={"event_type": envelope.type})
    for referral_id in touched:
        store.fold(referrals[referral_id], entries[referral_id])


def _entry(envelope: Envelope, data: EventData) -> TimelineEntry:
    described = describe(data)
    occurred_at = envelope.occurred_at
    if occurred_at.tzinfo is None:  # a producer that forgot the zone: event times are UTC (docs/events.md)
        occurred_at = occurred_at.replace(tzinfo=UTC)
    return TimelineEntry(
        referral_id=envelope.referral_id,
        event_id=envelope.id,
        event_type=envelope.type,
        status=described.status.value if described.status else None,
        revision=described.revision,
        occurred_at=occurred_at,
        source=envelope.producer,
        reason=described.reason,
        details=described.details,
    )


HANDLERS = Handlers().together(STATUS_EVENTS, on_status_events)
"""What intake's consumer group takes: every status event, for the referral's timeline."""
