"""The idempotent consumer loop every service runs.

For each record: the handler runs inside one database transaction that also records the event id, and
the offset is committed only after that transaction commits. A redelivered event finds its id already
recorded and changes nothing. Failures split in two:

- transient (database, broker or a downstream service unreachable): retried with backoff, the
  partition waits, nothing is skipped;
- permanent (unreadable payload, a handler that keeps failing): the record goes to ``<topic>.dlq`` with
  the error and the original bytes, and the partition moves on.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.structs import OffsetAndMetadata
from pydantic import ValidationError
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import Field, SQLModel

from shared.db import Database, is_transient_error
from shared.events import DEAD_LETTER_SUFFIX, Envelope, UnknownEventType
from shared.kafka import new_consumer, new_producer
from shared.observability import metrics, referral_context
from shared.settings import KafkaSettings

log = logging.getLogger(__name__)

Handler = Callable[[AsyncSession, Envelope, Any], Awaitable[None]]
"""``handler(session, envelope, data)``: ``data`` is the envelope's validated, typed payload."""


class TransientError(Exception):
    """A failure that will pass (a service down, a lock timeout): retry, never dead-letter."""


class PoisonMessage(Exception):
    """A record that can never be handled: dead-letter it at once."""


TRANSIENT = (TransientError, sa_exc.OperationalError, sa_exc.InterfaceError, ConnectionError, TimeoutError)
"""Retried without end; so are database errors ``shared.db.is_transient_error`` recognises by SQLSTATE."""
PERMANENT = (PoisonMessage, ValidationError, UnknownEventType, json.JSONDecodeError, UnicodeDecodeError)


class _Stopping(Exception):
    """Stop was asked while a record waited for a retry: leave it uncommitted for the next owner."""


class ProcessedEvent(SQLModel, table=True):
    """Event ids a consumer group has handled, written in the handler's own transaction."""

    __tablename__ = "processed_events"

    consumer: str = Field(primary_key=True)
    event_id: str = Field(primary_key=True)
    processed_at: datetime = Field(default_factory=lambda: datetime.now(UTC))


