"""Consumers of different topics and partitions fold the same referrals at once on PostgreSQL: one lock
order (referral rows in id order), so no deadlock and no lost update."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import event, select

from services.insights import commands, store
from shared.db import Database
from shared.events import Envelope, EventData
from shared.retry import is_conflict
from tests.support import builders

T0 = datetime(2026, 11, 10, 9, 0, tzinfo=UTC)
A, B = builders.site("SITE-A"), builders.site("SITE-B")


def _recorder(seen: list[str]) -> Callable[[Any], None]:
    def record(context: Any) -> None:
        if is_conflict(context.sqlalchemy_exception or context.original_exception):
            seen.append(str(context.original_exception))

    return record


def events(rid: uuid.UUID) -> list[Envelope]:
    steps: list[tuple[float, EventData]] = [
        (0, builders.submitted()),
        (1, builders.screened()),
        (2, builders.routed(site=A)),
        (3, builders.site_decided("declined", site_code=A.code)),
        (4, builders.routed(site=B, rank=2)),
        (5, builders.site_decided("accepted", site_code=B.code)),
        (6, builders.progressed("contacted", site_code=B.code)),
    ]
    return [builders.wrap(data, rid, at=T0 + timedelta(hours=h)) for h, data in steps]


async def test_concurrent_batches_of_the_same_referrals_neither_deadlock_nor_lose_a_step(
    database_url: str,
) -> None:
    db = Database(database_url, pool_size=10)
    deadlocks: list[str] = []
    event.listen(db.engine.sync_engine, "handle_error", _recorder(deadlocks))
    rids = [uuid.uuid4() for _ in range(30)]
    by_topic: dict[str, list[Envelope]] = {}
    for rid in rids:
        for envelope in events(rid):
            by_topic.setdefault(envelope.type, []).append(envelope)
    rng = random.Random(17)
    batches = []
    for topic_events in by_topic.values():  # each topic's consumer, its records in any referral order
        rng.shuffle(topic_events)
        batches += [topic_events[i : i + 10] for i in range(0, len(topic_events), 10)]
    rng.shuffle(batches)

    async def fold(batch: list[Envelope]) -> None:
        async with db.session() as session:
            await commands.record(session, [(e, e.payload()) for e in batch])

    try:
        await asyncio.gather(*(fold(batch) for batch in batches))
        async with db.session() as session:
            facts = (await session.execute(select(store.ReferralFact))).scalars().all()
            sites = (await session.execute(select(store.SiteFact))).scalars().all()
    finally:
        await db.dispose()
    assert deadlocks == []
    assert len(facts) == len(rids)
    for fact in facts:
        assert fact.submitted_on == T0.date()
        assert (fact.site_code, fact.declined_sites) == ("SITE-B", 1)
        assert fact.accepted_at == T0 + timedelta(hours=5)
        assert fact.contacted_at == T0 + timedelta(hours=6)
        assert fact.decision == "eligible"
    assert len(sites) == 2 * len(rids)
