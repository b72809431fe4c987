"""Dead letters: records that can never be handled, kept with their error on ``<topic>.dlq``.

One model, ``DeadLetter``, is what every writer publishes (the consumer loop, the notifier's dispatcher
through its outbox) and what ops list and replay (``trialroute dead-letters``). Replaying is safe
because consumers are idempotent: a group that already handled the event skips it.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from datetime import datetime
from typing import Protocol

from aiokafka import ConsumerRecord
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.events import dead_letter_topic
from shared.kafka import Producer, connection, new_admin
from shared.observability import metrics
from shared.retry import always, until_stopped
from shared.settings import KafkaSettings
from shared.store import utcnow

log = logging.getLogger(__name__)

MAX_VALUE_BYTES = 256 * 1024
"""The most of the original value a letter carries; every event the services publish is far smaller
(request bodies stop at 64 KiB). Base64 grows a value by a third, and a letter over the broker's
message limit (1 MB by default) could never be published: its partition would wait forever."""


class FailedNotification(BaseModel):
    """Which email the notifier gave up on, when the letter is the dispatcher's."""

    id: int | None
    recipient_role: str
    template: str
    message_id: str
    attempts: int


class FailedWebhook(BaseModel):
    """Which webhook delivery the notifier gave up on (its retry window ran out)."""

    id: str
    endpoint_id: str
    event_type: str
    attempts: int
    last_status_code: int | None = None


class DeadLetter(BaseModel):
    """The error and the original record, enough to understand and replay it."""

    model_config = ConfigDict(extra="ignore")

    error: str = Field(description="the exception's type and message (no values of the record)")
    consumer: str = Field(description="the consumer group (or loop) that gave up")
    topic: str = Field(description="the full name of the topic the record came from (with any prefix)")
    partition: int | None = None
    offset: int | None = None
    timestamp: int | None = Field(default=None, description="the record's Kafka timestamp (ms)")
    key: str | None = None
    value_b64: str = Field(description="the original value, base64, cut at MAX_VALUE_BYTES")
    value_bytes: int
    value_truncated: bool = False
    failed_at: datetime = Field(default_factory=utcnow)
    notification: FailedNotification | None = None
    webhook: FailedWebhook | None = None
    dlq_partition: int | None = Field(default=None, description="where the letter is, when read back")
    dlq_offset: int | None = None

    @classmethod
    def of_value(cls, value: bytes, **fields: object) -> DeadLetter:
        """A letter carrying ``value`` (cut if too large to publish)."""
        return cls.model_validate(
            {
                **fields,
                "value_b64": base64.b64encode(value[:MAX_VALUE_BYTES]).decode(),
                "value_bytes": len(value),
                "value_truncated": len(value) > MAX_VALUE_BYTES,
            }
        )

    @classmethod
    def of_record(
        cls, record: ConsumerRecord[bytes, bytes], error: BaseException, *, consumer: str
    ) -> DeadLetter:
        return cls.of_value(
            record.value or b"",
            error=describe(error),
            consumer=consumer,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            timestamp=record.timestamp,
            key=record.key.decode(errors="replace") if record.key else None,
        )

    def value(self) -> bytes:
        return base64.b64decode(self.value_b64)

    def to_bytes(self) -> bytes:
        return self.model_dump_json(exclude={"dlq_partition", "dlq_offset"}, exclude_none=True).encode()


def describe(error: BaseException) -> str:
    """An error as a letter carries it: a validation error names the fields, never their values."""
    if isinstance(error, ValidationError):
        text = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors(include_input=False)
        )
    else:
        text = str(error)[:500]
    return f"{type(error).__name__}: {text}"


class DeadLetterSink(Protocol):
    """Where a consumer loop puts the records it gives up on."""

    async def send(
        self, record: ConsumerRecord[bytes, bytes], error: BaseException, stop: asyncio.Event
    ) -> None:
        """Store the record's letter for good; raise only if stopped before it is stored."""

    async def close(self) -> None: ...


