"""Eligibility's handlers: screening each revision once, late revisions, poison, site access."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from sqlmodel import col, select

from services.eligibility import store
from services.eligibility.config import EligibilitySettings
from services.eligibility.consumers import EligibilityHandlers
from shared.events import ReferralScreened
from tests.support.events import CLINIC, envelope, routed, site, site_decided, submitted
from tests.support.handlers import HandlerHarness, handler_harness

NYC, BOS = site("NYC1"), site("BOS1", city="Boston")


@pytest.fixture
async def harness() -> AsyncIterator[HandlerHarness]:
    settings = EligibilitySettings()
    ruleset = settings.load_ruleset()
    handlers = EligibilityHandlers(ruleset, settings.study(ruleset)).registry()
    async with handler_harness(handlers, store.TABLES) as harness:
        yield harness


# --- screening ----------------------------------------------------------------------------------------


async def test_a_submission_is_screened_once_however_often_it_arrives(harness: HandlerHarness) -> None:
    rid = uuid.uuid4()
    event = submitted(rid)
    await harness.deliver(event, event)
    await harness.deliver(event)
    [screened] = await harness.published("referral.screened")
    data = screened.payload()
    assert isinstance(data, ReferralScreened)
    assert (screened.referral_id, data.revision, data.clinic_id) == (rid, 1, CLINIC)
    assert (data.decision, data.routable) == ("eligible", True)
    assert harness.position("referral.submitted") == 3
    assert harness.dead_letters.letters == []


async def test_the_trace_and_the_snapshot_pass_through_to_the_screening(harness: HandlerHarness) -> None:
    trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    await harness.deliver(submitted(uuid.uuid4(), trace=trace))
    [screened] = await harness.published()
    data = screened.payload()
    assert isinstance(data, ReferralScreened)
    assert (screened.producer, screened.trace) == ("eligibility", trace)
    assert (data.age_years, data.postal_code, data.country, data.consent_to_contact) == (
        58,
        "10021",
        "US",
        True,
    )
    assert data.referrer.email == "asmith@clinic.example.org"


async def test_an_ineligible_referral_is_published_not_routable(harness: HandlerHarness) -> None:
    await harness.deliver(submitted(uuid.uuid4(), age=70, ecog=None))
    [screened] = await harness.published("referral.screened")
    data = screened.payload()
    assert isinstance(data, ReferralScreened)
    assert (data.decision, data.routable) == ("ineligible", False)
    verdicts = {c.id: (c.verdict, c.reason) for c in data.criteria}
    assert verdicts["age"] == ("not_met", "age 70 on the referral day is outside 18 to 65")
    assert verdicts["ecog"] == ("unknown", "ecog not given")


async def test_an_amendment_is_screened_again_under_its_revision(harness: HandlerHarness) -> None:
    rid = uuid.uuid4()
    await harness.deliver(submitted(rid, ecog=3))
    await harness.deliver(submitted(rid, revision=2, ecog=1))
    events = [e.payload() for e in await harness.published("referral.screened")]
    assert [(e.revision, e.decision) for e in events if isinstance(e, ReferralScreened)] == [
        (1, "ineligible"),
        (2, "eligible"),
    ]
    async with harness.db.session() as session:
        rows = sorted(await store.assessments_of(session, rid), key=lambda a: a.revision)
    assert [r.published for r in rows] == [True, True] and rows[0].input_hash != rows[1].input_hash


async def test_a_late_revision_is_stored_but_not_published(harness: HandlerHarness) -> None:
    rid = uuid.uuid4()
    await harness.deliver(submitted(rid, revision=2))
    await harness.deliver(submitted(rid, revision=1, ecog=3))
    published = [e.payload() for e in await harness.published("referral.screened")]
    assert [p.revision for p in published if isinstance(p, ReferralScreened)] == [2]
    async with harness.db.session() as session:
        rows = sorted(await store.assessments_of(session, rid), key=lambda a: a.revision)
    assert [(r.revision, r.decision, r.published) for r in rows] == [
        (1, "ineligible", False),
        (2, "eligible", True),
    ]


async def test_the_same_revision_under_a_new_event_id_is_not_assessed_twice(harness: HandlerHarness) -> None:
    rid = uuid.uuid4()
    first, again = submitted(rid), submitted(rid)
    assert first.id != again.id
    await harness.deliver(first, again)
    async with harness.db.session() as session:
        assert [a.source_event_id for a in await store.assessments_of(session, rid)] == [first.id]
    assert len(await harness.published()) == 1
    assert harness.dead_letters.letters == []


async def test_the_same_revision_with_other_content_is_dead_lettered(harness: HandlerHarness) -> None:
    rid = uuid.uuid4()
    first, conflicting = submitted(rid), submitted(rid, ecog=4)
    await harness.deliver(first, conflicting)
    [letter] = harness.dead_letters.letters
    assert "already assessed from a different input" in letter.error
    assert letter.value() == conflicting.to_bytes()
    async with harness.db.session() as session:
        assert [a.source_event_id for a in await store.assessments_of(session, rid)] == [first.id]
    assert harness.position("referral.submitted") == 2


async def test_an_unreadable_clinical_block_is_dead_lettered_and_the_partition_moves_on(
    harness: HandlerHarness,
) -> None:
    bad, good = submitted(uuid.uuid4(), ecog="seven"), submitted(uuid.uuid4())
    await harness.deliver(bad, good)
    [letter] = harness.dead_letters.letters
    assert letter.error.startswith("PoisonMessage: unreadable clinical block: clinical.ecog")
    assert letter.value() == bad.to_bytes()
    assert [e.referral_id for e in await harness.published()] == [good.referral_id]
    assert harness.position("referral.submitted") == 2


async def test_an_unreadable_record_is_dead_lettered(harness: HandlerHarness) -> None:
    await harness.deliver(("referral.submitted", b"{not json"))
    [letter] = harness.dead_letters.letters
    assert letter.error.startswith("JSONDecodeError")
    assert harness.position("referral.submitted") == 1


# --- site access --------------------------------------------------------------------------------------


async def access(
    harness: HandlerHarness, rid: uuid.UUID
) -> tuple[str | None, dict[str, tuple[bool, bool, int, int]]]:
    """The assigned site, and each site's row as (routed, declined, revision, rank)."""
    async with harness.db.session() as session:
        assigned = await store.assigned_site(session, rid)
        rows = (
            await session.execute(
                select(store.SiteAccessRow).where(col(store.SiteAccessRow.referral_id) == rid)
            )
        ).scalars()
        return assigned, {r.site_code: (r.routed, r.declined, r.revision, r.rank) for r in rows}


