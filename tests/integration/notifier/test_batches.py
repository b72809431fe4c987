"""What a dispatch batch shares: one contact read per referral, a few SMTP connections, one transaction
for the outcomes; and that sharing them loses and doubles nothing. Real intake stand-in, SMTP, database."""

from __future__ import annotations

import uuid
from collections import Counter

import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.notifier.bootstrap import contact_reader
from services.notifier.commands import record_routings
from services.notifier.dispatcher import Dispatcher
from services.notifier.domain import message_id
from services.notifier.mail import Email, Mailer, Templates
from services.notifier.store import Notification
from shared.db import Database
from shared.events import Envelope, ReferralNotifiedV2, ReferralRouted
from shared.outbox import OutboxRecord
from tests.integration.notifier.conftest import DFCI, REFERRER, WCM, Stack, assert_each_email_once, routed
from tests.support.smtp import SmtpServer
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration


async def test_the_rows_of_a_referral_share_one_contact_read_per_batch_even_when_it_is_missing(
    stack: Stack,
) -> None:
    known = [stack.referral() for _ in range(3)]
    unknown = uuid.uuid4()  # intake does not know it yet, so its patient and referrer wait
    async with stack.run():
        for referral_id in [*known, unknown]:
            await stack.publish(routed(referral_id))

        async def refused_twice() -> bool:
            rows = await stack.notifications(unknown)
            waiting = [r for r in rows if r.recipient_role != "site"]
            return len(waiting) == 2 and all(
                r.attempts >= 2 and "intake has no such referral" in str(r.last_error) for r in waiting
            )

        await eventually(refused_twice, what="the unknown referral's patient and referrer emails retried")
        stack.intake.add(unknown)
        rows = await stack.settled(12)

    reads = Counter(referral_id for _, referral_id in stack.intake.reads)
    assert {r: reads[r] for r in known} == {r: 1 for r in known}, "patient and referrer share one read"
    attempts = {r.recipient_role: r.attempts for r in rows if r.referral_id == unknown}
    assert attempts["patient"] == attempts["referrer"] == reads[unknown], "one read per attempt of both"
    assert_each_email_once(stack.smtp, 12)


async def test_one_contact_read_serves_every_referral_of_a_dispatch_batch(stack: Stack) -> None:
    settings = stack.make_settings()
    referrals = [stack.referral() for _ in range(3)]
    db = Database(stack.database_url)
    contacts, tokens = contact_reader(settings)
    mailer = Mailer(settings)
    dispatcher = Dispatcher(db, settings, mailer=mailer, templates=Templates(), contacts=contacts)
    try:
        async with db.session() as session:  # all three routings pending before the dispatcher runs
            events = [routed(referral_id) for referral_id in referrals]
            batch = [(event, event.payload()) for event in events]
            await record_routings(session, batch, message_id_domain="trialroute.notifier")  # type: ignore[arg-type]
        assert await dispatcher.dispatch_once() == 9
    finally:
        await mailer.aclose()
        await contacts.aclose()
        await tokens.aclose()
        await db.dispose()

    assert [sorted(call) for call in stack.intake.calls] == [sorted(referrals)]
    assert_each_email_once(stack.smtp, 9)


async def queued_notified(session: AsyncSession) -> list[tuple[Envelope, ReferralNotifiedV2]]:
    """The ``referral.notified`` events in the notifier's outbox, oldest first (all version 2)."""
    query = select(OutboxRecord).where(OutboxRecord.topic == "referral.notified").order_by(OutboxRecord.id)  # type: ignore[arg-type]
    found = []
    for record in (await session.execute(query)).scalars().all():
        envelope = Envelope.model_validate_json(record.payload)
        data = envelope.payload()
        assert isinstance(data, ReferralNotifiedV2) and record.key == str(envelope.referral_id)
        found.append((envelope, data))
    return found


