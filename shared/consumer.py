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
import contextlib
import json
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, TypeAlias

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.structs import OffsetAndMetadata
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind
from pydantic import ValidationError
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import Field, SQLModel, col

from shared import tracing
from shared.db import Database
from shared.dead_letters import DeadLetters, DeadLetterSink
from shared.events import Envelope, UnknownEventType
from shared.handlers import Handlers, Item, PoisonMessage, Together
from shared.kafka import new_consumer
from shared.observability import metrics, referral_context
from shared.retry import is_transient, pause, quietly, until_stopped
from shared.settings import KafkaSettings
from shared.store import timestamp, utcnow

log = logging.getLogger(__name__)

Record: TypeAlias = "ConsumerRecord[bytes, bytes]"
Offsets: TypeAlias = dict[TopicPartition, OffsetAndMetadata]
Commit: TypeAlias = Callable[[Offsets], Awaitable[None]]


PERMANENT = (PoisonMessage, ValidationError, UnknownEventType, json.JSONDecodeError, UnicodeDecodeError)
"""Dead-lettered at the first attempt. Transient failures (``shared.retry.is_transient``) are retried
without end; anything else a few times, then dead-lettered."""


class _Stopping(Exception):
    """Stop was asked while a record waited for a retry: leave it uncommitted for the next owner."""


class ProcessedEvent(SQLModel, table=True):
    """Event ids a consumer group has handled, written in the handler's own transaction."""

    __tablename__ = "processed_events"

    consumer: str = Field(primary_key=True)
    event_id: str = Field(primary_key=True)
    processed_at: datetime = timestamp()


