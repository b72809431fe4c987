"""The site router's handlers: a screening routed to the nearest recruiting site with room, else
waitlisted or unroutable; a withdrawal frees the slot and moves the waitlist.

Sites are the trial's four US centres of the shipped seed file; from a patient at 10021 (Upper East
Side) they are, nearest first, WCM (New York), DFCI (Boston), MCC (Tampa), MDACC (Houston).
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from sqlmodel import col, select

from services.site_router import sites, store
from services.site_router.commands import Commands
from services.site_router.consumers import handlers
from services.site_router.directory import SiteDirectory
from services.site_router.geo import Geocoder
from services.site_router.routing import WAITLIST_REASON
from services.site_router.schemas import SiteCreate
from shared.events import CriterionVerdict, Envelope
from tests.support import events
from tests.support.events import envelope
from tests.support.handlers import HandlerHarness, handler_harness

NEAREST_FIRST = ["WCM", "DFCI", "MCC", "MDACC"]
SEED = {site.code: site for site in sites.read_sites_file(sites.SEED_FILE)}
NEEDS_REVIEW: dict[str, Any] = {
    "decision": "needs_review",
    "criteria": [
        CriterionVerdict(id="age", verdict="met", reason="58 years"),
        CriterionVerdict(id="ecog", verdict="unknown", reason="ecog not given"),
    ],
}


@pytest.fixture(scope="module")
def geocoder(tmp_path_factory: pytest.TempPathFactory) -> Geocoder:
    """One warm geocoder for the module: loading the US table takes most of a second."""
    coder = Geocoder(index_dir=tmp_path_factory.mktemp("geonames-index"))
    coder.warm(["US"])
    return coder


@dataclass
class Kit:
    """The site router's handlers on the harness, and what a test reads back of its store."""

    harness: HandlerHarness
    commands: Commands

    async def add_sites(self, capacities: dict[str, int], status: str = "recruiting") -> None:
        async with self.harness.db.session() as session:
            for code, capacity in capacities.items():
                data = SiteCreate.model_validate(
                    {**SEED[code].model_dump(), "capacity": capacity, "status": status}
                )
                await sites.create_site(session, data, self.commands.geocoder)
        await self.commands.directory.reload(self.harness.db)

    async def screen(self, referral_id: uuid.UUID | None = None, **changes: Any) -> uuid.UUID:
        """Deliver a screening of a routable referral at 10021 unless ``changes`` say otherwise."""
        referral_id = referral_id or uuid.uuid4()
        await self.harness.deliver(envelope(referral_id, events.screened(**changes)))
        return referral_id

    async def withdraw(self, referral_id: uuid.UUID) -> None:
        await self.harness.deliver(envelope(referral_id, events.withdrawn()))

    async def referral(self, referral_id: uuid.UUID) -> store.ReferralRecord:
        async with self.harness.db.session() as session:
            found = await session.get(store.ReferralRecord, referral_id)
        assert found is not None
        return found

    async def site_of(self, referral_id: uuid.UUID) -> str | None:
        async with self.harness.db.session() as session:
            current = store.active(await store.assignments_of(session, referral_id))
        return current.site_code if current else None

    async def assignments(self, referral_id: uuid.UUID) -> list[tuple[str, str, int]]:
        """(site, state, rank) of each routing, oldest first."""
        async with self.harness.db.session() as session:
            return [(a.site_code, a.state, a.rank) for a in await store.assignments_of(session, referral_id)]

    async def open_counts(self) -> dict[str, int]:
        async with self.harness.db.session() as session:
            return {s.code: s.open_count for s in await store.list_sites(session)}

    async def active_per_site(self) -> Counter[str]:
        """Counted from the assignments themselves, not from open_count: the two must agree."""
        async with self.harness.db.session() as session:
            query = select(col(store.Assignment.site_code)).where(
                col(store.Assignment.state).in_(["routed", "accepted"])
            )
            return Counter((await session.execute(query)).scalars().all())

    async def waitlisted(self) -> list[uuid.UUID]:
        async with self.harness.db.session() as session:
            return [r for _, r in await store.waitlist(session, 10_000)]

    async def events_of(self, referral_id: uuid.UUID) -> list[tuple[str, dict[str, Any]]]:
        return [(e.type, e.data) for e in await self.harness.published() if e.referral_id == referral_id]


@pytest.fixture
async def kit(geocoder: Geocoder) -> AsyncIterator[Kit]:
    commands = Commands(geocoder, SiteDirectory())
    async with handler_harness(handlers(commands), store.TABLES) as harness:
        yield Kit(harness, commands)