async def test_a_batch_publishes_one_referral_notified_per_referral_listing_its_emails(stack: Stack) -> None:
    settings = stack.make_settings()
    referrals = [stack.referral(), stack.referral(), stack.referral(consent=False)]
    traces = [f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01" for _ in referrals]
    events = [routed(r).model_copy(update={"trace": t}) for r, t in zip(referrals, traces, strict=True)]
    db = Database(stack.database_url)
    contacts, tokens = contact_reader(settings)
    mailer = Mailer(settings)
    dispatcher = Dispatcher(db, settings, mailer=mailer, templates=Templates(), contacts=contacts)
    dispatcher.record_gather_s = 30  # every outcome in one transaction, however slow the machine
    try:
        async with db.session() as session:
            batch = [(event, event.payload()) for event in events]
            await record_routings(session, batch, message_id_domain="trialroute.notifier")  # type: ignore[arg-type]
        assert await dispatcher.dispatch_once() == 9
        async with db.session() as session:
            notified = await queued_notified(session)
    finally:
        await mailer.aclose()
        await contacts.aclose()
        await tokens.aclose()
        await db.dispose()

    assert_each_email_once(stack.smtp, 8)  # the third patient did not consent: skipped
    by_referral = {envelope.referral_id: (envelope, data) for envelope, data in notified}
    assert len(notified) == 3 and set(by_referral) == set(referrals), "one event per referral"
    for event, trace in zip(events, traces, strict=True):
        envelope, data = by_referral[event.referral_id]
        assert (envelope.type, envelope.version, envelope.producer) == ("referral.notified", 2, "notifier")
        assert envelope.trace == trace, "in the trace of the referral's own emails"
        roles = ["site", "referrer"] if event.referral_id == referrals[2] else ["site", "patient", "referrer"]
        assert sorted(e.recipient_role for e in data.emails) == sorted(roles)
        assert {(e.recipient_role, e.message_id, e.source_event_id) for e in data.emails} == {
            (role, message_id(event.id, role), event.id) for role in roles
        }


async def test_messages_go_over_reused_smtp_connections(stack: Stack) -> None:
    referrals = [stack.referral() for _ in range(4)]
    async with stack.run(smtp_connections=1):
        for referral_id in referrals:
            await stack.publish(routed(referral_id))
        await stack.settled(12)

    assert_each_email_once(stack.smtp, 12)
    assert stack.smtp.connections() == 1


async def test_a_connection_the_server_hung_up_on_is_replaced_without_losing_or_doubling_an_email(
    stack: Stack,
) -> None:
    first, second = stack.referral(), stack.referral()
    with SmtpServer(idle_timeout=1) as smtp:  # hangs up on a client idle for a second
        # The client would trust the connection for a minute: only the hang-up tells it otherwise.
        async with stack.run(smtp_port=smtp.port, smtp_connections=1, smtp_idle_s=60):
            await stack.publish(routed(first))
            await stack.settled(3)
            await eventually(lambda: _hung_up(smtp), what="the server to hang up on the idle client")
            await stack.publish(routed(second))
            rows = await stack.settled(6)

    assert_each_email_once(smtp, 6)
    assert smtp.connections() >= 2
    assert all(r.attempts == 1 and r.last_error is None for r in rows), "no attempt met the dead one"


async def _hung_up(smtp: SmtpServer) -> bool:
    return smtp.all_ended()


class LeaseTakingMailer(Mailer):
    """A real mailer; just before the referrer's email goes out, another dispatcher takes that row
    over, as if this one's lease had run out meanwhile."""

    def __init__(self, stack: Stack, db: Database) -> None:
        super().__init__(stack.make_settings())
        self.db = db

    async def send(self, email: Email) -> None:
        if email.recipient == REFERRER.email:
            async with self.db.session() as session:
                await session.execute(
                    update(Notification)
                    .where(Notification.recipient_role == "referrer")  # type: ignore[arg-type]
                    .values(claim="another-dispatcher")
                )
        await super().send(email)


async def test_a_batch_records_its_outcomes_together_but_not_one_whose_lease_was_lost(stack: Stack) -> None:
    settings = stack.make_settings()
    referral_id = stack.referral()
    event = routed(referral_id)
    db = Database(stack.database_url)
    contacts, tokens = contact_reader(settings)
    mailer = LeaseTakingMailer(stack, db)
    dispatcher = Dispatcher(db, settings, mailer=mailer, templates=Templates(), contacts=contacts)
    dispatcher.record_gather_s = 30  # all three outcomes in one transaction, however slow the machine
    try:
        async with db.session() as session:
            data = event.payload()
            assert isinstance(data, ReferralRouted)
            await record_routings(session, [(event, data)], message_id_domain="trialroute.notifier")
        assert await dispatcher.dispatch_once() == 3
        async with db.session() as session:
            notified = await queued_notified(session)
    finally:
        await mailer.aclose()
        await contacts.aclose()
        await tokens.aclose()
        await db.dispose()

    rows = {r.recipient_role: r for r in await stack.notifications()}
    assert {role: r.state for role, r in rows.items()} == {
        "site": "sent",
        "patient": "sent",
        "referrer": "sending",  # the other dispatcher's now: it records its own outcome
    }
    assert rows["referrer"].claim == "another-dispatcher" and rows["referrer"].sent_at is None
    assert rows["site"].updated_at == rows["patient"].updated_at, "recorded in one transaction"
    [(envelope, data)] = notified  # one event for the two emails recorded together
    assert envelope.referral_id == referral_id
    assert sorted(e.recipient_role for e in data.emails) == ["patient", "site"], (
        "no email in referral.notified for the row whose lease was lost"
    )
    assert len(stack.smtp.messages) == 3
    assert len(stack.intake.reads) == 1


async def test_routings_of_one_referral_recorded_together_name_the_site_each_one_leaves(stack: Stack) -> None:
    referral_id = stack.referral()
    earlier = routed(referral_id, WCM)
    db = Database(stack.database_url)
    try:
        async with db.session() as session:  # recorded before: the batch must read it from the store
            await record_routings(
                session, [(earlier, earlier.payload())], message_id_domain="trialroute.notifier"
            )
        together = [routed(referral_id, DFCI, rank=2), routed(referral_id, WCM, rank=3)]
        async with db.session() as session:
            batch = [(event, event.payload()) for event in together]
            await record_routings(session, batch, message_id_domain="trialroute.notifier")  # type: ignore[arg-type]
    finally:
        await db.dispose()

    sites = {
        r.source_event_id: r.previous_site for r in await stack.notifications() if r.recipient_role == "site"
    }
    assert sites == {earlier.id: None, together[0].id: WCM.name, together[1].id: DFCI.name}
