"""Intake's information requests: derived from a needs_review screening that lacks facts, or from a
site's question; closed by the screening of a newer revision (answered or superseded) and cancelled
once the referral can no longer be amended."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import delete, event

from services.intake import store
from services.intake.consumers import HANDLERS
from services.intake.domain import Status
from shared.consumer import ProcessedEvent
from tests.handlers.test_intake import T, minutes, received
from tests.support import builders, events
from tests.support.events import CLINIC, envelope
from tests.support.handlers import HandlerHarness, handler_harness


@pytest.fixture
async def harness() -> AsyncIterator[HandlerHarness]:
    async with handler_harness(HANDLERS, store.TABLES) as harness:
        yield harness


async def missing(harness: HandlerHarness, rid: uuid.UUID, *fields: str) -> None:
    """Take top-level fields out of the referral's clinical block (the clinic did not send them)."""
    async with harness.db.session() as session:
        referral = await store.get_referral(session, rid)
        assert referral is not None
        referral.clinical = {k: v for k, v in referral.clinical.items() if k not in fields}


async def amended(harness: HandlerHarness, rid: uuid.UUID, at: Any, **clinical: Any) -> None:
    """The referral as intake stores an amendment: the next revision, its clinical block, ``received``."""
    async with harness.db.session() as session:
        referral = await store.get_referral(session, rid)
        assert referral is not None
        referral.revision += 1
        referral.clinical = {**referral.clinical, **clinical}
        entry = store.NewEntry(
            referral_id=rid,
            event_id=uuid.uuid4(),
            event_type="referral.amended",
            status=Status.RECEIVED.value,
            revision=referral.revision,
            occurred_at=at,
            source="intake",
            reason="amended",
        )
        await store.record(session, referral, entry)
        await store.add_entries(session, [(referral, entry)])


async def requests(harness: HandlerHarness, rid: uuid.UUID) -> list[store.InformationRequest]:
    async with harness.db.session() as session:
        return (await store.information_requests(session, [rid]))[rid]


def screened(*unknown: str, **changes: Any) -> Any:
    return builders.needs_review(*unknown, clinic_id=CLINIC, **changes)


async def test_a_needs_review_screening_that_lacks_a_fact_asks_the_clinic_for_it(
    harness: HandlerHarness,
) -> None:
    rid = await received(harness)
    await missing(harness, rid, "ecog")
    await harness.deliver(envelope(rid, screened("ecog"), minutes(1)))

    [request] = await requests(harness, rid)
    assert (request.origin, request.state, request.revision) == ("screening", "open", 1)
    assert request.items == [
        {
            "criterion": "ecog",
            "reason": "ecog not given",
            "fields": [{"json_path": "clinical.ecog", "fhir": "Observation[LOINC 89247-1].valueInteger"}],
        }
    ]
    async with harness.db.session() as session:
        timeline = list(await store.timeline(session, rid))
    entry = timeline[-1]
    assert (entry.event_type, entry.status, entry.source) == ("referral.info_request_opened", None, "intake")
    assert entry.details["information_request"]["items"] == request.items
    assert entry.seq is not None and entry.referral_status == "screened"
    [opened] = await harness.published("referral.info_request_opened")
    assert opened.data["request"]["id"] == str(request.id) and opened.data["clinic_id"] == CLINIC
    changes = await harness.published("referral.status_changed")
    assert changes[-1].data["source_event_type"] == "referral.info_request_opened"
    assert changes[-1].data["information_request"]["items"][0]["criterion"] == "ecog"
    assert "Maria" not in opened.model_dump_json() and "Lopez" not in changes[-1].model_dump_json()


async def test_a_value_given_that_does_not_settle_the_criterion_asks_for_all_its_fields(
    harness: HandlerHarness,
) -> None:
    rid = await received(harness)
    await harness.deliver(envelope(rid, screened("cd123_positive"), minutes(1)))
    [request] = await requests(harness, rid)
    assert [f["json_path"] for f in request.items[0]["fields"]] == [
        "clinical.cd123.positive",
        "clinical.cd123.method",
    ]


async def test_a_redelivered_screening_opens_one_request(harness: HandlerHarness) -> None:
    rid = await received(harness)
    event = envelope(rid, screened("ecog"), minutes(1))
    await harness.deliver(event, event)
    await harness.deliver(event)
    assert len(await requests(harness, rid)) == 1
    assert len(await harness.published("referral.info_request_opened")) == 1


async def test_an_eligible_or_ineligible_screening_asks_nothing(harness: HandlerHarness) -> None:
    rid = await received(harness)
    await harness.deliver(envelope(rid, events.screened(), minutes(1)))
    other = await received(harness)
    await harness.deliver(envelope(other, events.screened(routable=False), minutes(1)))
    assert await requests(harness, rid) == []
    assert await requests(harness, other) == []


