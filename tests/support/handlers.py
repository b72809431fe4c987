"""Run a service's consumer handlers through the consumer loop's own path without any server.

The records are built from envelopes as Kafka would hand them over and go through
``ConsumerLoop.process``: the grouped transaction, the one-by-one fallback, the processed-id check,
retries and dead letters. The store is an in-memory SQLite database with the service's tables;
committed offsets and dead letters are kept in memory. A test takes milliseconds. What needs real
servers (PostgreSQL locking, the broker, rebalancing) stays in the integration suites.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.structs import OffsetAndMetadata
from sqlalchemy import Table, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from shared.consumer import ConsumerLoop
from shared.db import Database
from shared.dead_letters import DeadLetter
from shared.events import Envelope
from shared.handlers import Handlers
from shared.outbox import OutboxRecord
from shared.settings import KafkaSettings


class MemoryDatabase(Database):
    """An in-memory SQLite store whose transactions take turns.

    All sessions share the one connection that holds the database, so two transactions open at once
    (the loop handles partitions concurrently when it goes one record at a time) would run inside each
    other: one's rollback could undo the other's writes, one's commit publish the other's half. Taking
    turns is what a SQLite file does too (one writer at a time)."""

    def __init__(self) -> None:
        super().__init__("sqlite+aiosqlite:///:memory:")
        self._turn = asyncio.Lock()

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        async with self._turn, super().session() as session:
            yield session


class MemoryDeadLetters:
    """Dead letters kept in a list instead of published (the loop's ``DeadLetterSink``)."""

    def __init__(self, consumer: str) -> None:
        self.consumer = consumer
        self.letters: list[DeadLetter] = []

    async def send(
        self, record: ConsumerRecord[bytes, bytes], error: BaseException, stop: asyncio.Event
    ) -> None:
        self.letters.append(DeadLetter.of_record(record, error, consumer=self.consumer))

    async def close(self) -> None:
        return None


@dataclass
class HandlerHarness:
    db: Database
    loop: ConsumerLoop
    dead_letters: MemoryDeadLetters
    committed: dict[TopicPartition, int] = field(default_factory=dict)
    _next_offset: dict[TopicPartition, int] = field(default_factory=dict)

    async def deliver(self, *events: Envelope | tuple[str, bytes], partition: int = 0) -> None:
        """Hand ``events`` to the loop as one poll of one partition per topic. An event is an envelope,
        or ``(topic, raw bytes)`` for a record no envelope can describe (poison)."""
        records = [self._record(event, partition) for event in events]
        await self.loop.process(records, asyncio.Event(), self._commit)

    def _record(self, event: Envelope | tuple[str, bytes], partition: int) -> ConsumerRecord[bytes, bytes]:
        if isinstance(event, Envelope):
            topic, value, key = event.type, event.to_bytes(), str(event.referral_id).encode()
        else:
            (topic, value), key = event, None
        tp = TopicPartition(topic, partition)
        offset = self._next_offset.get(tp, 0)
        self._next_offset[tp] = offset + 1
        return ConsumerRecord(
            topic=topic,
            partition=partition,
            offset=offset,
            timestamp=0,
            timestamp_type=0,
            key=key,
            value=value,
            checksum=None,
            serialized_key_size=len(key or b""),
            serialized_value_size=len(value),
            headers=(),
        )

    async def _commit(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        for tp, position in offsets.items():
            self.committed[tp] = max(self.committed.get(tp, 0), position.offset)

    async def published(self, topic: str | None = None) -> list[Envelope]:
        """The events the handlers queued in the outbox (of ``topic``, if given), oldest first."""
        query = select(col(OutboxRecord.topic), col(OutboxRecord.payload)).order_by(col(OutboxRecord.id))
        async with self.db.session() as session:
            rows = (await session.execute(query)).all()
        return [
            Envelope.model_validate(json.loads(payload)) for t, payload in rows if topic is None or t == topic
        ]

    def position(self, topic: str, partition: int = 0) -> int:
        """The offset the consumer group would resume ``topic`` at: everything before it is done."""
        return self.committed.get(TopicPartition(topic, partition), 0)


@asynccontextmanager
async def handler_harness(
    handlers: Handlers, tables: Sequence[Table], *, group: str = "harness"
) -> AsyncIterator[HandlerHarness]:
    """A harness whose store holds ``tables`` (the service's own), empty."""
    db = MemoryDatabase()
    await db.create_tables(tables)
    dead_letters = MemoryDeadLetters(group)
    loop = ConsumerLoop(
        db,
        KafkaSettings(),
        service="harness",
        group_id=group,
        handlers=handlers,
        first_backoff_s=0.001,
        max_backoff_s=0.001,
        dead_letters=dead_letters,
    )
    try:
        yield HandlerHarness(db, loop, dead_letters)
    finally:
        await db.dispose()
