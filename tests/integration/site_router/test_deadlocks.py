"""Everything that takes or frees a slot, raced on real PostgreSQL: no deadlock, nothing inconsistent.

Three router instances (each its own pool, index and consumer loop, as separate processes would have)
consume polls of screenings, amendments and withdrawals through the consumer loop's own path (a poll's
records in one transaction), while the site API declines, accepts and closes the referrals they hold and
trial staff change capacities and pause and reopen sites. Every use case follows one lock order (see
``services/site_router/store.py``), so PostgreSQL never has to abort one to break a deadlock: the
database's own deadlock counter for the test's database stays at zero, and no statement fails with
SQLSTATE 40P01 (``Database.run`` and the consumer loop would have hidden it by running the work again).
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from sqlalchemy import event, func, select, text
from sqlmodel import col

from services.site_router import sites, store
from services.site_router.commands import Commands
from services.site_router.consumers import handlers
from services.site_router.directory import SiteDirectory
from services.site_router.domain import ACTIVE_ASSIGNMENT_STATES, ReferralState, SiteStatus
from services.site_router.geo import Geocoder
from services.site_router.schemas import SiteUpdate
from shared.consumer import ConsumerLoop
from shared.db import Database
from shared.events import Envelope, ReferralWithdrawn
from shared.problems import Conflict, NotFound
from shared.retry import is_conflict
from shared.settings import KafkaSettings
from tests.integration.site_router.conftest import CommandKit, screening
from tests.support.builders import wrap
from tests.support.handlers import HandlerHarness, MemoryDeadLetters
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

CAPACITY = {"WCM": 3, "DFCI": 3, "MCC": 2, "MDACC": 2}
POSTAL_CODES = ["10021", "02115", "33606", "60601", "77002", "94103"]
ROUNDS = 5
SEED = 18_05


@dataclass
class Instance:
    """One router process: its pool, use cases and consumer loop, and the deadlocks its statements met."""

    db: Database
    commands: Commands
    consumer: HandlerHarness
    deadlocks: list[str] = field(default_factory=list)


@pytest.fixture
async def instances(database_url: str, kit: CommandKit, geocoder: Geocoder) -> AsyncIterator[list[Instance]]:
    await kit.add_sites(CAPACITY)
    made = []
    for n in range(3):
        db = Database(database_url, pool_size=10)
        directory = SiteDirectory()
        await directory.reload(db)
        commands = Commands(geocoder, directory)
        letters = MemoryDeadLetters(f"router-{n}")
        loop = ConsumerLoop(
            db,
            KafkaSettings(),
            service="site_router",
            group_id="site_router",
            handlers=handlers(commands),
            first_backoff_s=0.01,
            max_backoff_s=0.05,
            dead_letters=letters,
        )
        instance = Instance(db, commands, HandlerHarness(db, loop, letters))
        event.listen(db.engine.sync_engine, "handle_error", _recorder(instance.deadlocks))
        made.append(instance)
    yield made
    for instance in made:
        await instance.db.dispose()


def _recorder(seen: list[str]) -> Callable[[Any], None]:
    """Note each statement aborted by a deadlock or serialization failure, before any retry hides it."""

    def record(context: Any) -> None:
        if is_conflict(context.sqlalchemy_exception or context.original_exception):
            seen.append(f"{context.original_exception}: {context.statement}")

    return record


@dataclass
class Referrals:
    """What the test has sent about each referral: its owner (partition) and last revision."""

    owner: dict[uuid.UUID, int] = field(default_factory=dict)
    revision: dict[uuid.UUID, int] = field(default_factory=dict)
    withdrawn: set[uuid.UUID] = field(default_factory=set)


def _poll(rng: random.Random, referrals: Referrals, owner: int) -> list[Envelope]:
    """One poll of one instance's partitions: new screenings, amendments (some no longer routable) and
    withdrawals of referrals it already holds, each referral at most once."""
    live = [r for r, o in referrals.owner.items() if o == owner and r not in referrals.withdrawn]
    picked = rng.sample(live, min(len(live), 5))
    poll = []
    for referral_id in picked[:3]:
        referrals.withdrawn.add(referral_id)
        poll.append(wrap(ReferralWithdrawn(clinic_id="C1", reason="moved"), referral_id))
    for referral_id in picked[3:]:
        referrals.revision[referral_id] += 1
        routable = rng.random() < 0.7
        data = screening(
            postal_code=rng.choice(POSTAL_CODES), revision=referrals.revision[referral_id], routable=routable
        )
        poll.append(wrap(data, referral_id))
    for _ in range(8):
        referral_id = uuid.uuid4()
        referrals.owner[referral_id], referrals.revision[referral_id] = owner, 1
        poll.append(wrap(screening(postal_code=rng.choice(POSTAL_CODES)), referral_id))
    rng.shuffle(poll)
    return poll


async def _holders(db: Database) -> list[tuple[uuid.UUID, str, str]]:
    async with db.session() as session:
        query = select(
            store.Assignment.referral_id, store.Assignment.site_code, store.Assignment.state
        ).where(col(store.Assignment.state).in_(list(ACTIVE_ASSIGNMENT_STATES)))
        return [(r, s, st) for r, s, st in (await session.execute(query)).all()]


def _site_decision(
    rng: random.Random, instance: Instance, referral_id: uuid.UUID, site: str
) -> Awaitable[Any]:
    commands, roll = instance.commands, rng.random()
    if roll < 0.4:
        return instance.db.run(lambda s: commands.decline(s, site, referral_id, "not now"))
    if roll < 0.7:
        return instance.db.run(lambda s: commands.close(s, site, referral_id, rng.random() < 0.5, None))
    return instance.db.run(lambda s: commands.accept(s, site, referral_id))


def _site_change(rng: random.Random, instance: Instance, code: str) -> Awaitable[Any]:
    roll = rng.random()
    if roll < 0.5:
        capacity = max(0, CAPACITY[code] + rng.choice([-1, 1, 2]))
        return instance.db.run(lambda s: sites.update_site(s, code, SiteUpdate(capacity=capacity)))
    status = SiteStatus.PAUSED if roll < 0.75 else SiteStatus.RECRUITING
    return instance.db.run(lambda s: sites.set_status(s, code, status))


async def _answered(work: Awaitable[Any]) -> None:
    """A decision the site API would answer 404 or 409 (the referral moved on meanwhile) is no failure."""
    try:
        await work
    except (Conflict, NotFound):
        pass


async def test_racing_routings_decisions_and_site_changes_never_deadlock(
    instances: list[Instance], kit: CommandKit
) -> None:
    rng = random.Random(SEED)
    referrals = Referrals()
    before = await _deadlocks(kit.db)
    for _ in range(ROUNDS):
        holders = await _holders(kit.db)

        async def consume(n: int) -> None:
            for _ in range(2):  # a consumer handles its polls one after the other
                await instances[n].consumer.deliver(*_poll(rng, referrals, n))

        work: list[Awaitable[Any]] = [consume(n) for n in range(len(instances))]
        work += [
            _answered(_site_decision(rng, rng.choice(instances), referral_id, site))
            for referral_id, site, _ in rng.sample(holders, min(len(holders), 8))
        ]
        work += [
            _answered(_site_change(rng, rng.choice(instances), code))
            for code in rng.sample(list(CAPACITY), 3)
        ]
        rng.shuffle(work)
        await asyncio.gather(*work)
        await _invariants(kit.db)

    assert [i.consumer.dead_letters.letters for i in instances] == [[], [], []]
    assert [d for i in instances for d in i.deadlocks] == []
    for instance in instances:
        await instance.db.dispose()
    assert await _deadlocks(kit.db, quiet=True) == before, "PostgreSQL broke a deadlock in this database"


async def _deadlocks(db: Database, *, quiet: bool = False) -> int:
    """The database's own count of deadlocks it broke (``pg_stat_database``). ``quiet``: first wait until
    every other connection to it has closed, as a backend reports its counts at the latest when it exits."""
    await db.engine.dispose()
    if quiet:

        async def alone() -> bool:
            async with db.session() as session:
                query = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                return (await session.execute(text(query))).scalar_one() == 1

        await eventually(alone, what="the instances' connections to close")
    async with db.session() as session:
        query = "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()"
        return int((await session.execute(text(query))).scalar_one())


async def _invariants(db: Database) -> None:
    async with db.session() as session:
        sites_now = {s.code: s for s in await store.list_sites(session)}
        active = (
            await session.execute(
                select(store.Assignment.site_code, func.count())
                .where(col(store.Assignment.state).in_(list(ACTIVE_ASSIGNMENT_STATES)))
                .group_by(store.Assignment.site_code)
            )
        ).all()
        twice = (
            await session.execute(
                select(store.Assignment.referral_id)
                .where(col(store.Assignment.state).in_(list(ACTIVE_ASSIGNMENT_STATES)))
                .group_by(store.Assignment.referral_id)
                .having(func.count() > 1)
            )
        ).all()
        queue = {r for _, r in await store.waitlist(session, 100_000)}
        waiting_state = set(
            (
                await session.execute(
                    select(store.ReferralRecord.referral_id).where(
                        store.ReferralRecord.state == ReferralState.WAITLISTED
                    )
                )
            ).scalars()
        )
        declined = {r: store.declined_codes(await store.assignments_of(session, r)) for r in queue}
        actives = {r: store.active(await store.assignments_of(session, r)) for r in queue}
    assert {code: s.open_count for code, s in sites_now.items() if s.open_count} == dict(active), (
        "open_count drifted from the active assignments"
    )
    assert twice == [], "a referral is active at two sites"
    assert queue == waiting_state, "the waitlist and the referrals' state disagree"
    assert all(a is None for a in actives.values()), "a waitlisted referral also holds a slot"
    for code, site in sites_now.items():
        if site.status == SiteStatus.RECRUITING and site.open_count < site.capacity:
            stuck = [r for r in queue if code not in declined[r]]
            assert stuck == [], f"{code} has room while referrals wait for it (a lost wakeup)"