class ConsumerLoop:
    """Consume the events ``handlers`` take as one member of ``group_id``."""

    def __init__(
        self,
        db: Database,
        kafka: KafkaSettings,
        *,
        service: str,
        group_id: str,
        handlers: Handlers,
        attempts_before_dead_letter: int = 3,
        first_backoff_s: float = 0.2,
        max_backoff_s: float = 5.0,
        transaction_max: int = 50,
        gather_ms: int = 0,
        dead_letters: DeadLetterSink | None = None,
        lag_interval_s: float = 10.0,
    ) -> None:
        self.db = db
        self.kafka = kafka
        self.service = service
        self.group_id = group_id
        self.handlers = handlers
        self.attempts_before_dead_letter = attempts_before_dead_letter
        self.first_backoff_s = first_backoff_s
        self.max_backoff_s = max_backoff_s
        self.transaction_max = transaction_max
        self.gather_ms = gather_ms
        self.dead_letters = dead_letters or DeadLetters(kafka, service=service, consumer=group_id)
        self.assigned: set[TopicPartition] = set()
        self.lag_interval_s = lag_interval_s
        self._lag_series: set[TopicPartition] = set()
        for topic in handlers.topics:  # at zero from the start, so the first dead letter is an increase
            metrics.dead_letters.labels(service, topic)

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set; a broker outage restarts the client after a pause."""
        lag: asyncio.Task[None] | None = None
        while not stop.is_set():
            consumer = new_consumer(
                self.kafka, group_id=self.group_id, topics=self.handlers.topics, gather_ms=self.gather_ms
            )
            try:
                await consumer.start()
                lag = asyncio.create_task(self._measure_lag(consumer, stop), name="consumer-lag")
                while not stop.is_set():
                    batch = await consumer.getmany(timeout_ms=200)
                    self.assigned = set(consumer.assignment())
                    if batch:
                        # each partition's records in order
                        records = [record for recs in batch.values() for record in recs]
                        await self.process(records, stop, consumer.commit)
            except _Stopping:
                break
            except Exception as exc:
                log.warning("consumer restarting", extra={"error": type(exc).__name__, "detail": str(exc)})
                await pause(stop, 1.0)
            finally:
                if lag is not None:
                    lag.cancel()
                    await asyncio.gather(lag, return_exceptions=True)
                    lag = None
                self.assigned = set()
                for tp in self._lag_series:  # this member no longer reports them
                    metrics.consumer_lag.remove(self.service, self.group_id, *self._lag_labels(tp))
                self._lag_series.clear()
                await quietly(consumer.stop())
        await self.dead_letters.close()

    async def process(self, records: Sequence[Record], stop: asyncio.Event, commit: Commit) -> None:
        """Handle polled records for good and ``commit`` the offsets after them: the loop's one path,
        which tests also drive directly (without a broker, ``commit`` just records the offsets)."""
        # A transaction per record cost more than most handlers (BEGIN, the processed-id lookup, an
        # fsync'd COMMIT), so records are first handled together, up to ``transaction_max`` in one
        # transaction. Any failure in it rolls the whole group back and its records are handled one at a
        # time, where retries and dead letters are decided per record. Offsets are committed once per
        # group, after its transactions committed; a crash before that redelivers records whose ids are
        # recorded, which then change nothing.
        for start in range(0, len(records), self.transaction_max):
            if stop.is_set():
                return
            group = records[start : start + self.transaction_max]
            if len(group) > 1 and await self._apply_together(group):
                await commit(_next_offsets(group))
            else:
                await self._one_by_one(group, stop, commit)

    async def _one_by_one(self, records: Sequence[Record], stop: asyncio.Event, commit: Commit) -> None:
        """Each record in its own transaction; partitions are independent, so they go concurrently."""
        by_partition: dict[TopicPartition, list[Record]] = {}
        for record in records:
            by_partition.setdefault(TopicPartition(record.topic, record.partition), []).append(record)

        async def one_partition(tp: TopicPartition, records: list[Record]) -> None:
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
                        await commit({tp: OffsetAndMetadata(handled + 1, "")})
                raise
            if handled is not None:
                await commit({tp: OffsetAndMetadata(handled + 1, "")})

        await asyncio.gather(*(one_partition(tp, recs) for tp, recs in by_partition.items()))

    async def _apply_together(self, records: Sequence[Record]) -> bool:
        """Handle ``records`` in one transaction; False (and nothing written) if any of them fails."""
        try:
            envelopes = [Envelope.from_bytes(record.value or b"") for record in records]
            items = [(envelope, envelope.payload()) for envelope in envelopes]
        except Exception:
            return False  # unreadable: the one-by-one path dead-letters it
        traces = {
            e.id: tracing.context_from_headers(r.headers) for e, r in zip(envelopes, records, strict=True)
        }
        try:
            async with self.db.session() as session:
                outcomes = await self._handle_in(session, items, traces)
        except Exception as exc:
            log.info(
                "records handled one at a time after a group failed",
                extra={"error": type(exc).__name__, "records": len(records)},
            )
            return False
        for record, outcome in zip(records, outcomes, strict=True):
            self._count(record, outcome)
        return True

    async def handle_record(self, record: Record, stop: asyncio.Event) -> None:
        """Handle one record for good: handled, skipped as a duplicate, or dead-lettered. Transient
        failures are retried until they pass (the partition waits; nothing is skipped); other failures
        ``attempts_before_dead_letter`` times; a record that can never be read or handled at once."""

        def keeps_failing(state: Any) -> bool:
            error = state.outcome.exception() if state.outcome else None
            return (
                error is not None
                and not is_transient(error)
                and state.attempt_number >= self.attempts_before_dead_letter
            )

        def retrying(state: Any) -> None:
            error = state.outcome.exception() if state.outcome else None
            topic = record.topic.removeprefix(self.kafka.topic_prefix)
            log.warning("handler failed, retrying", extra={"error": type(error).__name__, "topic": topic})

        try:
            async for attempt in until_stopped(
                stop,
                retry=lambda error: not isinstance(error, PERMANENT),
                give_up=keeps_failing,
                first_s=self.first_backoff_s,
                max_s=self.max_backoff_s,
                before_sleep=retrying,
            ):
                with attempt:
                    envelope = Envelope.from_bytes(record.value or b"")
                    with referral_context(envelope.referral_id, envelope.trace):
                        outcome = await self._apply(envelope, tracing.context_from_headers(record.headers))
        except PERMANENT as exc:
            await self._dead_letter(record, exc, stop)
            return
        except Exception as exc:
            if stop.is_set():
                raise _Stopping from exc
            log.exception("handler keeps failing, dead-lettering", extra={"topic": record.topic})
            await self._dead_letter(record, exc, stop)
            return
        self._count(record, outcome)

    async def _apply(self, envelope: Envelope, trace: Context | None) -> str:
        if self.handlers.of(envelope) is None:
            return "ignored"
        data = envelope.payload()
        async with self.db.session() as session:
            [outcome] = await self._handle_in(session, [(envelope, data)], {envelope.id: trace})
        return outcome

    async def _handle_in(
        self, session: AsyncSession, items: list[Item], traces: dict[uuid.UUID, Context | None] | None = None
    ) -> list[str]:
        """Handle each event in the caller's transaction once per consumer group: an id recorded before,
        or a second copy in ``items``, is a duplicate. Returns each event's outcome.

        Each event's handling is a span that continues the trace its record's headers carry (``traces``),
        so what the handler writes (its statements, the events it queues) belongs to that trace."""
        traces = traces or {}
        handlers = [self.handlers.of(envelope) for envelope, _ in items]
        ids = [str(envelope.id) for (envelope, _), handler in zip(items, handlers, strict=True) if handler]
        query = select(col(ProcessedEvent.event_id)).where(
            col(ProcessedEvent.consumer) == self.group_id, col(ProcessedEvent.event_id).in_(ids)
        )
        seen = set((await session.execute(query)).scalars()) if ids else set()
        outcomes: list[str] = []
        together: dict[Together, list[Item]] = {}
        processed: list[dict[str, Any]] = []
        now = utcnow()
        for (envelope, data), handler in zip(items, handlers, strict=True):
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
                    with (
                        referral_context(envelope.referral_id, envelope.trace),
                        self._span(envelope, traces.get(envelope.id)),
                    ):
                        await handler.handle(session, envelope, data)
                outcomes.append("handled")
        for batched, fresh in together.items():
            with self._batch_span(fresh, traces):
                await batched.handle(session, fresh)
        if processed:  # one multi-row INSERT; ORM objects cost more than the rows themselves
            await session.execute(insert(ProcessedEvent), processed)
        return outcomes

    async def _dead_letter(self, record: Record, error: BaseException, stop: asyncio.Event) -> None:
        try:
            await self.dead_letters.send(record, error, stop)
        except Exception as exc:  # stopped before the letter was stored: the record stays uncommitted
            raise _Stopping from exc
        self._count(record, "dead_lettered")

    def _count(self, record: Record, outcome: str) -> None:
        topic = record.topic.removeprefix(self.kafka.topic_prefix)
        metrics.events_consumed.labels(self.service, topic, outcome).inc()

    def _span(self, envelope: Envelope, parent: Context | None) -> contextlib.AbstractContextManager[Any]:
        """A consumer span for one event, the child of the span that published it (ids only)."""
        return tracing.tracer(self.service).start_as_current_span(
            f"{envelope.type} process",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes={
                "messaging.system": "kafka",
                "messaging.operation.type": "process",
                "messaging.destination.name": envelope.type,
                "messaging.consumer.group.name": self.group_id,
                "messaging.message.id": str(envelope.id),
                "trialroute.referral_id": str(envelope.referral_id),
            },
        )

    def _batch_span(
        self, items: list[Item], traces: dict[uuid.UUID, Context | None]
    ) -> contextlib.AbstractContextManager[Any]:
        """One span for a handler that takes several events at once: the child of their one trace, or
        linked to each of theirs when they come from several."""
        parent, links = tracing.batch_parent([traces.get(envelope.id) for envelope, _ in items])
        return tracing.tracer(self.service).start_as_current_span(
            f"{items[0][0].type} process" if len(items) == 1 else "events process",
            context=parent,
            kind=SpanKind.CONSUMER,
            links=links,
            attributes={
                "messaging.system": "kafka",
                "messaging.operation.type": "process",
                "messaging.consumer.group.name": self.group_id,
                "messaging.batch.message_count": len(items),
            },
        )

    async def _measure_lag(self, consumer: AIOKafkaConsumer, stop: asyncio.Event) -> None:
        """``record_lag`` every ``lag_interval_s``, beside the polling (which it never holds up: asking
        the broker for offsets can wait out a rebalance)."""
        while not stop.is_set():
            try:
                await self.record_lag(consumer)
            except Exception as exc:  # the next round tries again; the loop's own errors restart it
                log.info("consumer lag not measured", extra={"error": type(exc).__name__})
            await pause(stop, self.lag_interval_s)

    async def record_lag(self, consumer: AIOKafkaConsumer) -> None:
        """Lag per partition: the end offset minus the group's committed offset (what an operator and
        a lag-based autoscaler see), for the partitions this member owns."""
        partitions = sorted(consumer.assignment())
        for gone in self._lag_series - set(partitions):  # now another member's: it reports them
            self._lag_series.discard(gone)
            metrics.consumer_lag.remove(self.service, self.group_id, *self._lag_labels(gone))
        if not partitions:
            return
        ends = await consumer.end_offsets(partitions)
        starts: dict[TopicPartition, int] | None = None
        for tp in partitions:
            committed = await consumer.committed(tp)
            if committed is None:  # nothing committed yet: the group starts at the earliest record
                starts = starts or await consumer.beginning_offsets(partitions)
                committed = starts[tp]
            lag = max(0, ends[tp] - committed)
            metrics.consumer_lag.labels(self.service, self.group_id, *self._lag_labels(tp)).set(lag)
            self._lag_series.add(tp)

    def _lag_labels(self, tp: TopicPartition) -> tuple[str, str]:
        return tp.topic.removeprefix(self.kafka.topic_prefix), str(tp.partition)


def _next_offsets(records: Sequence[Record]) -> Offsets:
    """Where each partition resumes after ``records`` (each partition's records in offset order)."""
    return {TopicPartition(r.topic, r.partition): OffsetAndMetadata(r.offset + 1, "") for r in records}
