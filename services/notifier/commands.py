"""The notifier's use cases: record the notifications an event causes; retry a failed one.

Each runs in the caller's transaction: the consumer loop's (which also records the event id, so an event
delivered three times records its notifications once) or a route's. None of them sends mail: an SMTP or
intake outage must not hold up a partition, and with it every other referral on it. The dispatcher sends.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession

from services.notifier import store
from services.notifier.domain import State, message_id, plan
from services.notifier.store import Notification
from shared.events import Envelope, EventData, ReferralRouted, ReferralSiteDecided
from shared.problems import Conflict, NotFound


async def record_routings(
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


async def record_site_decision(
    session: AsyncSession, envelope: Envelope, data: ReferralSiteDecided, *, message_id_domain: str
) -> None:
    """The referrer hears of every site decision. The site's name is looked up at send time: this
    topic is not ordered with ``referral.routed``, so the routing may not be recorded yet."""
    _record(session, envelope, data, None, message_id_domain)


async def retry(session: AsyncSession, notification_id: int) -> Notification:
    """Give a failed notification a fresh set of attempts, once its cause is fixed; only a failed one."""
    row = await store.retry_failed(session, notification_id, datetime.now(UTC))
    if row is None:
        raise NotFound(f"no notification {notification_id}")
    if row.state != State.PENDING:
        raise Conflict(f"notification {notification_id} is {row.state}; only a failed one is retried")
    return row


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
