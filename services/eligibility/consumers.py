"""Kafka entry points: translate a consumed event into one use case of ``Commands``.

Each handler runs inside the consumer loop's transaction, which also records the event id, so a
redelivered event changes nothing.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from services.eligibility.commands import Commands
from services.eligibility.domain import Ruleset, StudySettings
from shared.events import (
    Envelope,
    ReferralAmended,
    ReferralRouted,
    ReferralSiteDecided,
    ReferralSnapshot,
    ReferralSubmitted,
)
from shared.handlers import Handlers


class EligibilityHandlers:
    """The handlers, bound to the rule set and study settings the process started with."""

    def __init__(self, ruleset: Ruleset, study: StudySettings) -> None:
        self.commands = Commands(ruleset, study)

    def registry(self) -> Handlers:
        return (
            Handlers()
            .on(ReferralSubmitted, self.on_referral)
            .on(ReferralAmended, self.on_referral)
            .on(ReferralRouted, self.on_routed)
            .on(ReferralSiteDecided, self.on_site_decided)
        )

    async def on_referral(self, session: AsyncSession, envelope: Envelope, data: ReferralSnapshot) -> None:
        await self.commands.screen(
            session, envelope.referral_id, data, source_event_id=envelope.id, trace=envelope.trace
        )

    async def on_routed(self, session: AsyncSession, envelope: Envelope, data: ReferralRouted) -> None:
        await self.commands.routed(session, envelope.referral_id, data)

    async def on_site_decided(
        self, session: AsyncSession, envelope: Envelope, data: ReferralSiteDecided
    ) -> None:
        await self.commands.site_decided(session, envelope.referral_id, data)
