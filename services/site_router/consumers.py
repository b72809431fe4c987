"""Kafka entry points: translate consumed events into the use cases of ``Commands``.

The consumer loop handles a poll's records in one transaction (which also records the event ids, so a
redelivered event changes nothing): one handler takes them all, so that the transaction first takes every
lock its referrals may need in the one lock order (``Commands.hold``), then runs their use cases in order.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from services.site_router.commands import Commands
from shared.events import Envelope, EventData, ReferralScreened, ReferralWithdrawn
from shared.handlers import Handlers


def handlers(commands: Commands) -> Handlers:
    """The events the site router consumes."""

    async def on_referral_events(session: AsyncSession, items: list[tuple[Envelope, EventData]]) -> None:
        await commands.hold(session, [envelope.referral_id for envelope, _ in items])
        for envelope, data in items:
            if isinstance(data, ReferralScreened):
                await commands.screened(session, envelope.referral_id, data, envelope.trace)
            elif isinstance(data, ReferralWithdrawn):
                await commands.withdrawn(session, envelope.referral_id, data, envelope.trace)

    return Handlers().together([ReferralScreened, ReferralWithdrawn], on_referral_events)