async def test_the_nearest_recruiting_site_with_room_gets_the_referral(kit: Kit) -> None:
    await kit.add_sites(dict.fromkeys(NEAREST_FIRST, 1))
    first, second = await kit.screen(**NEEDS_REVIEW), await kit.screen()
    assert (await kit.site_of(first), await kit.site_of(second)) == ("WCM", "DFCI")

    [(kind, routed)] = await kit.events_of(first)
    assert kind == "referral.routed"
    assert routed["site"]["code"] == "WCM" and routed["rank"] == 1
    assert 0 < routed["distance_km"] < 2  # 10021 to 10065: the same neighbourhood
    assert routed["criteria_to_confirm"] == ["ecog"]
    assert "ecog (ecog not given)" in routed["note"] and "other criteria may apply" in routed["note"]
    assert routed["decision"] == "needs_review" and routed["consent_to_contact"] is True
    assert routed["referrer"]["email"] == "asmith@clinic.example.org"
    assert (await kit.referral(first)).state == "routed"
    assert await kit.open_counts() == {"WCM": 1, "DFCI": 1, "MCC": 0, "MDACC": 0}


async def test_the_trace_carries_on_to_the_routing(kit: Kit) -> None:
    await kit.add_sites({"WCM": 1})
    trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    await kit.harness.deliver(envelope(uuid.uuid4(), events.screened(), trace=trace))
    [routed] = await kit.harness.published("referral.routed")
    assert (routed.producer, routed.trace) == ("site_router", trace)


async def test_paused_closed_and_full_sites_are_skipped_and_then_the_referral_waits(kit: Kit) -> None:
    await kit.add_sites({"WCM": 2}, status="paused")
    await kit.add_sites({"DFCI": 2}, status="closed")
    await kit.add_sites({"MCC": 0, "MDACC": 1})
    assert await kit.site_of(await kit.screen()) == "MDACC"
    waiting = await kit.screen()
    assert await kit.site_of(waiting) is None
    assert await kit.waitlisted() == [waiting]
    assert await kit.events_of(waiting) == [
        ("referral.waitlisted", {"clinic_id": events.CLINIC, "reason": WAITLIST_REASON})
    ]
    assert (await kit.referral(waiting)).state == "waitlisted"


async def test_a_screening_delivered_again_is_routed_once(kit: Kit) -> None:
    await kit.add_sites({"WCM": 2})
    rid = uuid.uuid4()
    event = envelope(rid, events.screened())
    await kit.harness.deliver(event, event)
    await kit.harness.deliver(event)
    assert [kind for kind, _ in await kit.events_of(rid)] == ["referral.routed"]
    assert await kit.open_counts() == {"WCM": 1}
    assert kit.harness.position("referral.screened") == 3


async def test_a_new_event_for_the_same_revision_repeats_the_routing_and_takes_no_second_slot(
    kit: Kit,
) -> None:
    await kit.add_sites({"WCM": 2})
    rid = await kit.screen()
    await kit.screen(rid)
    routed = [d for kind, d in await kit.events_of(rid) if kind == "referral.routed"]
    assert [(d["site"]["code"], d["rank"]) for d in routed] == [("WCM", 1), ("WCM", 1)]
    assert await kit.open_counts() == {"WCM": 1}
    assert await kit.active_per_site() == {"WCM": 1}


async def test_an_unknown_postal_code_or_country_is_unroutable_with_the_reason(kit: Kit) -> None:
    await kit.add_sites({"WCM": 1})
    unknown = await kit.screen(postal_code="00000")
    foreign = await kit.screen(postal_code="75001", country="FR")
    [(kind, data)] = await kit.events_of(unknown)
    assert kind == "referral.unroutable" and data["reason"] == "unknown postal code '00000' for US"
    [(kind, data)] = await kit.events_of(foreign)
    assert kind == "referral.unroutable" and data["reason"].startswith("country 'FR' is not supported")
    record = await kit.referral(unknown)
    assert (record.state, record.reason) == ("unroutable", "unknown postal code '00000' for US")
    assert await kit.open_counts() == {"WCM": 0}


async def test_an_ineligible_referral_is_recorded_not_routed(kit: Kit) -> None:
    await kit.add_sites({"WCM": 1})
    rid = await kit.screen(routable=False, decision="ineligible")
    assert await kit.events_of(rid) == []
    record = await kit.referral(rid)
    assert record.state == "not_routed" and record.screening is not None
    assert await kit.open_counts() == {"WCM": 0}


async def test_a_withdrawal_frees_the_slot_and_the_first_waiting_referral_takes_it(kit: Kit) -> None:
    await kit.add_sites({"WCM": 1})
    routed, *waiting = [await kit.screen() for _ in range(3)]
    assert await kit.waitlisted() == waiting
    await kit.withdraw(routed)
    assert await kit.site_of(waiting[0]) == "WCM"
    assert await kit.waitlisted() == [waiting[1]]
    assert await kit.open_counts() == {"WCM": 1}
    assert await kit.assignments(routed) == [("WCM", "withdrawn", 1)]
    record = await kit.referral(routed)
    assert (record.state, record.reason) == ("withdrawn", "patient moved")
    kinds = [kind for kind, _ in await kit.events_of(waiting[0])]
    assert kinds == ["referral.waitlisted", "referral.routed"]


