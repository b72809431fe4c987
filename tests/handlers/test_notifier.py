"""The notifier's handlers: the emails an event causes recorded once, as pending, and nothing sent.

Rendering and sending are the dispatcher's (the integration suite runs it against a real SMTP server);
here, what the consumer records of each event.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator

import pytest
from sqlmodel import col, select

from services.notifier.consumers import handlers
from services.notifier.domain import message_id
from services.notifier.store import TABLES, Notification, WebhookDelivery, WebhookEndpoint
from shared.events import Envelope
from tests.support import builders, events
from tests.support.events import envelope, site
from tests.support.handlers import HandlerHarness, handler_harness

DOMAIN = "notifier.test"
WCM = site("WCM", "Weill Cornell Medicine")
DFCI = site("DFCI", "Dana-Farber Cancer Institute", city="Boston")


@pytest.fixture
async def harness() -> AsyncIterator[HandlerHarness]:
    async with handler_harness(handlers(DOMAIN), TABLES) as harness:
        yield harness


async def notifications(harness: HandlerHarness, referral_id: uuid.UUID | None = None) -> list[Notification]:
    async with harness.db.session() as session:
        query = select(Notification).order_by(col(Notification.id))
        if referral_id is not None:
            query = query.where(col(Notification.referral_id) == referral_id)
        return list((await session.execute(query)).scalars().all())


async def previous_sites(harness: HandlerHarness) -> dict[uuid.UUID, str | None]:
    """Each routing's site email: the name of the site it replaces, by source event."""
    return {
        r.source_event_id: r.previous_site for r in await notifications(harness) if r.recipient_role == "site"
    }


async def test_a_routing_plans_the_site_patient_and_referrer_emails_and_sends_none(
    harness: HandlerHarness,
) -> None:
    rid = uuid.uuid4()
    event = envelope(rid, events.routed(site=WCM))
    await harness.deliver(event)
    rows = await notifications(harness)
    assert [(r.recipient_role, r.template) for r in rows] == [
        ("site", "site_new_referral"),
        ("patient", "patient_routed"),
        ("referrer", "referrer_routed"),
    ]
    assert all(r.referral_id == rid and r.source_event_id == event.id for r in rows)
    assert all(r.source_topic == "referral.routed" and r.previous_site is None for r in rows)
    assert [r.message_id for r in rows] == [
        message_id(event.id, r, DOMAIN) for r in ("site", "patient", "referrer")
    ]
    assert Envelope.model_validate_json(rows[0].source) == event, "the event is kept to render from"
    # Nothing sent: no attempt, no recipient resolved, no referral.notified queued.
    assert {(r.state, r.attempts, r.recipient, r.sent_at) for r in rows} == {("pending", 0, None, None)}
    assert await harness.published() == []


async def test_a_routing_delivered_three_times_is_recorded_once(harness: HandlerHarness) -> None:
    rid = uuid.uuid4()
    event = envelope(rid, events.routed(site=WCM))
    await harness.deliver(event, event)
    await harness.deliver(event)
    assert len(await notifications(harness)) == 3
    assert harness.position("referral.routed") == 3
    assert harness.dead_letters.letters == []


async def test_a_referral_routed_again_names_the_site_it_leaves(harness: HandlerHarness) -> None:
    rid = uuid.uuid4()
    first = envelope(rid, events.routed(site=WCM))
    second = envelope(rid, events.routed(site=DFCI, rank=2))
    republished = envelope(rid, events.routed(revision=2, site=DFCI, rank=2))  # amended: same site
    for event in (first, second, republished):
        await harness.deliver(event)
    assert await previous_sites(harness) == {first.id: None, second.id: WCM.name, republished.id: None}
    patient = [r for r in await notifications(harness) if r.recipient_role == "patient"]
    assert [r.previous_site for r in patient] == [None, WCM.name, None], "every email of the event knows"


async def test_routings_recorded_together_name_the_site_each_one_leaves(harness: HandlerHarness) -> None:
    """One poll, one handler call: the routings before it come from the store, the rest from the poll."""
    rid = uuid.uuid4()
    earlier = envelope(rid, events.routed(site=WCM))
    await harness.deliver(earlier)
    together = [
        envelope(rid, events.routed(site=DFCI, rank=2)),
        envelope(rid, events.routed(site=WCM, rank=3)),
    ]
    await harness.deliver(*together)
    assert await previous_sites(harness) == {
        earlier.id: None,
        together[0].id: WCM.name,
        together[1].id: DFCI.name,
    }


async def test_routings_of_other_referrals_in_one_poll_do_not_name_each_others_sites(
    harness: HandlerHarness,
) -> None:
    one, other = uuid.uuid4(), uuid.uuid4()
    poll = [envelope(one, events.routed(site=WCM)), envelope(other, events.routed(site=DFCI))]
    await harness.deliver(*poll)
    assert await previous_sites(harness) == {poll[0].id: None, poll[1].id: None}


