"""Intake takes ``referral.notified`` in both versions side by side (a rolling upgrade of the notifier):
version 1 is one timeline entry per email, version 2 one entry for the emails it lists; the clinic's
view, feed and webhooks see both."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import delete

from services.intake import store
from services.intake.config import IntakeSettings
from services.intake.consumers import HANDLERS
from services.intake.queries import Queries
from shared.auth import Principal, Scope
from shared.consumer import ProcessedEvent
from shared.events import Envelope, ReferralStatusChanged
from tests.handlers.test_intake import minutes, received, view
from tests.support import events
from tests.support.events import CLINIC, envelope
from tests.support.handlers import HandlerHarness, handler_harness

READER = Principal("clinic-a-intake", "clinic-a-intake", frozenset({Scope.REFERRALS_READ}), clinic_id=CLINIC)


@pytest.fixture
async def harness() -> AsyncIterator[HandlerHarness]:
    async with handler_harness(HANDLERS, store.TABLES) as harness:
        yield harness


def changes_of(published: list[Envelope], rid: uuid.UUID) -> list[ReferralStatusChanged]:
    found = [e.payload() for e in published if e.referral_id == rid]
    return [c for c in found if isinstance(c, ReferralStatusChanged)]


async def test_a_v1_then_a_v2_of_one_referral_are_both_on_its_timeline(harness: HandlerHarness) -> None:
    rid = await received(harness)
    old = envelope(rid, events.notified("site"), minutes(3))  # an old notifier, before its upgrade
    new = envelope(
        rid, events.notified_v2(("patient", "patient_routed"), ("referrer", "referrer_routed")), minutes(4)
    )
    assert (old.version, new.version) == (1, 2) and old.type == new.type == "referral.notified"
    await harness.deliver(envelope(rid, events.routed(), minutes(2)), old)
    await harness.deliver(new)

    seen = await view(harness, rid)
    assert seen.statuses == ["received", "routed", "notified", "notified"]
    assert (seen.status, seen.status_at) == ("notified", minutes(3))
    v1_entry, v2_entry = seen.timeline[2:]
    assert (v1_entry.event_id, v2_entry.event_id) == (old.id, new.id)
    assert v1_entry.reason == "site notified (site_new_referral)"
    assert v2_entry.reason == "patient and referrer notified (patient_routed, referrer_routed)"
    assert v2_entry.source == "notifier" and v2_entry.event_type == "referral.notified"
    assert v2_entry.details == {
        "notifications": [
            {"recipient_role": e["recipient_role"], "template": e["template"], "message_id": e["message_id"]}
            for e in new.data["emails"]
        ]
    }
    assert harness.dead_letters.letters == []
    assert harness.position("referral.notified") == 2

    # One referral.status_changed per entry: the v2 is one change for the clinic's feed and webhooks.
    changes = changes_of(await harness.published("referral.status_changed"), rid)
    notices = [c for c in changes if c.source_event_type == "referral.notified"]
    assert [c.source_event_id for c in notices] == [old.id, new.id]
    assert [c.entry_status for c in notices] == ["notified", "notified"]
    assert notices[1].reason == v2_entry.reason

    # The clinic's view lists every email, from either version, and its timeline one item per entry.
    queries = Queries(harness.db, IntakeSettings())
    public = await queries.referral(READER, rid)
    assert [(n.recipient_role, n.template, n.message_id) for n in public.notifications] == [
        ("site", "site_new_referral", old.data["message_id"]),
        ("patient", "patient_routed", new.data["emails"][0]["message_id"]),
        ("referrer", "referrer_routed", new.data["emails"][1]["message_id"]),
    ]
    assert [n.at for n in public.notifications] == [minutes(3), minutes(4), minutes(4)]
    assert [i.event for i in public.timeline].count("referral.notified") == 2
    feed = await queries.changes(READER, cursor=None, limit=100)
    assert [i.event_id for i in feed.items if i.event == "referral.notified"] == [old.id, new.id]


async def test_a_redelivered_v2_changes_nothing(harness: HandlerHarness) -> None:
    rid = await received(harness)
    notice = envelope(rid, events.notified_v2(), minutes(3))
    await harness.deliver(envelope(rid, events.routed(), minutes(2)), notice, notice)
    await harness.deliver(notice)
    async with harness.db.session() as session:  # a replay under another group: the timeline knows it
        await session.execute(delete(ProcessedEvent))
    await harness.deliver(notice)

    seen = await view(harness, rid)
    assert seen.statuses == ["received", "routed", "notified"]
    assert len(seen.timeline[2].details["notifications"]) == 3
    assert seen.timeline[2].reason == (
        "site, patient and referrer notified (site_new_referral, patient_routed, referrer_routed)"
    )
    changes = changes_of(await harness.published("referral.status_changed"), rid)
    assert [c.source_event_id for c in changes if c.source_event_type == "referral.notified"] == [notice.id]
    assert harness.dead_letters.letters == []


async def test_a_v2_about_a_site_decision_is_history(harness: HandlerHarness) -> None:
    rid = await received(harness)
    await harness.deliver(
        envelope(rid, events.routed(), minutes(1)),
        envelope(rid, events.notified_v2(), minutes(2)),
        envelope(rid, events.site_decided("accepted"), minutes(3)),
        envelope(rid, events.notified_v2(("referrer", "referrer_site_decided")), minutes(4)),
    )
    seen = await view(harness, rid)
    assert seen.statuses == ["received", "routed", "notified", "accepted", "notified"]
    assert (seen.status, seen.status_at) == ("accepted", minutes(3))


async def test_v1_and_v2_in_one_transaction_for_several_referrals(harness: HandlerHarness) -> None:
    """A rolling upgrade: old and new notifiers' events interleave in one poll; each referral comes out
    as if they had come one by one."""
    rids = [await received(harness) for _ in range(3)]
    burst = []
    for rid in rids:
        burst += [
            envelope(rid, events.routed(), minutes(1)),
            envelope(rid, events.notified("site"), minutes(2)),
            envelope(rid, events.notified_v2(("patient", "patient_routed")), minutes(2.5)),
        ]
    await harness.deliver(*reversed(burst))
    for rid in rids:
        seen = await view(harness, rid)
        assert seen.statuses == ["received", "routed", "notified", "notified"]
        assert (seen.status, seen.status_at) == ("notified", minutes(2))
    assert harness.dead_letters.letters == []


async def test_a_v2_without_emails_is_dead_lettered_and_the_rest_go_on(harness: HandlerHarness) -> None:
    rid = await received(harness)
    good = envelope(rid, events.notified_v2(), minutes(2))
    empty = Envelope.model_validate(
        {**good.model_dump(mode="json"), "id": str(uuid.uuid4()), "data": {"emails": []}}
    )
    await harness.deliver(envelope(rid, events.routed(), minutes(1)), empty, good)
    [letter] = harness.dead_letters.letters
    assert letter.topic == "referral.notified" and letter.value() == empty.to_bytes()
    assert (await view(harness, rid)).statuses == ["received", "routed", "notified"]
