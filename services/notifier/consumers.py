"""Kafka entry points: translate a consumed event into one use case of ``commands``.

Each handler runs inside the consumer loop's transaction (which also records the event id) and only
records notifications; the dispatcher sends them.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from services.notifier import commands
from shared.events import (
    Envelope,
    ReferralInfoRequestOpened,
    ReferralProgressed,
    ReferralRouted,
    ReferralSiteDecided,
    ReferralStatusChanged,
)
from shared.handlers import Handlers


def handlers(message_id_domain: str) -> Handlers:
    """Routings together (one read of the routings before them), site decisions, the site's steps and
    information requests one by one; status changes together, as the webhook deliveries they cause."""

    async def on_routed(session: AsyncSession, items: list[tuple[Envelope, ReferralRouted]]) -> None:
        await commands.record_routings(session, items, message_id_domain=message_id_domain)

    async def on_site_decided(session: AsyncSession, envelope: Envelope, data: ReferralSiteDecided) -> None:
        await commands.record_site_decision(session, envelope, data, message_id_domain=message_id_domain)

    async def on_progressed(session: AsyncSession, envelope: Envelope, data: ReferralProgressed) -> None:
        await commands.record_progress(session, envelope, data, message_id_domain=message_id_domain)

    async def on_info_request(
        session: AsyncSession, envelope: Envelope, data: ReferralInfoRequestOpened
    ) -> None:
        await commands.record_info_request(session, envelope, data, message_id_domain=message_id_domain)

    async def on_status_changed(
        session: AsyncSession, items: list[tuple[Envelope, ReferralStatusChanged]]
    ) -> None:
        await commands.record_status_changes(session, items)

    return (
        Handlers()
        .together([ReferralRouted], on_routed)
        .on(ReferralSiteDecided, on_site_decided)
        .on(ReferralProgressed, on_progressed)
        .on(ReferralInfoRequestOpened, on_info_request)
        .together([ReferralStatusChanged], on_status_changed)
    )