@pytest.mark.parametrize("decision", ["accepted", "declined", "closed"])
async def test_a_site_decision_plans_the_referrers_email_once(harness: HandlerHarness, decision: str) -> None:
    rid = uuid.uuid4()
    event = envelope(rid, events.site_decided(decision, "no capacity", site_code="WCM"))
    await harness.deliver(event, event)
    await harness.deliver(event)
    [row] = await notifications(harness)
    assert (row.recipient_role, row.template, row.source_topic) == (
        "referrer",
        "referrer_site_decided",
        "referral.site_decided",
    )
    assert (row.source_event_id, row.message_id) == (event.id, message_id(event.id, "referrer", DOMAIN))
    assert (row.state, row.previous_site) == ("pending", None)
    assert await harness.published() == []


async def test_a_decline_and_the_next_routing_in_one_poll(harness: HandlerHarness) -> None:
    """Decisions and routings are different topics, handled one by one and together in one transaction."""
    rid = uuid.uuid4()
    await harness.deliver(envelope(rid, events.routed(site=WCM)))
    declined = envelope(rid, events.site_decided("declined", site_code="WCM"))
    rerouted = envelope(rid, events.routed(site=DFCI, rank=2))
    await harness.deliver(declined, rerouted)
    rows = await notifications(harness, rid)
    assert [(r.source_topic, r.recipient_role) for r in rows[3:]] == [
        ("referral.site_decided", "referrer"),
        ("referral.routed", "site"),
        ("referral.routed", "patient"),
        ("referral.routed", "referrer"),
    ]
    assert (await previous_sites(harness))[rerouted.id] == WCM.name
    assert (harness.position("referral.routed"), harness.position("referral.site_decided")) == (2, 1)


async def test_an_unreadable_routing_is_dead_lettered_and_the_others_are_recorded(
    harness: HandlerHarness,
) -> None:
    rid = uuid.uuid4()
    good = envelope(rid, events.routed(site=WCM))
    broken = good.model_copy(update={"id": uuid.uuid4(), "data": {**good.data, "rank": 0}})
    await harness.deliver(broken, good)
    [letter] = harness.dead_letters.letters
    assert letter.error.startswith("ValidationError") and letter.value() == broken.to_bytes()
    assert {r.source_event_id for r in await notifications(harness)} == {good.id}
    assert harness.position("referral.routed") == 2


async def endpoint(harness: HandlerHarness, clinic_id: str, event_types: list[str]) -> uuid.UUID:
    row = WebhookEndpoint(
        clinic_id=clinic_id, url="https://ehr.example.org/hook", event_types=event_types, secret="whsec_AAAA"
    )
    async with harness.db.session() as session:
        session.add(row)
    return row.id


async def test_a_status_change_becomes_one_pending_delivery_per_endpoint_of_the_clinic_that_wants_it(
    harness: HandlerHarness,
) -> None:
    every = await endpoint(harness, builders.CLINIC, [])
    routed_only = await endpoint(harness, builders.CLINIC, ["referral.routed"])
    await endpoint(harness, builders.CLINIC, ["referral.site_decided"])
    await endpoint(harness, "another-clinic", [])
    change = builders.wrap(builders.status_changed("referral.routed", seq=7))
    await harness.deliver(change)
    await harness.deliver(change)  # a redelivery records nothing more

    async with harness.db.session() as session:
        rows = list((await session.execute(select(WebhookDelivery))).scalars().all())
    assert {r.endpoint_id for r in rows} == {every, routed_only}
    assert {(r.state, r.attempts, r.event_type, r.clinic_id) for r in rows} == {
        ("pending", 0, "referral.routed", builders.CLINIC)
    }
    body = json.loads(rows[0].payload)
    assert body["type"] == "referral.routed"
    assert body["data"]["referral_id"] == str(change.referral_id) and body["data"]["seq"] == 7
    assert set(body["data"]) == {
        "referral_id", "seq", "status", "entry_status", "revision", "entry_revision", "reason",
        "occurred_at", "recorded_at", "event_id",
    }  # fmt: skip


async def test_the_sites_outcome_plans_the_referrers_email_once_and_its_steps_none(
    harness: HandlerHarness,
) -> None:
    rid = uuid.uuid4()
    steps = [envelope(rid, events.progressed(s)) for s in ("contacted", "screening_scheduled", "consented")]
    outcome = envelope(rid, events.progressed("enrolled"))
    await harness.deliver(*steps, outcome)
    await harness.deliver(outcome)  # redelivered
    rows = await notifications(harness, rid)
    assert [(r.recipient_role, r.template, r.source_event_id) for r in rows] == [
        ("referrer", "referrer_outcome", outcome.id)
    ]
    assert rows[0].source_topic == "referral.progressed" and rows[0].state == "pending"
    assert rows[0].message_id == message_id(outcome.id, "referrer", DOMAIN)
    assert harness.position("referral.progressed") == 5
