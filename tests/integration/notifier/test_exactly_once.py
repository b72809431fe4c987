"""One email per (event, recipient) under redelivery, restarts, an SMTP outage, a crashed dispatcher
and several notifier instances; counted per Message-ID at a real SMTP server."""

from __future__ import annotations

import uuid
from collections import Counter
from datetime import UTC, datetime

import pytest

from services.notifier.commands import record_routings
from services.notifier.domain import message_id
from services.notifier.store import claim_due
from shared.db import Database
from shared.events import ReferralRouted
from tests.integration.notifier.conftest import (
    DFCI,
    Stack,
    assert_each_email_once,
    emails_of,
    routed,
    settled,
)
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration


async def test_an_event_delivered_three_times_and_again_after_a_restart_emails_each_recipient_once(
    stack: Stack,
) -> None:
    referral_id = stack.referral()
    event = routed(referral_id)
    settings = stack.make_settings()
    async with stack.run_notifier(settings):
        await stack.publish(event, times=3)
        await stack.settled(3)

    async with stack.run_notifier(settings):  # a restart: the same group, store and SMTP server
        await stack.publish(event)
        # Routed again, behind the copy on the same partition: once its emails are out, the copy
        # was consumed too.
        await stack.publish(routed(referral_id, DFCI, rank=2))
        await stack.settled(6)
        await stack.quiet()

    assert_each_email_once(stack.smtp, 6)
    for role in ("site", "patient", "referrer"):
        assert message_id(event.id, role) in stack.smtp.by_message_id()
    sent = emails_of(await stack.notified())
    assert len(sent) == 6 and len({mid for _, _, mid in sent}) == 6, "each email in referral.notified once"
    assert {rid for rid, _, _ in sent} == {referral_id}


async def test_an_smtp_outage_delays_the_emails_and_loses_none(stack: Stack) -> None:
    referrals = [uuid.uuid4() for _ in range(3)]
    for referral_id in referrals:
        stack.intake.add(referral_id)
    stack.smtp.stop()
    async with stack.run():
        for referral_id in referrals:
            await stack.publish(routed(referral_id))
        waiting = await stack.settled(9, states=frozenset({"pending", "sending"}))

        async def retried() -> bool:
            rows = await stack.notifications()
            return all(r.attempts >= 2 and r.state in ("pending", "sending") for r in rows)

        await eventually(retried, what="every notification retried during the outage")
        rows = await stack.notifications()
        assert all("SMTP unavailable" in str(r.last_error) for r in rows if r.state == "pending")
        assert len(waiting) == 9

        stack.smtp.start()
        rows = await stack.settled(9)
        await stack.quiet()

    assert_each_email_once(stack.smtp, 9)
    assert all(r.state == "sent" and r.last_error is None for r in rows)


async def test_a_dispatcher_that_died_mid_send_is_replaced_after_its_lease_with_the_same_message_id(
    stack: Stack,
) -> None:
    referral_id = stack.referral()
    event = routed(referral_id)
    db = Database(stack.database_url)
    async with db.session() as session:
        data = event.payload()
        assert isinstance(data, ReferralRouted)
        await record_routings(session, [(event, data)], message_id_domain="trialroute.notifier")
    async with db.session() as session:  # claimed by a dispatcher that then crashed
        claimed = await claim_due(session, is_sqlite=False, now=datetime.now(UTC), lease_s=3, limit=10)
    await db.dispose()
    assert len(claimed) == 3

    async with stack.run():
        rows = await stack.notifications()
        assert {r.state for r in rows} == {"sending"}, "nobody touches a row under a live lease"
        rows = await stack.settled(3)

    assert all(r.attempts == 2 for r in rows)
    assert_each_email_once(stack.smtp, 3)
    assert message_id(event.id, "site") in stack.smtp.by_message_id()


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
async def test_several_notifier_instances_send_each_email_once(
    backend: str,
    stack: Stack,
    sqlite_url: str,
) -> None:
    url = stack.database_url if backend == "postgresql" else sqlite_url
    referrals = [uuid.uuid4() for _ in range(8)]
    for referral_id in referrals:
        stack.intake.add(referral_id)
    settings = stack.make_settings(database_url=url, dispatch_batch=3)
    events = {referral_id: routed(referral_id) for referral_id in referrals}
    async with stack.run_notifier(settings), stack.run_notifier(settings), stack.run_notifier(settings):
        for event in events.values():
            await stack.publish(event, times=2)
        rows = await settled(url, 24, within=90)
        await stack.quiet(url)

    assert_each_email_once(stack.smtp, 24)
    assert Counter(r.state for r in rows) == {"sent": 24}
    published = await stack.notified()
    sent = emails_of(published)
    assert len(sent) == 24 and len({mid for _, _, mid in sent}) == 24, "each email in referral.notified once"
    assert Counter(rid for rid, _, _ in sent) == dict.fromkeys(referrals, 3)
    # One event per referral per recording transaction: whatever the batches, an event's emails are
    # all of its envelope's referral, each named by its Message-ID.
    for n in published:
        source = events[n.envelope.referral_id].id
        assert {(e.source_event_id, e.message_id) for e in n.emails} == {
            (source, message_id(source, e.recipient_role)) for e in n.emails
        }
