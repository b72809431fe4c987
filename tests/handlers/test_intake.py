"""Intake's handler: status events on the referral's timeline, the status derived from all of it."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import delete

from services.intake import store
from services.intake.consumers import HANDLERS
from services.intake.domain import Status
from shared.consumer import ProcessedEvent
from tests.support import events
from tests.support.events import CLINIC, REFERRER, envelope
from tests.support.handlers import HandlerHarness, handler_harness

T = datetime(2026, 11, 10, 9, 0, tzinfo=UTC)
"""When the referrals are received; status events follow it."""


def minutes(n: float) -> datetime:
    return T + timedelta(minutes=n)


@pytest.fixture
async def harness() -> AsyncIterator[HandlerHarness]:
    async with handler_harness(HANDLERS, store.TABLES) as harness:
        yield harness


async def received(harness: HandlerHarness, *, revisions: int = 1, clinic_id: str = CLINIC) -> uuid.UUID:
    """A referral as intake stores it on submission (and on each amendment): the row and its
    ``received`` entries, one a minute before ``T`` per revision."""
    referral = store.NewReferral(
        clinic_id=clinic_id,
        client_id="clinic-a-intake",
        clinic_reference=f"CLN-{uuid.uuid4().hex[:8]}",
        study="UCART123-AMELI-01",
        referral_day=T.date(),
        given_name="Maria",
        family_name="Lopez",
        date_of_birth=date(1968, 3, 14),
        postal_code="10021",
        country="US",
        consent_to_contact=True,
        referrer_name=REFERRER.name,
        referrer_email=REFERRER.email,
        clinical=events.clinical(),
    )
    async with harness.db.session() as session:
        for revision in range(1, revisions + 1):
            entry = store.NewEntry(
                referral_id=referral.id,
                event_id=uuid.uuid4(),
                event_type="referral.submitted" if revision == 1 else "referral.amended",
                status=Status.RECEIVED.value,
                revision=revision,
                occurred_at=T - timedelta(minutes=revisions - revision + 1),
                source="intake",
                reason="submitted",
            )
            stored: store.AnyReferral = referral
            if revision > 1:  # written by the first revision's record: amended as a stored referral
                found = await store.get_referral(session, referral.id)
                assert found is not None
                found.revision = revision
                stored = found
            await store.record(session, stored, entry)
            await store.add_entries(session, [(stored, entry)])
    return referral.id


@dataclass
class View:
    status: str
    status_at: datetime | None
    decision: dict[str, Any] | None
    site: dict[str, Any] | None
    timeline: list[store.TimelineEntry]

    @property
    def statuses(self) -> list[str | None]:
        return [e.status for e in self.timeline]


async def view(harness: HandlerHarness, rid: uuid.UUID) -> View:
    async with harness.db.session() as session:
        referral = await store.get_referral(session, rid)
        assert referral is not None
        timeline = list(await store.timeline(session, rid))
    status_at = referral.status_at.replace(tzinfo=UTC) if referral.status_at else None
    return View(referral.status, status_at, referral.decision, referral.site, timeline)


async def test_events_arriving_out_of_order_are_kept_in_order_of_occurrence(harness: HandlerHarness) -> None:
    rid = await received(harness)
    await harness.deliver(envelope(rid, events.routed(), minutes(2)))
    assert (await view(harness, rid)).status == "routed"

    await harness.deliver(envelope(rid, events.screened(), minutes(1)))
    seen = await view(harness, rid)
    assert seen.statuses == ["received", "screened", "routed"]
    assert [e.source for e in seen.timeline] == ["intake", "eligibility", "site_router"]
    assert (seen.status, seen.status_at) == ("routed", minutes(2))
    assert seen.decision is not None and (seen.decision["decision"], seen.decision["revision"]) == (
        "eligible",
        1,
    )
    assert [c["id"] for c in seen.decision["criteria"]] == ["rr_aml", "cd123_positive"]
    assert seen.site == {
        "code": "US-NY-01", "name": "Memorial Hospital", "city": "New York", "distance_km": 3.2, "rank": 1,
    }  # fmt: skip


async def test_a_stale_event_goes_on_the_timeline_without_overwriting_a_newer_status(
    harness: HandlerHarness,
) -> None:
    rid = await received(harness)
    await harness.deliver(
        envelope(rid, events.screened(), minutes(1)), envelope(rid, events.routed(), minutes(2))
    )
    await harness.deliver(envelope(rid, events.waitlisted(), minutes(1.5)))
    seen = await view(harness, rid)
    assert seen.statuses == ["received", "screened", "waitlisted", "routed"]
    assert seen.status == "routed" and seen.site is not None, "a stale event overwrote a newer status"


async def test_a_decline_then_a_routing_to_the_next_site(harness: HandlerHarness) -> None:
    rid = await received(harness)
    second = events.SITE.model_copy(update={"code": "US-NY-02", "name": "Mount Sinai"})
    await harness.deliver(
        envelope(rid, events.screened(), minutes(1)),
        envelope(rid, events.routed(), minutes(2)),
        envelope(rid, events.notified(), minutes(3)),
    )
    await harness.deliver(envelope(rid, events.site_decided("declined", "no capacity after all"), minutes(4)))
    assert (await view(harness, rid)).status == "declined"
    await harness.deliver(envelope(rid, events.routed(site=second, rank=2), minutes(5)))
    seen = await view(harness, rid)
    assert seen.statuses == ["received", "screened", "routed", "notified", "declined", "routed"]
    assert seen.timeline[4].reason == "no capacity after all"
    assert seen.status == "routed" and seen.site is not None
    assert (seen.site["code"], seen.site["rank"]) == ("US-NY-02", 2)


async def test_an_accepted_referral_only_closes(harness: HandlerHarness) -> None:
    rid = await received(harness)
    await harness.deliver(
        envelope(rid, events.routed(), minutes(1)),
        envelope(rid, events.site_decided("accepted"), minutes(2)),
        envelope(rid, events.waitlisted(), minutes(3)),
    )
    assert (await view(harness, rid)).status == "accepted"
    await harness.deliver(envelope(rid, events.site_decided("closed", "enrolled"), minutes(4)))
    await harness.deliver(envelope(rid, events.routed(rank=2), minutes(5)))
    seen = await view(harness, rid)
    assert (seen.status, seen.status_at) == ("closed", minutes(4))
    assert len(seen.timeline) == 6, "every event is history, whether or not it changes the status"


async def test_a_duplicate_is_recorded_once(harness: HandlerHarness) -> None:
    rid = await received(harness)
    routed, notice = envelope(rid, events.routed(), minutes(1)), envelope(rid, events.notified(), minutes(2))
    await harness.deliver(routed, notice, notice)
    await harness.deliver(notice)
    seen = await view(harness, rid)
    assert seen.statuses == ["received", "routed", "notified"]
    assert seen.timeline[2].details["notification"]["message_id"] == notice.data["message_id"]
    assert harness.position("referral.notified") == 3


async def test_an_event_already_on_the_timeline_is_not_added_again_under_another_consumer_group(
    harness: HandlerHarness,
) -> None:
    """A replay under a new group id passes the processed-id check: the timeline itself knows it."""
    rid = await received(harness)
    event = envelope(rid, events.routed(), minutes(1))
    await harness.deliver(event)
    async with harness.db.session() as session:
        await session.execute(delete(ProcessedEvent))
    await harness.deliver(event, envelope(rid, events.notified(), minutes(2)))
    assert (await view(harness, rid)).statuses == ["received", "routed", "notified"]
    assert harness.dead_letters.letters == []


async def test_events_about_an_older_revision_do_not_change_the_status(harness: HandlerHarness) -> None:
    rid = await received(harness, revisions=2)
    await harness.deliver(envelope(rid, events.screened(revision=1), minutes(1)))
    late = await view(harness, rid)
    assert (late.status, late.decision) == ("received", None)
    assert [(e.status, e.revision) for e in late.timeline] == [
        ("received", 1),
        ("received", 2),
        ("screened", 1),
    ]

    await harness.deliver(envelope(rid, events.screened(revision=2, routable=False), minutes(2)))
    current = await view(harness, rid)
    assert current.status == "not_routed"
    assert current.decision is not None and current.decision["revision"] == 2


async def test_an_event_for_an_unknown_referral_is_dead_lettered_and_the_rest_go_on(
    harness: HandlerHarness,
) -> None:
    rid = await received(harness)
    stranger = envelope(uuid.uuid4(), events.unroutable(), minutes(1))
    await harness.deliver(stranger, envelope(rid, events.unroutable(), minutes(1)))
    seen = await view(harness, rid)
    assert seen.status == "unroutable" and seen.timeline[-1].reason == "unknown postal code 99999 in US"
    [letter] = harness.dead_letters.letters
    assert letter.error.startswith("PoisonMessage: no referral")
    assert (letter.topic, letter.value()) == ("referral.unroutable", stranger.to_bytes())
    assert harness.position("referral.unroutable") == 2


async def test_an_event_naming_another_clinic_is_dead_lettered(harness: HandlerHarness) -> None:
    rid = await received(harness)
    theirs = envelope(rid, events.screened(clinic_id="CLINIC-B"), minutes(1))
    await harness.deliver(theirs, envelope(rid, events.routed(), minutes(2)))
    [letter] = harness.dead_letters.letters
    assert "another clinic" in letter.error and letter.value() == theirs.to_bytes()
    assert (await view(harness, rid)).statuses == ["received", "routed"]


async def test_a_burst_for_several_referrals_is_folded_once_per_referral(harness: HandlerHarness) -> None:
    """Many events in one transaction (one handler call): each referral must come out as if they had
    come one by one."""
    rids = [await received(harness) for _ in range(3)]
    burst = []
    for rid in rids:
        burst += [
            envelope(rid, events.screened(), minutes(1)),
            envelope(rid, events.routed(), minutes(2)),
            envelope(rid, events.notified("site"), minutes(3)),
            envelope(rid, events.notified("patient", "patient_routed"), minutes(3)),
        ]
    await harness.deliver(*reversed(burst), burst[0])  # newest first, and one redelivered
    for rid in rids:
        seen = await view(harness, rid)
        assert seen.statuses == ["received", "screened", "routed", "notified", "notified"]
        assert seen.status == "notified" and seen.status_at == minutes(3)
        assert seen.site is not None and seen.site["code"] == "US-NY-01"
        assert seen.decision is not None and seen.decision["decision"] == "eligible"
    assert harness.dead_letters.letters == []


async def test_a_time_without_a_zone_is_taken_as_utc(harness: HandlerHarness) -> None:
    rid = await received(harness)
    naive = envelope(rid, events.routed(), minutes(1).replace(tzinfo=None))
    await harness.deliver(naive, envelope(rid, events.screened(), minutes(0.5)))
    assert (await view(harness, rid)).statuses == ["received", "screened", "routed"]


async def test_each_new_entry_is_numbered_in_its_clinics_feed_and_published_for_the_clinic(
    harness: HandlerHarness,
) -> None:
    first, second = await received(harness), await received(harness)
    other = await received(harness, clinic_id="CLINIC-B")
    await harness.deliver(
        envelope(first, events.screened(), minutes(1)),
        envelope(second, events.screened(routable=False), minutes(1)),
        envelope(first, events.routed(), minutes(2)),
        envelope(other, events.screened(clinic_id="CLINIC-B"), minutes(1)),
    )
    async with harness.db.session() as session:
        feed = list(await store.changes(session, CLINIC, after=0, limit=100))
        others = list(await store.changes(session, "CLINIC-B", after=0, limit=100))
    # received(harness) records the received entries directly (numbered 1, 2); the events follow in order.
    assert [(e.referral_id, e.event_type, e.seq) for e in feed] == [
        (first, "referral.submitted", 1),
        (second, "referral.submitted", 2),
        (first, "referral.screened", 3),
        (second, "referral.screened", 4),
        (first, "referral.routed", 5),
    ]
    assert [(e.seq, e.referral_status) for e in others] == [(1, "received"), (2, "screened")]
    assert feed[2].referral_status == "routed", "stamped with the status once the transaction folded"

    published = await harness.published("referral.status_changed")
    changes = [(e.referral_id, e.payload()) for e in published]
    assert [
        (rid, data.seq, data.source_event_type, data.status) for rid, data in changes if rid != other
    ] == [
        (first, 3, "referral.screened", "routed"),
        (second, 4, "referral.screened", "not_routed"),
        (first, 5, "referral.routed", "routed"),
    ]
    for envelope_ in published:
        assert "Maria" not in envelope_.model_dump_json() and "1968" not in envelope_.model_dump_json()


async def test_a_redelivered_event_is_not_numbered_or_published_twice(harness: HandlerHarness) -> None:
    rid = await received(harness)
    event = envelope(rid, events.screened(), minutes(1))
    await harness.deliver(event)
    await harness.deliver(event)
    assert len(await harness.published("referral.status_changed")) == 1
    async with harness.db.session() as session:
        assert [e.seq for e in await store.changes(session, CLINIC, after=0, limit=100)] == [1, 2]


async def test_the_sites_steps_to_enrolment_go_on_the_timeline_and_the_outcome_ends_the_referral(
    harness: HandlerHarness,
) -> None:
    rid = await received(harness)
    await harness.deliver(
        envelope(rid, events.routed(), minutes(1)),
        envelope(rid, events.site_decided("accepted"), minutes(2)),
        envelope(rid, events.progressed("contacted"), minutes(3)),
        envelope(rid, events.progressed("screening_scheduled"), minutes(4)),
    )
    seen = await view(harness, rid)
    assert (seen.status, seen.status_at) == ("screening_scheduled", minutes(4))
    assert seen.timeline[-1].reason == "screening scheduled for 2026-12-14 at site US-NY-01"
    assert seen.timeline[-1].details["progress"]["screening_date"] == "2026-12-14"
    assert seen.site is not None and seen.site["code"] == "US-NY-01", "the site stays the accepting one"

    await harness.deliver(
        envelope(rid, events.progressed("consented"), minutes(5)),
        envelope(rid, events.progressed("enrolled"), minutes(6)),
    )
    await harness.deliver(envelope(rid, events.progressed("not_enrolled"), minutes(7)))  # after the outcome
    await harness.deliver(envelope(rid, events.waitlisted(), minutes(8)))
    seen = await view(harness, rid)
    assert seen.statuses == [
        "received", "routed", "accepted", "contacted", "screening_scheduled", "consented", "enrolled",
        "not_enrolled", "waitlisted",
    ]  # fmt: skip
    assert (seen.status, seen.status_at) == ("enrolled", minutes(6)), "an outcome is final"
    assert seen.timeline[6].reason == "enrolled at site US-NY-01 (study subject UCART123-0042)"
    changes = await harness.published("referral.status_changed")
    assert [(c.data["entry_status"], c.data["status"]) for c in changes][-3:] == [
        ("enrolled", "enrolled"),
        ("not_enrolled", "enrolled"),
        ("waitlisted", "enrolled"),
    ]


@pytest.mark.parametrize(
    ("outcome", "reason"),
    [
        ("screen_failed", "screen failed at site US-NY-01: blast count above the protocol's limit"),
        ("not_enrolled", "not enrolled at site US-NY-01: the patient chose another treatment"),
    ],
)
async def test_a_negative_outcome_after_any_step_ends_the_referral(
    harness: HandlerHarness, outcome: str, reason: str
) -> None:
    rid = await received(harness)
    await harness.deliver(
        envelope(rid, events.routed(), minutes(1)),
        envelope(rid, events.site_decided("accepted"), minutes(2)),
        envelope(rid, events.progressed(outcome), minutes(3)),
    )
    seen = await view(harness, rid)
    assert seen.status == outcome and seen.timeline[-1].reason == reason


async def test_a_step_without_acceptance_is_history_only(harness: HandlerHarness) -> None:
    rid = await received(harness)
    await harness.deliver(
        envelope(rid, events.routed(), minutes(1)), envelope(rid, events.progressed("contacted"), minutes(2))
    )
    seen = await view(harness, rid)
    assert seen.status == "routed" and seen.statuses[-1] == "contacted"