class ConsumerLoop:
    """Consume ``handlers``' event types as one member of ``group_id``."""

    def __init__(
        self,
        db: Database,
        kafka: KafkaSettings,
        *,
        service: str,
        group_id: str,
        handlers: Mapping[str, Handler],
        attempts_before_dead_letter: int = 3,
        max_backoff_s: float = 5.0,
    ) -> None:
        self.db = db
        self.kafka = kafka
        self.service = service
        self.group_id = group_id
        self.handlers = dict(handlers)
        self.attempts_before_dead_letter = attempts_before_dead_letter
        self.max_backoff_s = max_backoff_s
        self.assigned: set[TopicPartition] = set()
        self._producer: AIOKafkaProducer | None = None

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set; a broker outage restarts the client after a pause."""
        while not stop.is_set():
            consumer = new_consumer(self.kafka, group_id=self.group_id, topics=self.handlers)
            try:
                await consumer.start()
                while not stop.is_set():
                    batch = await consumer.getmany(timeout_ms=200)
                    self.assigned = set(consumer.assignment())
                    if batch:
                        await self._handle_batch(consumer, batch, stop)
                    await self._record_lag(consumer)
            except _Stopping:
                break
            except Exception as exc:
                log.warning("consumer restarting", extra={"error": type(exc).__name__, "detail": str(exc)})
                await _pause(stop, 1.0)
            finally:
                self.assigned = set()
                await _quietly(consumer.stop())
        await self._drop_producer()

    async def _handle_batch(
        self,
        consumer: AIOKafkaConsumer,
        batch: Mapping[TopicPartition, list[ConsumerRecord[bytes, bytes]]],
        stop: asyncio.Event,
    ) -> None:
        # Partitions are independent, so they are handled concurrently; order holds within each.
        # One offset commit per partition and batch, after the records' own transactions committed: a
        # commit is a broker round trip (and a write to its offsets log), which per record cost more
        # than the handling. A crash before it redelivers those records; their ids are recorded.
        async def one_partition(tp: TopicPartition, records: list[ConsumerRecord[bytes, bytes]]) -> None:
            handled: int | None = None
            try:
                for record in records:
                    if stop.is_set():
                        break
                    await self.handle_record(record, stop)
                    handled = record.offset
            except Exception:
                if handled is not None:  # keep what was done; the failure below is what matters
                    with contextlib.suppress(Exception):
                        await consumer.commit({tp: OffsetAndMetadata(handled + 1, "")})
                raise
            if handled is not None:
                await consumer.commit({tp: OffsetAndMetadata(handled + 1, "")})

        await asyncio.gather(*(one_partition(tp, recs) for tp, recs in batch.items()))

    async def handle_record(self, record: ConsumerRecord[bytes, bytes], stop: asyncio.Event) -> None:
        """Handle one record for good: handled, skipped as a duplicate, or dead-lettered."""
        topic = record.topic.removeprefix(self.kafka.topic_prefix)
        attempt = 0
        while True:
            attempt += 1
            try:
                envelope = Envelope.from_bytes(record.value or b"")
                with referral_context(envelope.referral_id, envelope.trace):
                    outcome = await self._apply(envelope)
                metrics.events_consumed.labels(self.service, topic, outcome).inc()
                return
            except PERMANENT as exc:
                await self._dead_letter(record, exc, stop)
                return
            except Exception as exc:
                if isinstance(exc, TRANSIENT) or is_transient_error(exc):
                    # e.g. a DBAPIError "the database system is shutting down": dead-lettering it after
                    # three quick attempts lost events whenever PostgreSQL restarted.
                    delay = min(0.1 * 2**attempt, self.max_backoff_s)
                    log.warning(
                        "transient failure, retrying", extra={"error": type(exc).__name__, "topic": topic}
                    )
                elif attempt >= self.attempts_before_dead_letter:
                    log.exception("handler keeps failing, dead-lettering", extra={"topic": topic})
                    await self._dead_letter(record, exc, stop)
                    return
                else:
                    delay = min(0.1 * 2**attempt, self.max_backoff_s)
            if stop.is_set():
                raise _Stopping
            await _pause(stop, delay)

    async def _apply(self, envelope: Envelope) -> str:
        handler = self.handlers.get(envelope.type)
        if handler is None:
            return "ignored"
        data = envelope.payload()
        async with self.db.session() as session:
            seen = await session.get(ProcessedEvent, (self.group_id, str(envelope.id)))
            if seen is not None:
                return "duplicate"
            session.add(ProcessedEvent(consumer=self.group_id, event_id=str(envelope.id)))
            await handler(session, envelope, data)
        return "handled"

    async def _dead_letter(
        self, record: ConsumerRecord[bytes, bytes], error: BaseException, stop: asyncio.Event
    ) -> None:
        topic = record.topic.removeprefix(self.kafka.topic_prefix)
        letter = dead_letter_body(record, error, consumer=self.group_id)
        delay = 0.2
        while True:
            try:
                producer = await self._ensure_producer()
                await asyncio.wait_for(
                    producer.send_and_wait(
                        self.kafka.topic(topic + DEAD_LETTER_SUFFIX),
                        value=json.dumps(letter).encode(),
                        key=record.key,
                    ),
                    timeout=self.kafka.send_timeout_s,
                )
                break
            except Exception as exc:
                # The record must not vanish: until the dead letter is stored, the partition waits.
                log.warning("dead-letter publish failed, retrying", extra={"error": type(exc).__name__})
                await self._drop_producer()
                if stop.is_set():
                    raise _Stopping from exc
                await _pause(stop, delay)
                delay = min(delay * 2, self.max_backoff_s)
        metrics.dead_letters.labels(self.service, topic).inc()
        metrics.events_consumed.labels(self.service, topic, "dead_lettered").inc()
        log.error(
            "record dead-lettered",
            extra={
                "topic": topic,
                "partition": record.partition,
                "offset": record.offset,
                "error": type(error).__name__,
            },
        )

    async def _record_lag(self, consumer: AIOKafkaConsumer) -> None:
        for tp in self.assigned:
            end = consumer.highwater(tp)
            if end is not None:
                lag = end - await consumer.position(tp)
                metrics.consumer_lag.labels(self.service, tp.topic).set(lag)

    async def _ensure_producer(self) -> AIOKafkaProducer:
        if self._producer is None:
            self._producer = await new_producer(self.kafka, client_id=f"{self.group_id}-dlq")
        return self._producer

    async def _drop_producer(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await _quietly(producer.stop())


MAX_DEAD_LETTER_VALUE_BYTES = 256 * 1024
"""The most of the original value a letter carries; every event the services publish is far smaller
(request bodies stop at 64 KiB). Base64 grows a value by a third, and a letter over the broker's
message limit (1 MB by default) could never be published: its partition would wait forever."""


def dead_letter_body(
    record: ConsumerRecord[bytes, bytes], error: BaseException, *, consumer: str
) -> dict[str, Any]:
    """The error and the original record, enough to understand and replay it. A value too large to
    carry is cut (``value_truncated``); the whole record stays on its topic at partition and offset."""
    value = record.value or b""
    return {
        "error": f"{type(error).__name__}: {_short(error)}",
        "consumer": consumer,
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "timestamp": record.timestamp,
        "key": record.key.decode(errors="replace") if record.key else None,
        "value_b64": base64.b64encode(value[:MAX_DEAD_LETTER_VALUE_BYTES]).decode(),
        "value_bytes": len(value),
        "value_truncated": len(value) > MAX_DEAD_LETTER_VALUE_BYTES,
        "failed_at": datetime.now(UTC).isoformat(),
    }


def _short(error: BaseException) -> str:
    if isinstance(error, ValidationError):
        return "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors(include_input=False)
        )
    return str(error)[:500]


async def _pause(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except TimeoutError:
        pass


async def _quietly(awaitable: Awaitable[Any]) -> None:
    try:
        await asyncio.wait_for(awaitable, timeout=10)
    except Exception:  # noqa: S110 - shutting down: nothing useful to do with the error
        pass
