"""Kafka entry points: record the notifications an event causes, and nothing else.

Handlers run inside the consumer loop's transaction (which also records the event id), so an event
delivered three times records its notifications once. They never send mail: an SMTP or intake outage
must not hold up a partition, and with it every other referral on it. The dispatcher sends.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession

from services.notifier import store
from services.notifier.domain import message_id, plan
from shared.events import Envelope, EventData, ReferralRouted, ReferralSiteDecided
from shared.handlers import Handlers


async def on_routed(
    session: AsyncSession, items: list[tuple[Envelope, ReferralRouted]], *, message_id_domain: str
) -> None:
    """Site coordinator, patient and referrer; a referral routed again names the site it leaves. The
    routings before these are read with one query for the whole transaction: routed events of a
    referral share a partition, so an earlier one is recorded, or earlier in ``items``."""
    before = await store.routings(session, {envelope.referral_id for envelope, _ in items})
    last = {referral_id: routed[0].site for referral_id, routed in before.items()}
    for envelope, data in items:
        previous = last.get(envelope.referral_id)
        previous_site = previous.name if previous and previous.code != data.site.code else None
        _record(session, envelope, data, previous_site, message_id_domain)
        last[envelope.referral_id] = data.site


async def on_site_decided(
    session: AsyncSession, envelope: Envelope, data: ReferralSiteDecided, *, message_id_domain: str
) -> None:
    """The referrer hears of every site decision. The site's name is looked up at send time: this
    topic is not ordered with ``referral.routed``, so the routing may not be recorded yet."""
    _record(session, envelope, data, None, message_id_domain)


def handlers(message_id_domain: str) -> Handlers:
    """Routings together (one read of the routings before them), site decisions one by one."""

    async def routed(session: AsyncSession, items: list[tuple[Envelope, ReferralRouted]]) -> None:
        await on_routed(session, items, message_id_domain=message_id_domain)

    async def site_decided(session: AsyncSession, envelope: Envelope, data: ReferralSiteDecided) -> None:
        await on_site_decided(session, envelope, data, message_id_domain=message_id_domain)

    return Handlers().together([ReferralRouted], routed).on(ReferralSiteDecided, site_decided)


def _record(
    session: AsyncSession, envelope: Envelope, data: EventData, site_name: str | None, domain: str
) -> None:
    planned = plan(data)
    store.add_planned(
        session,
        referral_id=envelope.referral_id,
        source_event_id=envelope.id,
        source_topic=envelope.type,
        source=envelope.model_dump_json(),
        planned=planned,
        message_ids=[message_id(envelope.id, p.role, domain) for p in planned],
        previous_site=site_name,
        now=datetime.now(UTC),
    )
