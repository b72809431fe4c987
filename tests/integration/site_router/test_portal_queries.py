"""The portal's reads on real PostgreSQL: a coordinator's queue over several sites, its tabs, one
referral's page and timeline, and that another site's referral is not found."""

from __future__ import annotations

import uuid

import pytest

from services.site_router.config import SiteRouterSettings
from services.site_router.domain import QueueTab
from services.site_router.queries import Queries
from shared.problems import NotFound
from tests.integration.site_router.conftest import CommandKit

pytestmark = pytest.mark.integration


def queries_of(kit: CommandKit) -> Queries:
    return Queries(kit.db, SiteRouterSettings(environment="test"), kit.commands, kit.commands.directory)


async def open_referral(kit: CommandKit, site: str, referral_id: uuid.UUID) -> None:
    await kit.db.run(lambda session: kit.commands.opened(session, site, referral_id))


async def test_the_queue_sorts_a_coordinators_sites_referrals_into_tabs_oldest_first(kit: CommandKit) -> None:
    await kit.add_sites({"WCM": 3, "DFCI": 3})
    first, second, third = await kit.screen(), await kit.screen(), await kit.screen()
    boston = await kit.screen(postal_code="02134")
    queries = queries_of(kit)

    queue = await queries.portal_queue({"WCM"})
    assert queue.site_names == {"WCM": "Weill Cornell Medicine"}
    assert [i.referral_id for i in queue.in_tab(QueueTab.NEW)] == [first, second, third]
    assert queue.counts() == {
        QueueTab.NEW: 3,
        QueueTab.AWAITING: 0,
        QueueTab.IN_PROGRESS: 0,
        QueueTab.CLOSED: 0,
    }
    item = queue.items[0]
    assert (item.site_code, item.site_name, item.decision, item.criteria_to_confirm) == (
        "WCM",
        "Weill Cornell Medicine",
        "needs_review",
        ["ecog"],
    )
    assert item.distance_km < 2 and item.short_id == str(first)[:8]

    await open_referral(kit, "WCM", first)
    await open_referral(kit, "DFCI", second)  # not DFCI's: changes nothing
    await kit.db.run(lambda session: kit.commands.accept(session, "WCM", second))
    await open_referral(kit, "WCM", second)  # accepted already: stays in progress, not "opened"
    await kit.decline("WCM", third, "no bed this month")

    queue = await queries.portal_queue({"WCM"})
    assert [i.referral_id for i in queue.in_tab(QueueTab.NEW)] == []
    assert [i.referral_id for i in queue.in_tab(QueueTab.AWAITING)] == [first]
    assert [i.referral_id for i in queue.in_tab(QueueTab.IN_PROGRESS)] == [second]
    [closed] = queue.in_tab(QueueTab.CLOSED)
    assert (closed.referral_id, closed.status, closed.reason) == (third, "declined", "no bed this month")

    both = await queries.portal_queue({"WCM", "DFCI"})
    assert [(i.referral_id, i.site_code) for i in both.in_tab(QueueTab.NEW)] == [
        (boston, "DFCI"),
        (third, "DFCI"),  # routed to DFCI when WCM declined it: later than boston, so after it
    ]
    assert both.site_codes == ["DFCI", "WCM"]
    assert [i.referral_id for i in (await queries.portal_queue({"MCC"})).items] == []


async def test_a_referral_page_shows_its_sites_story_and_nothing_of_other_sites(kit: CommandKit) -> None:
    await kit.add_sites({"WCM": 2, "DFCI": 2})
    referral = await kit.screen()
    queries = queries_of(kit)
    await open_referral(kit, "WCM", referral)
    await kit.decline("WCM", referral, "no bed this month")

    at_wcm = await queries.portal_referral({"WCM"}, referral)
    assert (at_wcm.status, at_wcm.tab, at_wcm.site_code, at_wcm.site_name) == (
        "declined",
        QueueTab.CLOSED,
        "WCM",
        "Weill Cornell Medicine",
    )
    assert at_wcm.short_id == str(referral)[:8]
    assert [(e.event, e.detail) for e in at_wcm.timeline] == [
        ("routed", "choice 1"),
        ("opened", None),
        ("declined", "no bed this month"),
    ]
    assert [c.id for c in at_wcm.criteria] == ["age", "ecog"]
    assert at_wcm.referrer is not None and at_wcm.referrer.phone == "+1 212 555 0100"

    at_dfci = await queries.portal_referral({"DFCI"}, referral)
    assert (at_dfci.status, at_dfci.tab, at_dfci.rank) == ("routed", QueueTab.NEW, 2)
    assert [e.event for e in at_dfci.timeline] == ["routed"]  # WCM's decline is not DFCI's to see

    both = await queries.portal_referral({"WCM", "DFCI"}, referral)
    assert both.site_code == "DFCI"  # the latest routing among the coordinator's sites
    assert [(e.event, e.site_code) for e in both.timeline] == [
        ("routed", "WCM"),
        ("opened", "WCM"),
        ("declined", "WCM"),
        ("routed", "DFCI"),
    ]

    for sites, wanted in [({"MCC"}, referral), ({"WCM"}, uuid.uuid4())]:
        with pytest.raises(NotFound):
            await queries.portal_referral(sites, wanted)


async def test_settings_list_only_the_coordinators_own_sites(kit: CommandKit) -> None:
    await kit.add_sites({"WCM": 2, "DFCI": 4, "MCC": 1})
    mine = await queries_of(kit).sites_of({"DFCI", "MCC"})
    assert [(s.code, s.capacity) for s in mine] == [("DFCI", 4), ("MCC", 1)]
