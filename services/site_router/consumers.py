"""Kafka entry points: translate a consumed event into one use case of ``Router``.

Each handler runs in the consumer loop's transaction, which also records the event id, so a redelivered
event changes nothing.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from services.site_router.referrals import Router
from shared.events import Envelope, ReferralScreened, ReferralWithdrawn
from shared.handlers import Handlers


def handlers(router: Router) -> Handlers:
    """The events the router consumes."""

    async def on_screened(session: AsyncSession, envelope: Envelope, data: ReferralScreened) -> None:
        await router.screened(session, envelope.referral_id, data, envelope.trace)

    async def on_withdrawn(session: AsyncSession, envelope: Envelope, data: ReferralWithdrawn) -> None:
        await router.withdrawn(session, envelope.referral_id, data, envelope.trace)

    return Handlers().on(ReferralScreened, on_screened).on(ReferralWithdrawn, on_withdrawn)