async def test_a_waiting_referral_withdrawn_leaves_the_waitlist(kit: Kit) -> None:
    await kit.add_sites({"WCM": 1})
    routed, waiting = await kit.screen(), await kit.screen()
    await kit.withdraw(waiting)
    assert await kit.waitlisted() == []
    assert await kit.site_of(routed) == "WCM" and await kit.open_counts() == {"WCM": 1}
    assert (await kit.referral(waiting)).state == "withdrawn"


async def test_a_screening_after_the_withdrawal_is_ignored(kit: Kit) -> None:
    await kit.add_sites({"WCM": 1})
    rid = await kit.screen()
    await kit.withdraw(rid)
    await kit.screen(rid, revision=2)
    assert await kit.site_of(rid) is None and await kit.open_counts() == {"WCM": 0}
    assert (await kit.referral(rid)).state == "withdrawn"


async def test_a_withdrawal_before_the_screening_arrives_wins(kit: Kit) -> None:
    """Withdrawn and screened are different topics: the withdrawal may be consumed first."""
    await kit.add_sites({"WCM": 1})
    rid = uuid.uuid4()
    await kit.withdraw(rid)
    await kit.screen(rid)
    assert await kit.site_of(rid) is None
    assert await kit.open_counts() == {"WCM": 0}
    assert await kit.events_of(rid) == []
    assert (await kit.referral(rid)).state == "withdrawn"


async def test_a_rescreen_keeps_the_site_while_routable_and_releases_it_when_not(kit: Kit) -> None:
    await kit.add_sites({"WCM": 1, "DFCI": 1})
    rid = await kit.screen(**NEEDS_REVIEW)
    waiting = [await kit.screen(), await kit.screen()]  # DFCI, then the waitlist
    await kit.screen(rid, revision=2)  # amended: still routable, keeps WCM
    assert await kit.site_of(rid) == "WCM"
    again = [d for kind, d in await kit.events_of(rid) if kind == "referral.routed"]
    assert [(d["site"]["code"], d["revision"], d["rank"], d["criteria_to_confirm"]) for d in again] == [
        ("WCM", 1, 1, ["ecog"]),
        ("WCM", 2, 1, []),
    ]
    await kit.screen(rid, revision=1, routable=False)  # an older revision: ignored
    assert await kit.site_of(rid) == "WCM"
    await kit.screen(rid, revision=3, routable=False, decision="ineligible")
    assert await kit.site_of(rid) is None
    assert (await kit.referral(rid)).state == "not_routed"
    assert await kit.site_of(waiting[1]) == "WCM"  # the freed slot went to the waitlist
    await kit.screen(rid, revision=4)  # routable again: routed like a new referral
    assert await kit.waitlisted() == [rid]
    assert await kit.active_per_site() == await kit.open_counts()


async def test_one_poll_of_screenings_and_a_withdrawal_is_routed_in_order(kit: Kit) -> None:
    """Handled together in one transaction, the records must end as if they had come one by one."""
    await kit.add_sites({"WCM": 2})
    rids = [uuid.uuid4() for _ in range(4)]
    poll: list[Envelope] = [envelope(rid, events.screened()) for rid in rids]
    await kit.harness.deliver(*poll, envelope(rids[0], events.withdrawn()))
    assert [await kit.site_of(rid) for rid in rids] == [None, "WCM", "WCM", None]
    assert await kit.waitlisted() == [rids[3]]
    assert await kit.open_counts() == {"WCM": 2} and await kit.active_per_site() == {"WCM": 2}
    assert (kit.harness.position("referral.screened"), kit.harness.position("referral.withdrawn")) == (4, 1)
    assert kit.harness.dead_letters.letters == []


async def test_a_poll_handled_one_record_at_a_time_applies_every_withdrawal(kit: Kit) -> None:
    """A poison record sends the poll down the one-by-one path, where each topic's partition goes
    concurrently: a withdrawal may be applied before or after its screening, but always applied."""
    await kit.add_sites({"WCM": 2, "DFCI": 2})
    rids = [uuid.uuid4() for _ in range(4)]
    screenings = [envelope(rid, events.screened()) for rid in rids]
    withdrawals = [envelope(rid, events.withdrawn()) for rid in rids[:2]]
    await kit.harness.deliver(("referral.screened", b"{not json"), *screenings, *withdrawals)
    [letter] = kit.harness.dead_letters.letters
    assert letter.error.startswith("JSONDecodeError")
    assert [(await kit.referral(rid)).state for rid in rids] == ["withdrawn", "withdrawn", "routed", "routed"]
    counts = await kit.open_counts()
    assert sum(counts.values()) == 2 and +await kit.active_per_site() == Counter(counts)
    assert (kit.harness.position("referral.screened"), kit.harness.position("referral.withdrawn")) == (5, 2)
