"""Routers racing for the last slots on real PostgreSQL: never overbooked, never a slot lost.

Several "instances" (each its own engine, connection pool, router and in-memory index, as separate
processes would have) handle referrals at the same time through ``asyncio.gather``.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from sqlalchemy import select, text

from services.site_router import store
from services.site_router.commands import Commands
from services.site_router.directory import SiteDirectory
from services.site_router.geo import Geocoder
from shared.db import Database
from tests.integration.site_router.conftest import CommandKit
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration


@pytest.fixture
def database_url(any_database_url: str) -> str:
    """Every test here runs on PostgreSQL and on SQLite."""
    return any_database_url


POSTAL_CODES = ["10021", "02115", "33606", "60601", "77002", "94103"]  # NY, Boston, Tampa, Chicago, ...
CAPACITY = {"WCM": 2, "DFCI": 2, "MCC": 2}


@pytest.fixture
async def instances(
    database_url: str, kit: CommandKit, geocoder: Geocoder
) -> AsyncIterator[list[CommandKit]]:
    """Four router instances on the test's database, each with its own pool and site index."""
    await kit.add_sites(CAPACITY)
    kits = []
    for _ in range(4):
        db = Database(database_url, pool_size=10)
        directory = SiteDirectory()
        await directory.reload(db)
        kits.append(CommandKit(db, Commands(geocoder, directory)))
    yield kits
    for each in kits:
        await each.db.dispose()


async def invariants(kit: CommandKit) -> None:
    """What must hold whatever the interleaving."""
    counts, active = await kit.open_counts(), await kit.active_per_site()
    assert dict(active) == {code: n for code, n in counts.items() if n}, "open_count drifted from assignments"
    assert all(counts[code] <= CAPACITY[code] for code in CAPACITY), f"overbooked: {counts}"
    waiting = set(await kit.waitlisted())
    async with kit.db.session() as session:
        for referral_id in waiting:
            assert store.active(await store.assignments_of(session, referral_id)) is None
        for site in await store.sites_with_room(session):
            for referral_id in waiting:
                declined = store.declined_codes(await store.assignments_of(session, referral_id))
                assert site.code in declined, f"{site.code} has room while {referral_id} waits (lost wakeup)"


async def test_forty_concurrent_routings_never_exceed_capacity(instances: list[CommandKit]) -> None:
    kits = itertools.cycle(instances)
    codes = itertools.cycle(POSTAL_CODES)
    referrals = await asyncio.gather(*(next(kits).screen(postal_code=next(codes)) for _ in range(40)))

    kit = instances[0]
    assert await kit.open_counts() == CAPACITY
    assert await kit.active_per_site() == CAPACITY  # 6 reservations, counted one by one
    assert len(await kit.waitlisted()) == 34
    kinds = [e.type for e in await kit.events()]
    assert kinds.count("referral.routed") == 6 and kinds.count("referral.waitlisted") == 34
    assert len(set(referrals)) == 40
    await invariants(kit)


async def test_releases_racing_arrivals_lose_no_slot(instances: list[CommandKit]) -> None:
    """Declines, closes and withdrawals free slots while new referrals arrive and get waitlisted, round
    after round: no site is ever overbooked, and when each round settles no site has room that a waiting
    referral could take."""
    kits = itertools.cycle(instances)
    postal_codes = itertools.cycle(POSTAL_CODES)
    kit = instances[0]
    await asyncio.gather(*(next(kits).screen() for _ in range(6)))
    for _ in range(3):
        holders = await _holders(kit)
        assert sorted(holders.values()) == sorted(c for c, n in CAPACITY.items() for _ in range(n))
        releases = [
            _release(next(kits), i, referral, site) for i, (referral, site) in enumerate(holders.items())
        ]
        arrivals = [_arrival(next(kits), next(postal_codes)) for _ in range(20)]
        await asyncio.gather(*(job() for job in [*arrivals[:10], *releases, *arrivals[10:]]))
        await invariants(kit)
        assert await kit.open_counts() == CAPACITY  # more referrals than slots: every slot is taken again


async def _holders(kit: CommandKit) -> dict[uuid.UUID, str]:
    async with kit.db.session() as session:
        rows = await session.execute(
            select(store.Assignment.referral_id, store.Assignment.site_code).where(
                store.Assignment.state == "routed"
            )
        )
        return {referral: site for referral, site in rows.all()}


async def _blocked(kit: CommandKit) -> None:
    """Until a transaction waits for a lock another holds: on PostgreSQL, as the server reports it."""
    if kit.db.is_sqlite:
        # SQLite's waiter spins in its busy handler, which nothing outside its connection can see: the
        # one place a test waits a fixed time, long enough for the newcomer to reach the write lock.
        await asyncio.sleep(1.0)
        return

    async def waiting() -> bool:
        async with kit.db.session() as session:
            query = (
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
            return bool((await session.execute(text(query))).scalar_one())

    await eventually(waiting, what="the newcomer to wait for the close's lock")


def _release(kit: CommandKit, i: int, referral: uuid.UUID, site: str) -> Callable[[], Awaitable[None]]:
    if i % 3 == 0:
        return lambda: kit.decline(site, referral)
    if i % 3 == 1:
        return lambda: kit.close(site, referral, enrolled=True)
    return lambda: kit.withdraw(referral)


def _arrival(kit: CommandKit, postal_code: str) -> Callable[[], Awaitable[uuid.UUID]]:
    return lambda: kit.screen(postal_code=postal_code)


async def test_a_slot_freed_while_a_referral_is_waitlisted_is_not_lost(instances: list[CommandKit]) -> None:
    """Deterministic form of the race: a close has freed WCM's slot and drained an empty waitlist but not
    committed yet, when another instance finds every site full and waitlists a newcomer. The newcomer
    must end up in the freed slot, not wait for the next release."""
    one, other = instances[0], instances[1]
    holders = [await one.screen() for _ in range(6)]
    async with one.db.session() as session:
        await one.commands.close(session, "WCM", holders[0], enrolled=False, reason=None)
        newcomer = asyncio.create_task(other.screen())
        await _blocked(other)  # the newcomer read "all full", and now waits for this commit
    referral = await newcomer
    assert await one.site_of(referral) == "WCM"
    assert await one.waitlisted() == []
    await invariants(one)
