"""Traces through the outbox, the broker and the consumer loop, and the metrics they keep, on the real
broker and database."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest
from aiokafka import AIOKafkaConsumer
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client import REGISTRY
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from shared import tracing
from shared.consumer import ConsumerLoop, ProcessedEvent
from shared.db import Database
from shared.events import Envelope, ReferralWithdrawn
from shared.handlers import Handlers, PoisonMessage
from shared.kafka import new_consumer
from shared.outbox import OutboxRecord, OutboxRelay, add_event
from shared.settings import KafkaSettings, TracingSettings
from shared.store import tables
from tests.support import builders
from tests.support.kafka import produce, read_topic, wait_consumed
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

TABLES = tables(OutboxRecord, ProcessedEvent)


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url)
    await database.create_tables(TABLES)
    yield database
    await database.dispose()


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Producer and consumer each trace as a service of their own, into one in-memory exporter."""
    exporter = InMemorySpanExporter()
    providers = {
        name: tracing.setup(name, TracingSettings(), exporter=exporter) for name in ("writer", "reader")
    }
    yield exporter
    for name, provider in providers.items():
        assert provider is not None
        tracing.shutdown(name, provider)


def _now(condition: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    """``condition`` as the awaitable check ``eventually`` takes."""

    async def check() -> bool:
        return condition()

    return check


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_a_trace_goes_from_the_writing_transaction_through_kafka_to_the_handler(
    db: Database, kafka: KafkaSettings, spans: InMemorySpanExporter
) -> None:
    handled: list[str | None] = []

    async def handler(session: AsyncSession, envelope: Envelope, data: ReferralWithdrawn) -> None:
        handled.append(tracing.current_traceparent())

    envelope = builders.wrap(builders.withdrawn(), None, producer="writer")
    with tracing.tracer("writer").start_as_current_span("POST /v1/referrals", kind=SpanKind.SERVER) as root:
        async with db.session() as session:
            add_event(session, envelope)
    relay = OutboxRelay(db, kafka, service="writer")
    assert await relay.publish_batch() == 1
    await relay.producer.drop()
    [record] = await read_topic(kafka, "referral.withdrawn")
    headers = dict(record.headers)
    trace_id = format(root.get_span_context().trace_id, "032x")
    assert headers["traceparent"].decode().split("-")[1] == trace_id, "the record carries the writer's trace"

    loop = ConsumerLoop(
        db, kafka, service="reader", group_id="traced", handlers=Handlers().on(ReferralWithdrawn, handler)
    )
    stop = asyncio.Event()
    task = asyncio.create_task(loop.run(stop))
    await eventually(_now(lambda: len(handled) == 1), what="the event to be handled")
    stop.set()
    await task
    assert handled[0] is not None and handled[0].split("-")[1] == trace_id, "the handler runs in the trace"

    tracing._providers["writer"].force_flush()
    tracing._providers["reader"].force_flush()
    finished = {s.name: s for s in spans.get_finished_spans()}
    publish, process = finished["referral.withdrawn publish"], finished["referral.withdrawn process"]
    assert publish.kind == SpanKind.PRODUCER and publish.parent is not None
    assert publish.parent.span_id == root.get_span_context().span_id
    assert process.kind == SpanKind.CONSUMER and process.parent is not None
    assert process.parent.span_id == publish.context.span_id
    assert process.resource.attributes["service.name"] == "reader"
    assert process.attributes is not None and process.attributes["trialroute.referral_id"] == str(
        envelope.referral_id
    )


async def test_without_an_endpoint_nothing_is_traced_and_records_still_carry_a_given_context(
    db: Database, kafka: KafkaSettings
) -> None:
    assert tracing.setup("quiet", TracingSettings()) is None
    assert isinstance(tracing.tracer("quiet"), trace.NoOpTracer)
    assert tracing.current_traceparent() is None
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    async with db.session() as session:
        referral = uuid.uuid4()  # one key, one partition: read back in order
        first = builders.wrap(builders.withdrawn(), referral, producer="quiet")
        add_event(session, first, traceparent=traceparent)
        add_event(session, builders.wrap(builders.withdrawn(), referral, producer="quiet"))
    relay = OutboxRelay(db, kafka, service="quiet")
    assert await relay.publish_batch() == 2
    await relay.producer.drop()
    records = await read_topic(kafka, "referral.withdrawn")
    assert [dict(r.headers).get("traceparent") for r in records] == [traceparent.encode(), None]


async def test_the_relay_sets_the_backlog_and_the_oldest_unsent_age(
    db: Database, kafka: KafkaSettings
) -> None:
    service = f"relay-{uuid.uuid4().hex[:6]}"
    async with db.session() as session:
        for _ in range(3):
            add_event(session, builders.wrap(builders.withdrawn(), None, producer=service))
    async with db.session() as session:  # the rows are written at the commit above
        await session.execute(
            update(OutboxRecord).values(created_at=datetime.now(UTC) - timedelta(minutes=10))
        )
    relay = OutboxRelay(db, kafka, service=service)
    await relay.measure()
    assert sample("trialroute_outbox_backlog", service=service) == 3
    assert 590 <= sample("trialroute_outbox_oldest_unsent_seconds", service=service) < 700
    while await relay.publish_batch():
        pass
    await relay.producer.drop()
    await relay.measure()
    assert sample("trialroute_outbox_backlog", service=service) == 0
    assert sample("trialroute_outbox_oldest_unsent_seconds", service=service) == 0


async def test_lag_per_group_and_partition_and_dead_letters_are_counted(
    db: Database, kafka: KafkaSettings
) -> None:
    service, group = f"lag-{uuid.uuid4().hex[:6]}", f"lag-{uuid.uuid4().hex[:6]}"

    async def handle(session: AsyncSession, envelope: Envelope, data: ReferralWithdrawn) -> None:
        if data.reason == "poison":
            raise PoisonMessage("never")

    key = str(uuid.uuid4())
    for _ in range(4):
        envelope = builders.wrap(builders.withdrawn(), uuid.UUID(key), producer="test")
        await produce(kafka, "referral.withdrawn", envelope.to_bytes(), key.encode())
    loop = ConsumerLoop(
        db,
        kafka,
        service=service,
        group_id=group,
        handlers=Handlers().on(ReferralWithdrawn, handle),
        lag_interval_s=0.1,
    )

    def lag() -> dict[str, float]:
        return {
            s.labels["partition"]: s.value
            for m in REGISTRY.collect()
            if m.name == "trialroute_consumer_lag"
            for s in m.samples
            if s.labels.get("group") == group and s.labels["topic"] == "referral.withdrawn"
        }

    # A member of the group that has committed nothing yet: the four records are behind.
    member = new_consumer(kafka, group_id=group, topics=["referral.withdrawn"])
    await member.start()
    try:
        await eventually(lambda: _assigned(member), what="the partitions to be assigned")
        await loop.record_lag(member)
    finally:
        await member.stop()
    assert sum(lag().values()) == 4 and len(lag()) == kafka.partitions, "one series per partition"

    stop = asyncio.Event()
    task = asyncio.create_task(loop.run(stop))
    await wait_consumed(kafka, group, "referral.withdrawn")
    await eventually(
        _now(lambda: sum(lag().values()) == 0), what="the lag to fall to zero once all is committed"
    )
    poison = builders.wrap(builders.withdrawn(reason="poison"), uuid.UUID(key), producer="test")
    await produce(kafka, "referral.withdrawn", poison.to_bytes(), key.encode())
    await eventually(
        _now(
            lambda: sample("trialroute_dead_letters_total", service=service, topic="referral.withdrawn") == 1
        ),
        what="the dead letter to be counted",
    )
    stop.set()
    await task


async def _assigned(member: AIOKafkaConsumer) -> bool:
    await member.getmany(timeout_ms=100)
    return bool(member.assignment())
