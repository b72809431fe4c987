"""Routing on real PostgreSQL: nearest free site, declines, waitlist, withdrawals, re-screens."""

from __future__ import annotations

import uuid

import pytest

from services.site_router import sites
from services.site_router.domain import SiteStatus
from services.site_router.schemas import SiteUpdate
from tests.integration.site_router.conftest import NEAREST_FIRST, CommandKit

pytestmark = pytest.mark.integration


@pytest.fixture
def database_url(any_database_url: str) -> str:
    """Every test here runs on PostgreSQL and on SQLite."""
    return any_database_url


async def test_nearest_recruiting_site_with_room_gets_the_referral(kit: CommandKit) -> None:
    await kit.add_sites({"WCM": 1, "DFCI": 1, "MCC": 1, "MDACC": 1})
    first, second = await kit.screen(), await kit.screen()
    assert (await kit.site_of(first), await kit.site_of(second)) == ("WCM", "DFCI")

    [(kind, routed)] = await kit.events_of(first)
    assert kind == "referral.routed"
    assert routed["site"]["code"] == "WCM" and routed["rank"] == 1
    assert 0 < routed["distance_km"] < 2  # 10021 to 10065: the same neighbourhood
    assert routed["criteria_to_confirm"] == ["ecog"]
    assert "ecog (ecog not given)" in routed["note"] and "other criteria may apply" in routed["note"]
    assert routed["decision"] == "needs_review" and routed["consent_to_contact"] is True
    assert routed["referrer"]["email"] == "asmith@clinic.example.org"


async def test_paused_closed_and_full_sites_are_skipped(kit: CommandKit) -> None:
    await kit.add_sites({"WCM": 2}, status="paused")
    await kit.add_sites({"DFCI": 2}, status="closed")
    await kit.add_sites({"MCC": 0, "MDACC": 1})
    assert await kit.site_of(await kit.screen()) == "MDACC"
    waiting = await kit.screen()
    assert await kit.site_of(waiting) is None
    assert await kit.waitlisted() == [waiting]
    assert (await kit.events_of(waiting))[0][0] == "referral.waitlisted"


async def test_decline_sends_the_referral_to_the_next_site_never_back(kit: CommandKit) -> None:
    await kit.add_sites(dict.fromkeys(NEAREST_FIRST, 2))
    referral = await kit.screen()
    for declining, expected_next in zip(NEAREST_FIRST, [*NEAREST_FIRST[1:], None], strict=True):
        assert await kit.site_of(referral) == declining
        await kit.decline(declining, referral, reason=f"{declining} cannot")
        assert await kit.site_of(referral) == expected_next

    events = await kit.events_of(referral)
    routed = [(d["site"]["code"], d["rank"]) for kind, d in events if kind == "referral.routed"]
    assert routed == [("WCM", 1), ("DFCI", 2), ("MCC", 3), ("MDACC", 4)]
    decided = [d for kind, d in events if kind == "referral.site_decided"]
    assert [(d["site_code"], d["decision"], d["reason"]) for d in decided] == [
        (code, "declined", f"{code} cannot") for code in NEAREST_FIRST
    ]
    last_kind, last = (await kit.events_of(referral))[-1]
    assert last_kind == "referral.unroutable"
    assert last["reason"] == "declined by every site (DFCI, MCC, MDACC, WCM)"
    assert (await kit.referral(referral)).state == "unroutable"
    assert await kit.open_counts() == dict.fromkeys(NEAREST_FIRST, 0)


async def test_a_declined_referral_waits_rather_than_return_to_the_site_that_declined(
    kit: CommandKit,
) -> None:
    await kit.add_sites({"WCM": 1, "DFCI": 1})
    declined, other = await kit.screen(), await kit.screen()  # WCM, DFCI: both full now
    await kit.decline("WCM", declined)
    assert await kit.site_of(declined) is None and await kit.waitlisted() == [declined]
    assert await kit.open_counts() == {"WCM": 0, "DFCI": 1}  # WCM's slot stays free for someone else

    newcomer = await kit.screen()
    assert await kit.site_of(newcomer) == "WCM"
    await kit.close("DFCI", other)  # DFCI frees: the declined referral, first in line, gets it
    assert await kit.site_of(declined) == "DFCI"
    assert [d["rank"] for k, d in await kit.events_of(declined) if k == "referral.routed"] == [1, 2]


