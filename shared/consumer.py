"""The idempotent consumer loop every service runs.

Handlers run inside a database transaction that also records the event ids, and offsets are committed
only after that transaction commits: the records of one poll go together in one transaction, and if any
of them fails, one transaction per record. A redelivered event finds its id already recorded and changes
nothing. Failures split in two:

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
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.structs import OffsetAndMetadata
from pydantic import ValidationError
from sqlalchemy import exc as sa_exc
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import Field, SQLModel, col

from shared.db import Database, is_transient_error
from shared.events import DEAD_LETTER_SUFFIX, Envelope, UnknownEventType
from shared.kafka import new_consumer, new_producer
from shared.observability import metrics, referral_context
from shared.settings import KafkaSettings

log = logging.getLogger(__name__)

Handler = Callable[[AsyncSession, Envelope, Any], Awaitable[None]]
"""``handler(session, envelope, data)``: ``data`` is the envelope's validated, typed payload."""


@dataclass(frozen=True)
class Together:
    """A handler that takes all of a transaction's new events of its types in one call, in order, so
    that it can read and write them with a few statements instead of a few per event. It runs after the
    per-event handlers of the same transaction; a record handled alone comes as a list of one."""

    handle: Callable[[AsyncSession, list[tuple[Envelope, Any]]], Awaitable[None]]


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
        handlers: Mapping[str, Handler | Together],
        attempts_before_dead_letter: int = 3,
        max_backoff_s: float = 5.0,
        transaction_max: int = 50,
    ) -> None:
        self.db = db
        self.kafka = kafka
        self.service = service
        self.group_id = group_id
        self.handlers = dict(handlers)
        self.attempts_before_dead_letter = attempts_before_dead_letter
        self.max_backoff_s = max_backoff_s
        self.transaction_max = transaction_max
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
        # A transaction per record cost more than most handlers (BEGIN, the processed-id lookup, an
        # fsync'd COMMIT), so records are first handled together, up to ``transaction_max`` in one
        # transaction. Any failure in it rolls the whole group back and its records are handled one at a
        # time, where retries and dead letters are decided per record. Offsets are committed once per
        # group, after its transactions committed; a crash before that redelivers records whose ids are
        # recorded, which then change nothing.
        records = [record for recs in batch.values() for record in recs]  # each partition in order
        for start in range(0, len(records), self.transaction_max):
            if stop.is_set():
                return
            group = records[start : start + self.transaction_max]
            if len(group) > 1 and await self._apply_together(group):
                await consumer.commit(_next_offsets(group))
            else:
                await self._one_by_one(consumer, group, stop)

    async def _one_by_one(
        self, consumer: AIOKafkaConsumer, records: list[ConsumerRecord[bytes, bytes]], stop: asyncio.Event
    ) -> None:
        """Each record in its own transaction; partitions are independent, so they go concurrently."""
        by_partition: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]] = {}
        for record in records:
            by_partition.setdefault(TopicPartition(record.topic, record.partition), []).append(record)

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

        await asyncio.gather(*(one_partition(tp, recs) for tp, recs in by_partition.items()))

    async def _apply_together(self, records: list[ConsumerRecord[bytes, bytes]]) -> bool:
        """Handle ``records`` in one transaction; False (and nothing written) if any of them fails."""
        try:
            envelopes = [Envelope.from_bytes(record.value or b"") for record in records]
            items = [(envelope, envelope.payload()) for envelope in envelopes]
        except Exception:
            return False  # unreadable: the one-by-one path dead-letters it
        try:
            async with self.db.session() as session:
                outcomes = await self._handle_in(session, items)
        except Exception as exc:
            log.info(
                "records handled one at a time after a group failed",
                extra={"error": type(exc).__name__, "records": len(records)},
            )
            return False
        for record, outcome in zip(records, outcomes, strict=True):
            topic = record.topic.removeprefix(self.kafka.topic_prefix)
            metrics.events_consumed.labels(self.service, topic, outcome).inc()
        return True

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
        if envelope.type not in self.handlers:
            return "ignored"
        data = envelope.payload()
        async with self.db.session() as session:
            [outcome] = await self._handle_in(session, [(envelope, data)])
        return outcome

    async def _handle_in(self, session: AsyncSession, items: list[tuple[Envelope, Any]]) -> list[str]:
        """Handle each event in the caller's transaction once per consumer group: an id recorded before,
        or a second copy in ``items``, is a duplicate. Returns each event's outcome."""
        ids = [str(envelope.id) for envelope, _ in items if envelope.type in self.handlers]
        query = select(col(ProcessedEvent.event_id)).where(
            col(ProcessedEvent.consumer) == self.group_id, col(ProcessedEvent.event_id).in_(ids)
        )
        seen = set((await session.execute(query)).scalars()) if ids else set()
        outcomes: list[str] = []
        together: dict[Together, list[tuple[Envelope, Any]]] = {}
        processed: list[dict[str, Any]] = []
        now = datetime.now(UTC)
        for envelope, data in items:
            handler = self.handlers.get(envelope.type)
            event_id = str(envelope.id)
            if handler is None:
                outcomes.append("ignored")
            elif event_id in seen:
                outcomes.append("duplicate")
            else:
                seen.add(event_id)
                processed.append({"consumer": self.group_id, "event_id": event_id, "processed_at": now})
                if isinstance(handler, Together):
                    together.setdefault(handler, []).append((envelope, data))
                else:
                    with referral_context(envelope.referral_id, envelope.trace):
                        await handler(session, envelope, data)
                outcomes.append("handled")
        for batched, fresh in together.items():
            await batched.handle(session, fresh)
        if processed:  # one multi-row INSERT; ORM objects cost more than the rows themselves
            await session.execute(insert(ProcessedEvent), processed)
        return outcomes

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


def _next_offsets(records: list[ConsumerRecord[bytes, bytes]]) -> dict[TopicPartition, OffsetAndMetadata]:
    """Where each partition resumes after ``records`` (each partition's records in offset order)."""
    return {TopicPartition(r.topic, r.partition): OffsetAndMetadata(r.offset + 1, "") for r in records}


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
