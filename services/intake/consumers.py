"""Kafka entry points: every status event of the other services, for the referrals' timelines (and the
information requests they open or close), and the sites' questions.

The handler runs inside the consumer loop's transaction (which also records the event ids), for all the
new events of that transaction at once, and calls ``commands.record_status_events``.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from services.intake.commands import record_status_events
from shared.events import STATUS_EVENTS, Envelope, EventData, ReferralInfoRequested
from shared.handlers import Handlers


async def on_status_events(session: AsyncSession, items: list[tuple[Envelope, EventData]]) -> None:
    await record_status_events(session, items)


HANDLERS = Handlers().together([*STATUS_EVENTS, ReferralInfoRequested], on_status_events)
"""What intake's consumer group takes: every status event, for the referral's timeline, and the sites'
questions, which become information requests to the clinic."""