async def test_waitlist_is_first_in_first_out_and_drains_on_every_kind_of_freed_slot(kit: CommandKit) -> None:
    await kit.add_sites({"WCM": 1, "DFCI": 1})
    holders = [await kit.screen(), await kit.screen()]
    waiting = [await kit.screen() for _ in range(5)]
    assert await kit.waitlisted() == waiting

    await kit.decline("WCM", holders[0])  # a decline: the declining site's slot goes to the oldest
    assert await kit.site_of(waiting[0]) == "WCM"
    await kit.close("DFCI", holders[1], enrolled=True)  # a close
    assert await kit.site_of(waiting[1]) == "DFCI"
    await kit.withdraw(waiting[0])  # a withdrawal (WCM's referral)
    assert await kit.site_of(waiting[2]) == "WCM"
    assert await kit.waitlisted() == [waiting[3], waiting[4], holders[0]]

    async with kit.db.session() as session:  # a capacity increase
        await sites.update_site(session, "DFCI", SiteUpdate(capacity=2))
    assert await kit.site_of(waiting[3]) == "DFCI"
    async with kit.db.session() as session:  # a paused site reopening with room
        await sites.set_status(session, "WCM", SiteStatus.PAUSED)
        await sites.update_site(session, "WCM", SiteUpdate(capacity=2))
    assert await kit.site_of(waiting[4]) is None
    async with kit.db.session() as session:
        await sites.set_status(session, "WCM", SiteStatus.RECRUITING)
    assert await kit.site_of(waiting[4]) == "WCM"
    assert await kit.waitlisted() == [holders[0]]  # WCM declined it; DFCI is full
    assert await kit.active_per_site() == await kit.open_counts()


async def test_withdrawal_frees_the_slot_and_leaves_the_waitlist(kit: CommandKit) -> None:
    await kit.add_sites({"WCM": 1})
    routed, waiting = await kit.screen(), await kit.screen()
    await kit.withdraw(waiting)
    assert await kit.waitlisted() == []
    await kit.withdraw(routed)
    assert await kit.open_counts() == {"WCM": 0}
    assert (await kit.referral(routed)).state == "withdrawn"
    assert await kit.screen(routed, revision=2) == routed  # a late screening of a withdrawn referral
    assert await kit.site_of(routed) is None


async def test_withdrawal_before_the_screening_arrives_wins(kit: CommandKit) -> None:
    await kit.add_sites({"WCM": 1})
    referral = uuid.uuid4()
    await kit.withdraw(referral)
    await kit.screen(referral)
    assert await kit.site_of(referral) is None
    assert await kit.open_counts() == {"WCM": 0}
    assert await kit.events_of(referral) == []


async def test_unknown_postal_code_or_country_is_unroutable_with_the_reason(kit: CommandKit) -> None:
    await kit.add_sites({"WCM": 1})
    unknown = await kit.screen(postal_code="00000")
    foreign = await kit.screen(postal_code="75001", country="FR")
    [(kind, data)] = await kit.events_of(unknown)
    assert kind == "referral.unroutable" and data["reason"] == "unknown postal code '00000' for US"
    [(kind, data)] = await kit.events_of(foreign)
    assert kind == "referral.unroutable" and data["reason"].startswith("country 'FR' is not supported")
    assert (await kit.referral(unknown)).reason == "unknown postal code '00000' for US"


async def test_not_routable_is_recorded_without_an_event(kit: CommandKit) -> None:
    await kit.add_sites({"WCM": 1})
    referral = await kit.screen(routable=False, decision="ineligible")
    assert await kit.events_of(referral) == []
    record = await kit.referral(referral)
    assert record.state == "not_routed" and record.screening is not None


async def test_rescreen_keeps_the_site_while_routable_and_releases_it_when_not(kit: CommandKit) -> None:
    await kit.add_sites({"WCM": 1, "DFCI": 1})
    referral = await kit.screen()
    waiting = [await kit.screen(), await kit.screen()]  # DFCI, then the waitlist
    await kit.screen(referral, revision=2, unknown=())  # amended: still routable, keeps WCM
    assert await kit.site_of(referral) == "WCM"
    again = [d for k, d in await kit.events_of(referral) if k == "referral.routed"]
    assert [(d["site"]["code"], d["revision"], d["rank"], d["criteria_to_confirm"]) for d in again] == [
        ("WCM", 1, 1, ["ecog"]),
        ("WCM", 2, 1, []),
    ]
    await kit.screen(referral, revision=1, routable=False)  # an older revision: ignored
    assert await kit.site_of(referral) == "WCM"
    await kit.screen(referral, revision=3, routable=False, decision="ineligible")
    assert await kit.site_of(referral) is None
    assert (await kit.referral(referral)).state == "not_routed"
    assert await kit.site_of(waiting[1]) == "WCM"  # the freed slot went to the waitlist
    await kit.screen(referral, revision=4)  # routable again: routed like a new referral
    assert await kit.waitlisted() == [referral]


async def test_redelivered_screening_changes_nothing(kit: CommandKit) -> None:
    """The consumer loop skips a redelivered event id; a new event for the same revision re-routes
    nothing either: the referral keeps its site and only the routed event repeats."""
    await kit.add_sites({"WCM": 2})
    referral = await kit.screen()
    await kit.screen(referral)
    assert await kit.open_counts() == {"WCM": 1}
    assert await kit.active_per_site() == {"WCM": 1}