async def test_the_screening_of_an_amendment_that_supplies_the_facts_answers_the_request(
    harness: HandlerHarness,
) -> None:
    rid = await received(harness)
    await missing(harness, rid, "ecog")
    await harness.deliver(envelope(rid, screened("ecog"), minutes(1)))
    await amended(harness, rid, minutes(2), ecog=1)
    assert (await requests(harness, rid))[0].state == "open", "open until the new revision is screened"

    await harness.deliver(envelope(rid, events.screened(revision=2), minutes(3)))
    [request] = await requests(harness, rid)
    assert (request.state, request.outcome, request.closed_by_revision) == ("closed", "answered", 2)
    changes = await harness.published("referral.status_changed")
    assert changes[-1].data["source_event_type"] == "referral.info_request_closed"
    assert changes[-1].data["information_request"]["outcome"] == "answered"
    assert changes[-1].data["status"] == "screened"


async def test_a_screening_that_still_lacks_a_fact_supersedes_the_request_with_a_new_one(
    harness: HandlerHarness,
) -> None:
    rid = await received(harness)
    await harness.deliver(envelope(rid, screened("ecog", "active_infection"), minutes(1)))
    await amended(harness, rid, minutes(2), ecog=1)
    await harness.deliver(envelope(rid, screened("active_infection", revision=2), minutes(3)))
    first, second = await requests(harness, rid)
    assert (first.state, first.outcome) == ("closed", "superseded")
    assert (second.state, second.revision) == ("open", 2)
    assert [i["criterion"] for i in second.items] == ["active_infection"]


async def test_a_screening_of_an_older_revision_neither_opens_nor_closes(harness: HandlerHarness) -> None:
    rid = await received(harness)
    await harness.deliver(envelope(rid, screened("ecog"), minutes(1)))
    await amended(harness, rid, minutes(2))
    await harness.deliver(envelope(rid, screened("ecog", revision=1), minutes(1.5)))
    [request] = await requests(harness, rid)
    assert request.state == "open"


async def test_a_site_question_becomes_a_request_that_acceptance_cancels(harness: HandlerHarness) -> None:
    rid = await received(harness)
    await harness.deliver(
        envelope(rid, events.screened(), minutes(1)), envelope(rid, events.routed(), minutes(2))
    )
    question = envelope(rid, builders.info_requested(clinic_id=CLINIC), minutes(3))
    await harness.deliver(question, question)

    [request] = await requests(harness, rid)
    assert (request.origin, request.site_code, request.text) == (
        "site",
        "US-NY-01",
        "please send this week's renal panel",
    )
    assert request.items[0]["criterion"] == "organ_function"
    assert len(request.items[0]["fields"]) == 6, "a site asks to confirm: every field of the criterion"

    await harness.deliver(envelope(rid, events.site_decided("accepted"), minutes(4)))
    [request] = await requests(harness, rid)
    assert (request.state, request.outcome) == ("closed", "cancelled")
    assert [e.data["request"]["state"] for e in await harness.published("referral.info_request_closed")] == [
        "closed"
    ]


async def test_a_site_question_replayed_under_another_consumer_group_opens_no_second_request(
    harness: HandlerHarness,
) -> None:
    """The request itself knows its question (its source event id), as the timeline knows its events."""
    rid = await received(harness)
    question = envelope(rid, builders.info_requested(clinic_id=CLINIC), minutes(1))
    await harness.deliver(question)
    async with harness.db.session() as session:
        await session.execute(delete(ProcessedEvent))
    await harness.deliver(question, envelope(rid, events.screened(), minutes(2)))
    [request] = await requests(harness, rid)
    assert request.state == "open"
    assert len(await harness.published("referral.info_request_opened")) == 1
    assert harness.dead_letters.letters == []


async def test_events_that_can_neither_open_nor_close_a_request_do_not_read_them(
    harness: HandlerHarness,
) -> None:
    """Routings and notices of a referral the clinic can still amend: no read of its requests; once it
    is accepted, they are read (and the open one cancelled)."""
    rid = await received(harness)
    await harness.deliver(envelope(rid, builders.info_requested(clinic_id=CLINIC), minutes(1)))
    statements: list[str] = []

    def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    sync_engine = harness.db.engine.sync_engine
    event.listen(sync_engine, "before_cursor_execute", seen)
    try:
        await harness.deliver(
            envelope(rid, events.screened(), minutes(2)),
            envelope(rid, events.routed(), minutes(3)),
            envelope(rid, events.notified(), minutes(4)),
        )
        assert not [s for s in statements if "FROM information_request" in s]
        await harness.deliver(envelope(rid, events.site_decided("accepted"), minutes(5)))
        assert [s for s in statements if "FROM information_request" in s]
    finally:
        event.remove(sync_engine, "before_cursor_execute", seen)
    [request] = await requests(harness, rid)
    assert (request.state, request.outcome) == ("closed", "cancelled")


async def test_a_question_about_another_clinics_referral_is_refused(harness: HandlerHarness) -> None:
    rid = await received(harness)
    await harness.deliver(envelope(rid, builders.info_requested(clinic_id="OTHER"), T + timedelta(minutes=1)))
    assert await requests(harness, rid) == []
    assert len(harness.dead_letters.letters) == 1
