"""Insights' handler: events into the fact rows, whatever their order and however often they arrive."""

from __future__ import annotations

import random
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from sqlmodel import select

from services.insights import consumers, store
from services.insights.config import InsightsSettings
from services.insights.domain import DateRange
from services.insights.queries import Queries
from shared.events import CriterionVerdict, Envelope, EventData
from tests.support import builders
from tests.support.builders import progressed, routed, screened, site, site_decided, submitted, unroutable
from tests.support.handlers import HandlerHarness, handler_harness

T0 = datetime(2026, 11, 10, 9, 0, tzinfo=UTC)
DAYS = DateRange(date(2026, 11, 1), date(2026, 11, 30))
A, B = site("SITE-A"), site("SITE-B")


@pytest.fixture
async def harness() -> AsyncIterator[HandlerHarness]:
    async with handler_harness(consumers.HANDLERS, store.TABLES) as harness:
        yield harness


def queries(harness: HandlerHarness) -> Queries:
    return Queries(harness.db, InsightsSettings(), clock=lambda: T0 + timedelta(days=30))


def at(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


def story(rid: uuid.UUID, *steps: tuple[float, EventData]) -> list[Envelope]:
    """A referral's events, each occurring ``hours`` after T0."""
    return [builders.wrap(data, rid, at=at(hours)) for hours, data in steps]


def enrolled_story(rid: uuid.UUID, clinic: str = "clinic-a") -> list[Envelope]:
    return story(
        rid,
        (0, submitted(clinic_id=clinic)),
        (0.1, screened(clinic_id=clinic)),
        (0.2, routed(clinic_id=clinic, site=A)),
        (5.2, site_decided("accepted", clinic_id=clinic, site_code=A.code)),
        (24, progressed("contacted", clinic_id=clinic, site_code=A.code)),
        (48, progressed("screening_scheduled", clinic_id=clinic, site_code=A.code)),
        (72, progressed("consented", clinic_id=clinic, site_code=A.code)),
        (96, progressed("enrolled", clinic_id=clinic, site_code=A.code)),
    )


def declined_everywhere_story(rid: uuid.UUID) -> list[Envelope]:
    return story(
        rid,
        (0, submitted()),
        (0.1, screened()),
        (0.2, routed(site=A)),
        (2.2, site_decided("declined", site_code=A.code, reason="no bed")),
        (2.3, routed(site=B, rank=2, distance_km=40.0)),
        (10.3, site_decided("declined", site_code=B.code, reason="no bed")),
        (10.4, unroutable(reason="every site declined")),
    )


async def facts(harness: HandlerHarness) -> list[dict[str, Any]]:
    """Every fact row, without the time it was last written."""
    async with harness.db.session() as session:
        referrals = (await session.execute(select(store.ReferralFact))).scalars().all()
        sites = (await session.execute(select(store.SiteFact))).scalars().all()
        criteria = (await session.execute(select(store.CriterionFact))).scalars().all()
    rows = [r.model_dump(exclude={"updated_at"}) for r in referrals]
    rows += [s.model_dump() for s in sites] + [c.model_dump() for c in criteria]
    return sorted(rows, key=repr)


def counts(items: list[Any]) -> dict[str, int]:
    return {item.step: item.count for item in items}


async def test_a_referral_that_enrols_goes_through_every_step(harness: HandlerHarness) -> None:
    await harness.deliver(*enrolled_story(uuid.uuid4()))
    funnel = await queries(harness).funnel(DAYS)
    assert [(s.step, s.count, s.conversion) for s in funnel.path] == [
        ("submitted", 1, None),
        ("screened", 1, 1.0),
        ("routed", 1, 1.0),
        ("accepted", 1, 1.0),
        ("contacted", 1, 1.0),
        ("screening_scheduled", 1, 1.0),
        ("consented", 1, 1.0),
        ("enrolled", 1, 1.0),
    ]
    assert counts(funnel.decisions) == {"eligible": 1, "needs_review": 0, "ineligible": 0}
    assert sum(counts(funnel.exits).values()) == 0
    assert funnel.in_progress == 0
    [a] = (await queries(harness).sites(DAYS)).sites
    assert (a.site_code, a.routed, a.accepted, a.enrolled, a.acceptance_rate) == ("SITE-A", 1, 1, 1, 1.0)
    assert a.first_decision_p50_hours == 5.0
    assert a.capacity_in_use == 0  # enrolment freed the slot


async def test_redelivered_events_change_nothing(harness: HandlerHarness) -> None:
    events = declined_everywhere_story(uuid.uuid4())
    await harness.deliver(*events)
    once = await facts(harness)
    await harness.deliver(*events, *events)  # the same poll twice over, and a poll again
    await harness.deliver(events[3])
    assert await facts(harness) == once
    funnel = await queries(harness).funnel(DAYS)
    assert counts(funnel.exits)["declined_by_every_site"] == 1
    assert funnel.submitted == 1
    [referral] = [row for row in once if "declined_sites" in row]
    assert referral["declined_sites"] == 2


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
async def test_any_order_of_arrival_ends_in_the_same_rows(harness: HandlerHarness, seed: int) -> None:
    """The topics are consumed independently: a referral's events can arrive in any order, one by one
    or together; the rows must end as if they had come in order."""
    rids = [uuid.uuid4(), uuid.uuid4()]
    events = enrolled_story(rids[0]) + declined_everywhere_story(rids[1])
    async with handler_harness(consumers.HANDLERS, store.TABLES) as in_order:
        for event in events:
            await in_order.deliver(event)
        expected = await facts(in_order)
    shuffled = events[:]
    random.Random(seed).shuffle(shuffled)
    half = len(shuffled) // 2
    await harness.deliver(*shuffled[:half])
    for event in shuffled[half:]:
        await harness.deliver(event)
    assert await facts(harness) == expected


async def test_a_late_older_screening_does_not_replace_the_current_one(harness: HandlerHarness) -> None:
    rid = uuid.uuid4()
    fails = [
        CriterionVerdict(id="age", verdict="not_met", reason="age 70"),
        CriterionVerdict(id="apl_or_cns", verdict="present", reason="diagnosis apl"),
    ]
    first = screened(routable=False, revision=1, criteria=fails)
    second = screened(revision=2)
    await harness.deliver(*story(rid, (0, submitted()), (5, second)))
    await harness.deliver(*story(rid, (1, first)))  # revision 1's screening arrives last
    funnel = await queries(harness).funnel(DAYS)
    assert counts(funnel.decisions) == {"eligible": 1, "needs_review": 0, "ineligible": 0}
    assert funnel.criteria == []  # revision 2 fails nothing
    assert counts(funnel.exits)["ineligible"] == 0


async def test_the_criteria_that_exclude_most_come_first_with_their_titles(harness: HandlerHarness) -> None:
    age = CriterionVerdict(id="age", verdict="not_met", reason="age 70")
    apl = CriterionVerdict(id="apl_or_cns", verdict="present", reason="diagnosis apl")
    unknown = CriterionVerdict(id="ecog", verdict="unknown", reason="ecog not given")
    for criteria in ([age, unknown], [age, apl], [unknown]):
        rid = uuid.uuid4()
        decision = "ineligible" if criteria != [unknown] else "needs_review"
        data = screened(routable=False, decision=decision, criteria=criteria)
        await harness.deliver(*story(rid, (0, submitted()), (1, data)))
    funnel = await queries(harness).funnel(DAYS)
    assert [(c.id, c.fails) for c in funnel.criteria] == [("age", 2), ("apl_or_cns", 1)]
    assert funnel.criteria[0].title == "Age 18 to 65 years."
    assert counts(funnel.exits)["ineligible"] == 2
    assert counts(funnel.exits)["held_for_review"] == 1


async def test_only_referrals_submitted_in_the_range_count(harness: HandlerHarness) -> None:
    inside, before, unseen = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    await harness.deliver(*enrolled_story(inside))
    await harness.deliver(builders.wrap(submitted(), before, at=datetime(2026, 10, 31, 23, 59, tzinfo=UTC)))
    await harness.deliver(builders.wrap(screened(), unseen, at=T0))  # its submission not consumed yet
    funnel = await queries(harness).funnel(DAYS)
    assert funnel.submitted == 1
    october = await queries(harness).funnel(DateRange(date(2026, 10, 1), date(2026, 10, 31)))
    assert october.submitted == 1
    assert october.path[1].count == 0


async def test_slots_in_use_follow_routing_declines_and_withdrawals(harness: HandlerHarness) -> None:
    holding, accepted, moved_on, withdrawn = (uuid.uuid4() for _ in range(4))
    await harness.deliver(*story(holding, (0, submitted()), (1, screened()), (2, routed(site=A))))
    await harness.deliver(
        *story(
            accepted,
            (0, submitted()),
            (1, screened()),
            (2, routed(site=A)),
            (3, site_decided("accepted", site_code=A.code)),
            (4, progressed("contacted", site_code=A.code)),
        )
    )
    await harness.deliver(
        *story(
            moved_on,
            (0, submitted()),
            (1, screened()),
            (2, routed(site=A)),
            (3, site_decided("declined", site_code=A.code)),
            (4, routed(site=B, rank=2)),
        )
    )
    await harness.deliver(
        *story(withdrawn, (0, submitted()), (1, screened()), (2, routed(site=B)), (3, builders.withdrawn()))
    )
    by_site = {s.site_code: s for s in (await queries(harness).sites(DAYS)).sites}
    assert (by_site["SITE-A"].capacity_in_use, by_site["SITE-B"].capacity_in_use) == (2, 1)
    assert (by_site["SITE-A"].routed, by_site["SITE-A"].accepted, by_site["SITE-A"].declined) == (3, 1, 1)
    assert by_site["SITE-A"].acceptance_rate == 0.5
    funnel = await queries(harness).funnel(DAYS)
    assert counts(funnel.exits)["withdrawn"] == 1
    assert funnel.in_progress == 3
    clinics = (await queries(harness).clinics(DAYS)).clinics
    assert [(c.clinic_id, c.submitted, c.routed, c.accepted, c.withdrawn) for c in clinics] == [
        ("clinic-a", 4, 4, 1, 1)
    ]


async def test_a_referral_routed_again_after_being_unroutable_is_not_an_exit(harness: HandlerHarness) -> None:
    rid = uuid.uuid4()
    await harness.deliver(
        *story(
            rid,
            (0, submitted()),
            (1, screened()),
            (2, unroutable()),
            (3, screened(revision=2)),
            (4, routed(revision=2, site=A)),
        )
    )
    funnel = await queries(harness).funnel(DAYS)
    assert counts(funnel.exits)["unroutable"] == 0
    assert funnel.in_progress == 1


async def test_the_site_outcomes_are_exits(harness: HandlerHarness) -> None:
    for step in ("screen_failed", "not_enrolled"):
        rid = uuid.uuid4()
        await harness.deliver(
            *story(
                rid,
                (0, submitted()),
                (1, screened()),
                (2, routed(site=A)),
                (3, site_decided("accepted", site_code=A.code)),
                (4, progressed(step, site_code=A.code)),
            )
        )
    funnel = await queries(harness).funnel(DAYS)
    assert (counts(funnel.exits)["screen_failed"], counts(funnel.exits)["not_enrolled"]) == (1, 1)
    assert counts(funnel.path)["accepted"] == 2
    assert counts(funnel.path)["contacted"] == 0
    [a] = (await queries(harness).sites(DAYS)).sites
    assert a.capacity_in_use == 0