class DeadLetters:
    """Publishes a consumer group's dead letters. The record must not vanish: until its letter is
    stored, publishing is retried and the partition waits (``until_stopped``)."""

    def __init__(self, kafka: KafkaSettings, *, service: str, consumer: str) -> None:
        self.kafka = kafka
        self.service = service
        self.consumer = consumer
        self.producer = Producer(kafka, client_id=f"{consumer}-dlq")

    async def send(
        self, record: ConsumerRecord[bytes, bytes], error: BaseException, stop: asyncio.Event
    ) -> None:
        """Publish the letter of ``record``; raises the last publish error if stopped before it is."""
        letter = DeadLetter.of_record(record, error, consumer=self.consumer)
        topic = record.topic.removeprefix(self.kafka.topic_prefix)
        async for attempt in until_stopped(stop, retry=always, first_s=0.2, before_sleep=self._failed):
            with attempt:
                producer = await self.producer.get()
                async with asyncio.timeout(self.kafka.send_timeout_s):
                    await producer.send_and_wait(
                        self.kafka.topic(dead_letter_topic(topic)), value=letter.to_bytes(), key=record.key
                    )
        metrics.dead_letters.labels(self.service, topic).inc()
        log.error(
            "record dead-lettered",
            extra={
                "topic": topic,
                "partition": record.partition,
                "offset": record.offset,
                "error": type(error).__name__,
            },
        )

    async def _failed(self, _state: object) -> None:
        log.warning("dead-letter publish failed, retrying")
        await self.producer.drop()

    async def close(self) -> None:
        await self.producer.drop()


async def list_dead_letters(kafka: KafkaSettings, topic: str) -> list[DeadLetter]:
    """Every dead letter of ``topic`` (unprefixed name, e.g. ``referral.submitted``), oldest first."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    name = kafka.topic(dead_letter_topic(topic))
    partitions = await _partitions(kafka, name)
    if not partitions:
        return []
    consumer = AIOKafkaConsumer(**connection(kafka), enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(name, p) for p in partitions]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        letters: list[DeadLetter] = []
        while any([await consumer.position(tp) < ends[tp] for tp in tps]):
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for record in records:
                    letter = DeadLetter.model_validate_json(record.value or b"{}")
                    letters.append(
                        letter.model_copy(
                            update={"dlq_partition": record.partition, "dlq_offset": record.offset}
                        )
                    )
        return sorted(letters, key=lambda x: x.failed_at)
    finally:
        await consumer.stop()


async def _partitions(kafka: KafkaSettings, name: str) -> list[int]:
    """The topic's partition ids, from the broker's full topic list.

    Not ``consumer.partitions_for_topic``: a consumer without a subscription knows no topic's
    metadata, so it answered None, and the consumer stopped at once raised CancelledError (aiokafka's
    group-less coordinator cancels a task that never ran): listing always failed. Not a metadata
    request naming the topic either: with auto-creation on, that would create a missing topic.
    """
    admin = new_admin(kafka)
    await admin.start()
    try:
        topics = await admin.describe_topics()
    finally:
        await admin.close()
    found = next((t for t in topics if t["topic"] == name and t["error_code"] == 0), None)
    return sorted(p["partition"] for p in found["partitions"]) if found else []


async def replay(kafka: KafkaSettings, letters: list[DeadLetter]) -> int:
    """Publish each letter's original record again, with its original key, to its original topic.

    Letters whose value was cut (``value_truncated``) are skipped: replaying a fragment would only
    dead-letter it again. Returns how many records were published."""
    whole = [letter for letter in letters if not letter.value_truncated]
    async with Producer(kafka, client_id="dead-letter-replay") as producer:
        for letter in whole:
            key = letter.key.encode() if letter.key else None
            await producer.send_and_wait(letter.topic, value=letter.value(), key=key)
    return len(whole)
