"""The shared outbox and consumer loop on the real broker and database."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import Field, SQLModel

from shared.consumer import ConsumerLoop, ProcessedEvent
from shared.db import Database
from shared.events import Envelope, ReferralWithdrawn
from shared.handlers import Handlers, PoisonMessage
from shared.kafka import connection
from shared.outbox import OutboxRecord, OutboxRelay, add_event, backlog
from shared.settings import KafkaSettings
from shared.store import tables
from tests.support import builders
from tests.support.kafka import produce, read_topic, wait_consumed
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration


class HandledEvent(SQLModel, table=True):
    """What the test handler writes: one row per handling, so a double handling shows."""

    __tablename__ = "test_handled_events"
    id: int | None = Field(default=None, primary_key=True)
    event_id: str
    partition_key: str
    transaction: int | None = None


TABLES = tables(OutboxRecord, ProcessedEvent, HandledEvent)


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url)
    await database.create_tables(TABLES)
    yield database
    await database.dispose()


def withdrawn(referral_id: uuid.UUID | None = None, reason: str = "test") -> Envelope:
    return builders.wrap(builders.withdrawn(reason=reason), referral_id, producer="test")


async def record_handling(session: AsyncSession, envelope: Envelope, data: ReferralWithdrawn) -> None:
    if data.reason == "poison":
        raise PoisonMessage("this one can never be handled")
    transaction = (await session.execute(text("SELECT txid_current()"))).scalar_one()
    session.add(
        HandledEvent(
            event_id=str(envelope.id), partition_key=str(envelope.referral_id), transaction=transaction
        )
    )


async def handled_count(db: Database) -> int:
    async with db.session() as session:
        return (await session.execute(select(func.count()).select_from(HandledEvent))).scalar_one()


def consumer(db: Database, kafka: KafkaSettings, group: str = "g1") -> ConsumerLoop:
    return ConsumerLoop(
        db, kafka, service="test", group_id=group, handlers=Handlers().on(ReferralWithdrawn, record_handling)
    )


async def test_rolled_back_transaction_publishes_nothing(db: Database, kafka: KafkaSettings) -> None:
    with pytest.raises(RuntimeError):
        async with db.session() as session:
            add_event(session, withdrawn())
            raise RuntimeError("the state change failed")
    relay = OutboxRelay(db, kafka, service="test")
    assert await relay.publish_batch() == 0
    assert await read_topic(kafka, "referral.withdrawn") == []


async def test_committed_events_survive_a_relay_killed_mid_batch(db: Database, kafka: KafkaSettings) -> None:
    events = [withdrawn() for _ in range(400)]
    async with db.session() as session:
        for envelope in events:
            add_event(session, envelope)

    first = OutboxRelay(db, kafka, service="test", batch_size=50)
    stop = asyncio.Event()
    task = asyncio.create_task(first.run(stop))
    await eventually(lambda: _backlog_below(db, 400), what="the first relay to publish something")
    task.cancel()  # killed mid-batch: no graceful stop, no final commit
    await asyncio.gather(task, return_exceptions=True)
    assert await backlog(db) > 0, "the kill should have left work for the second relay"

    second = OutboxRelay(db, kafka, service="test", batch_size=50)
    while await second.publish_batch():
        pass
    await second.producer.drop()
    assert await backlog(db) == 0

    published = {json.loads(r.value)["id"] for r in await read_topic(kafka, "referral.withdrawn")}
    assert published == {str(e.id) for e in events}

    loop = consumer(db, kafka)
    stop = asyncio.Event()
    task = asyncio.create_task(loop.run(stop))
    await eventually(lambda: _handled_at_least(db, 400), what="all events handled")
    await wait_consumed(kafka, "g1", "referral.withdrawn")  # and none of them again
    stop.set()
    await task
    assert await handled_count(db) == 400


async def test_redelivered_event_is_handled_once(db: Database, kafka: KafkaSettings) -> None:
    envelope = withdrawn()
    for _ in range(3):
        await produce(kafka, "referral.withdrawn", envelope.to_bytes(), str(envelope.referral_id).encode())
    marker = withdrawn(envelope.referral_id)
    await produce(kafka, "referral.withdrawn", marker.to_bytes(), str(marker.referral_id).encode())

    stop = asyncio.Event()
    task = asyncio.create_task(consumer(db, kafka).run(stop))
    await eventually(lambda: _handled_at_least(db, 2), what="the marker event after the duplicates")
    stop.set()
    await task
    async with db.session() as session:
        rows = (await session.execute(select(HandledEvent.event_id))).scalars().all()
    assert sorted(rows) == sorted([str(envelope.id), str(marker.id)])


async def test_poison_goes_to_dead_letters_and_the_partition_moves_on(
    db: Database, kafka: KafkaSettings
) -> None:
    key = str(uuid.uuid4()).encode()
    poison = [b"not json at all", json.dumps({"type": "referral.withdrawn"}).encode()]
    bad_data = withdrawn(uuid.UUID(key.decode())).model_copy(update={"data": {"reason": 42}})
    for value in [*poison, bad_data.to_bytes()]:
        await produce(kafka, "referral.withdrawn", value, key)
    good = withdrawn(uuid.UUID(key.decode()))
    await produce(kafka, "referral.withdrawn", good.to_bytes(), key)

    stop = asyncio.Event()
    task = asyncio.create_task(consumer(db, kafka).run(stop))
    await eventually(lambda: _handled_at_least(db, 1), what="the good event after the poison")
    stop.set()
    await task

    letters = [json.loads(r.value) for r in await read_topic(kafka, "referral.withdrawn.dlq")]
    assert [base64.b64decode(x["value_b64"]) for x in letters] == [*poison, bad_data.to_bytes()]
    assert all(x["error"] and x["consumer"] == "g1" and x["offset"] >= 0 for x in letters)
    assert "JSONDecodeError" in letters[0]["error"]
    assert "clinic_id" in letters[2]["error"]
    async with db.session() as session:
        assert (await session.execute(select(HandledEvent.event_id))).scalars().all() == [str(good.id)]


async def handled_rows(db: Database) -> list[HandledEvent]:
    async with db.session() as session:
        return list((await session.execute(select(HandledEvent).order_by(HandledEvent.id))).scalars())


async def test_records_of_one_poll_are_handled_in_one_transaction(db: Database, kafka: KafkaSettings) -> None:
    key = uuid.uuid4()
    events = [withdrawn(key) for _ in range(20)]  # one key: one partition, fetched in one poll
    for envelope in events:
        await produce(kafka, "referral.withdrawn", envelope.to_bytes(), str(key).encode())

    stop = asyncio.Event()
    task = asyncio.create_task(consumer(db, kafka).run(stop))
    await eventually(lambda: _handled_at_least(db, 20), what="all events handled")
    stop.set()
    await task
    rows = await handled_rows(db)
    assert [r.event_id for r in rows] == [str(e.id) for e in events]  # in order, once each
    assert len({r.transaction for r in rows}) < 20  # grouped: far fewer transactions than records
    async with db.session() as session:
        processed = (await session.execute(select(func.count()).select_from(ProcessedEvent))).scalar_one()
    assert processed == 20


@pytest.mark.parametrize("gather_ms", [0, 3_000])
async def test_a_gathering_consumer_takes_records_that_arrive_apart_in_few_transactions(
    db: Database, kafka: KafkaSettings, gather_ms: int
) -> None:
    loop = ConsumerLoop(
        db,
        kafka,
        service="test",
        group_id=f"gather-{gather_ms}",
        handlers=Handlers().on(ReferralWithdrawn, record_handling),
        gather_ms=gather_ms,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(loop.run(stop))

    async def owns_all() -> bool:
        return len(loop.assigned) == 6

    await eventually(owns_all, within=60, what="the member to own the partitions")
    events = [withdrawn() for _ in range(8)]
    producer = AIOKafkaProducer(**connection(kafka))
    await producer.start()
    try:
        for envelope in events:  # ~0.2 s apart: within a window of 3 s, at most one boundary falls
            await producer.send_and_wait(
                kafka.topic("referral.withdrawn"), envelope.to_bytes(), str(envelope.referral_id).encode()
            )
            await asyncio.sleep(0.2)
    finally:
        await producer.stop()
    await eventually(lambda: _handled_at_least(db, len(events)), what="every event handled")
    stop.set()
    await task
    transactions = {r.transaction for r in await handled_rows(db)}
    if gather_ms:
        assert len(transactions) <= 2, transactions
    else:
        assert len(transactions) > 2, transactions  # taken as they come


async def test_a_together_handler_gets_the_new_events_of_a_transaction_in_one_call(
    db: Database, kafka: KafkaSettings
) -> None:
    key = uuid.uuid4()
    events = [withdrawn(key) for _ in range(20)]
    for envelope in [*events, events[3]]:  # and a redelivered copy, which the handler must not see
        await produce(kafka, "referral.withdrawn", envelope.to_bytes(), str(key).encode())
    calls: list[int] = []

    async def record_all(session: AsyncSession, items: list[tuple[Envelope, ReferralWithdrawn]]) -> None:
        calls.append(len(items))
        for envelope, data in items:
            await record_handling(session, envelope, data)

    handlers = Handlers().together([ReferralWithdrawn], record_all)
    loop = ConsumerLoop(db, kafka, service="test", group_id="g1", handlers=handlers)
    stop = asyncio.Event()
    task = asyncio.create_task(loop.run(stop))
    await eventually(lambda: _handled_at_least(db, 20), what="all events handled")
    await wait_consumed(kafka, "g1", "referral.withdrawn")  # the redelivered copy too
    stop.set()
    await task
    rows = await handled_rows(db)
    assert [r.event_id for r in rows] == [str(e.id) for e in events]
    assert sum(calls) == 20 and max(calls) > 1, calls  # each new event once, several per call


async def test_a_failing_record_sends_its_group_one_at_a_time(db: Database, kafka: KafkaSettings) -> None:
    key = uuid.uuid4()
    poison = withdrawn(key, "poison")
    events = [*(withdrawn(key) for _ in range(5)), poison, *(withdrawn(key) for _ in range(5))]
    for envelope in events:
        await produce(kafka, "referral.withdrawn", envelope.to_bytes(), str(key).encode())

    stop = asyncio.Event()
    task = asyncio.create_task(consumer(db, kafka).run(stop))
    await eventually(lambda: _handled_at_least(db, 10), what="the events around the poison")
    await eventually(
        lambda: _count_at_least(read_topic(kafka, "referral.withdrawn.dlq"), 1), what="the dead letter"
    )
    stop.set()
    await task
    rows = await handled_rows(db)
    good = [e for e in events if e is not poison]
    assert [r.event_id for r in rows] == [str(e.id) for e in good]  # the rolled-back group left nothing
    letters = [json.loads(r.value) for r in await read_topic(kafka, "referral.withdrawn.dlq")]
    assert [json.loads(base64.b64decode(x["value_b64"]))["id"] for x in letters] == [str(poison.id)]
    assert "PoisonMessage" in letters[0]["error"]


async def _count_at_least(reading: Awaitable[list[Any]], n: int) -> bool:
    return len(await reading) >= n


async def test_two_instances_of_a_group_split_the_partitions(db: Database, kafka: KafkaSettings) -> None:
    one, two = consumer(db, kafka, "shared-group"), consumer(db, kafka, "shared-group")
    stop = asyncio.Event()
    tasks = [asyncio.create_task(one.run(stop)), asyncio.create_task(two.run(stop))]

    async def split() -> bool:
        return bool(one.assigned) and bool(two.assigned) and len(one.assigned | two.assigned) == 6

    await eventually(split, within=60, what="both members to own partitions")
    assert not one.assigned & two.assigned

    events = [withdrawn() for _ in range(60)]
    async with db.session() as session:
        for envelope in events:
            add_event(session, envelope)
    relay = OutboxRelay(db, kafka, service="test")
    while await relay.publish_batch():
        pass
    await relay.producer.drop()
    await eventually(lambda: _handled_at_least(db, 60), what="all events handled by the group")
    stop.set()
    await asyncio.gather(*tasks)
    assert await handled_count(db) == 60


async def _backlog_below(db: Database, n: int) -> bool:
    return await backlog(db) < n


async def _handled_at_least(db: Database, n: int) -> bool:
    return await handled_count(db) >= n


async def test_the_relay_publishes_from_the_embedded_sqlite_store_in_order(
    tmp_path: Path, kafka: KafkaSettings
) -> None:
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'outbox.db'}")
    await database.create_tables(TABLES)
    key = uuid.uuid4()
    events = [withdrawn(key) for _ in range(3)]  # one key, one partition: its order is kept
    async with database.session() as session:
        for envelope in events:
            add_event(session, envelope)
    relay = OutboxRelay(database, kafka, service="test")
    try:
        assert await relay.publish_batch() == 3
        assert await relay.publish_batch() == 0
    finally:
        await relay.producer.drop()
        await database.dispose()
    published = [json.loads(r.value)["id"] for r in await read_topic(kafka, "referral.withdrawn")]
    assert published == [str(e.id) for e in events]