async def test_a_routing_gives_its_site_access_and_no_other(harness: HandlerHarness) -> None:
    rid = uuid.uuid4()
    await harness.deliver(envelope(rid, routed(site=NYC)))
    assert await access(harness, rid) == ("NYC1", {"NYC1": (True, False, 1, 1)})
    assert await harness.published() == [], "routings publish nothing"


async def test_a_decline_revokes_access_and_the_next_routing_grants_it_to_the_next_site(
    harness: HandlerHarness,
) -> None:
    rid = uuid.uuid4()
    await harness.deliver(envelope(rid, routed(site=NYC)))
    await harness.deliver(envelope(rid, site_decided("declined", "full", site_code="NYC1")))
    assert (await access(harness, rid))[0] is None
    await harness.deliver(envelope(rid, routed(site=BOS, rank=2)))
    assert await access(harness, rid) == (
        "BOS1",
        {"NYC1": (True, True, 1, 1), "BOS1": (True, False, 1, 2)},
    )


@pytest.mark.parametrize("decision", ["accepted", "closed"])
async def test_a_site_that_accepts_or_closes_keeps_access(harness: HandlerHarness, decision: str) -> None:
    rid = uuid.uuid4()
    await harness.deliver(envelope(rid, routed(site=NYC)))
    await harness.deliver(envelope(rid, site_decided(decision, site_code="NYC1")))
    assert await access(harness, rid) == ("NYC1", {"NYC1": (True, False, 1, 1)})


async def test_a_decline_that_overtook_its_routing_keeps_access_revoked(harness: HandlerHarness) -> None:
    """Routed and site_decided are different topics: they may be consumed in either order."""
    rid = uuid.uuid4()
    await harness.deliver(envelope(rid, site_decided("declined", site_code="NYC1")))
    await harness.deliver(envelope(rid, routed(site=NYC)))
    assert await access(harness, rid) == (None, {"NYC1": (True, True, 1, 1)})


async def test_an_older_routing_arriving_last_never_grants_access(harness: HandlerHarness) -> None:
    rid = uuid.uuid4()
    await harness.deliver(envelope(rid, site_decided("declined", site_code="NYC1")))
    await harness.deliver(envelope(rid, routed(site=BOS, rank=2)))
    await harness.deliver(envelope(rid, routed(site=NYC, rank=1)))  # the older routing, arriving last
    assigned, rows = await access(harness, rid)
    assert assigned == "BOS1"
    assert rows["NYC1"] == (True, True, 1, 1)


async def test_the_highest_revision_and_rank_of_a_site_wins(harness: HandlerHarness) -> None:
    """A re-screen publishes the routing again under the new revision; the late first copy must not
    take the row back to revision 1, or an older routing elsewhere would look newer."""
    rid = uuid.uuid4()
    await harness.deliver(envelope(rid, routed(revision=2, site=NYC, rank=1)))
    await harness.deliver(envelope(rid, routed(revision=1, site=NYC, rank=1)))
    await harness.deliver(envelope(rid, routed(revision=1, site=BOS, rank=2)))
    assert await access(harness, rid) == (
        "NYC1",
        {"NYC1": (True, False, 2, 1), "BOS1": (True, False, 1, 2)},
    )


async def test_a_routing_and_its_decline_in_one_poll_end_as_one_after_the_other(
    harness: HandlerHarness,
) -> None:
    rid = uuid.uuid4()
    decline = envelope(rid, site_decided("declined", site_code="NYC1"))
    await harness.deliver(
        envelope(rid, routed(site=NYC)), decline, envelope(rid, routed(site=BOS, rank=2)), decline
    )
    assert await access(harness, rid) == (
        "BOS1",
        {"NYC1": (True, True, 1, 1), "BOS1": (True, False, 1, 2)},
    )
    assert harness.dead_letters.letters == []
    assert (harness.position("referral.routed"), harness.position("referral.site_decided")) == (2, 2)
