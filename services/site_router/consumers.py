"""Kafka entry points: translate a consumed event into one use case of ``Commands``.

Each handler runs in the consumer loop's transaction, which also records the event id, so a redelivered
event changes nothing.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from services.site_router.commands import Commands
from shared.events import Envelope, ReferralScreened, ReferralWithdrawn
from shared.handlers import Handlers


def handlers(commands: Commands) -> Handlers:
    """The events the site router consumes."""

    async def on_screened(session: AsyncSession, envelope: Envelope, data: ReferralScreened) -> None:
        await commands.screened(session, envelope.referral_id, data, envelope.trace)

    async def on_withdrawn(session: AsyncSession, envelope: Envelope, data: ReferralWithdrawn) -> None:
        await commands.withdrawn(session, envelope.referral_id, data, envelope.trace)

    return Handlers().on(ReferralScreened, on_screened).on(ReferralWithdrawn, on_withdrawn)
