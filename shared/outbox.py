"""Transactional outbox: events are rows written in the same transaction as the state they describe.

A relay publishes unsent rows and marks them sent. A crash between the broker's acknowledgement and the
commit republishes the row; consumers are idempotent on the event id, so nothing is handled twice.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import SpanKind
from sqlalchemy import (
    Column,
    Index,
    Row,
    Text,
    TextClause,
    bindparam,
    event,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session
from sqlmodel import Field, SQLModel, col

from shared import tracing
from shared.db import Database
from shared.events import Envelope
from shared.kafka import Producer
from shared.observability import metrics
from shared.retry import keep_working
from shared.settings import KafkaSettings
from shared.store import bigint_pk, table_of, timestamp, utcnow
from shared.wakeup import Wakeup, channel, notify_on_commit, take_pending

log = logging.getLogger(__name__)


class OutboxRecord(SQLModel, table=True):
    __tablename__ = "outbox"
    __table_args__ = (Index("ix_outbox_unsent", "published_at", "id"),)

    id: int | None = bigint_pk()
    event_id: uuid.UUID = Field(unique=True)
    topic: str
    key: str
    payload: str = Field(sa_column=Column(Text, nullable=False))
    created_at: datetime = timestamp()
    published_at: datetime | None = timestamp(nullable=True, now_by_default=False)
    claim: str | None = Field(default=None, description="SQLite path: which relay claimed the row")
    traceparent: str | None = Field(
        default=None, max_length=100, description="W3C trace context of the transaction that wrote the row"
    )


_QUEUED = "trialroute.outbox"  # session.info key: the rows ``add_event`` queued in this transaction


def add_event(session: AsyncSession, envelope: Envelope, *, traceparent: str | None = None) -> None:
    """Queue an event in the caller's transaction; it is published only if that transaction commits,
    and the commit wakes the producing service's relay (``NOTIFY`` on PostgreSQL). The trace in
    progress (or ``traceparent``) goes with it, for its consumers to continue.

    The rows are written right before the commit, all in one statement that also sends the
    transaction's notifications: one round trip, and no ORM object per event."""
    wake_relay(session, envelope.producer)
    session.sync_session.info.setdefault(_QUEUED, []).append(
        {
            "event_id": envelope.id,
            "topic": envelope.type,
            "key": str(envelope.referral_id),
            "payload": envelope.model_dump_json(),
            "created_at": utcnow(),
            "traceparent": traceparent or tracing.current_traceparent(),
        }
    )


def _write_queued(session: Session) -> None:
    """Before the commit: the queued rows in one INSERT; on PostgreSQL inside the statement that
    notifies the transaction's channels (a data-modifying CTE runs whether or not it is read)."""
    rows: list[dict[str, Any]] | None = session.info.pop(_QUEUED, None)
    if not rows:
        return
    if session.get_bind().dialect.name != "postgresql":
        session.execute(insert(table_of(OutboxRecord)), rows)
        return
    channels = sorted(take_pending(session))
    params: dict[str, Any] = {f"channel_{j}": name for j, name in enumerate(channels)}
    for i, row in enumerate(rows):
        params.update({f"{column}_{i}": value for column, value in row.items()})
    session.execute(_queue_statement(len(rows), len(channels)), params)


_COLUMNS = ("event_id", "topic", "key", "payload", "created_at", "traceparent")


@functools.lru_cache(maxsize=128)
def _queue_statement(rows: int, channels: int) -> TextClause:
    """``WITH queued AS (INSERT ... VALUES (...), ...) SELECT pg_notify(...), ...`` for this many rows and
    channels. Spelled as text, one per shape: SQLAlchemy compiles a multi-row VALUES on every execution
    (it has no cache key), which costs more than the ORM's flush did; a text statement is compiled once.
    Rows in one VALUES list get their ids in order, as the relay publishes them."""
    table = table_of(OutboxRecord)
    values = ", ".join("(" + ", ".join(f":{column}_{i}" for column in _COLUMNS) + ")" for i in range(rows))
    notify = ", ".join(f"pg_notify(:channel_{j}, '')" for j in range(channels)) or "1"
    # Only our own names and placeholders go into the text; every value is a bound parameter.
    into = f"{table.name} ({', '.join(_COLUMNS)})"
    sql = f"WITH queued AS (INSERT INTO {into} VALUES {values}) SELECT {notify}"  # noqa: S608
    binds = [
        bindparam(f"{column}_{i}", type_=table.c[column].type) for i in range(rows) for column in _COLUMNS
    ]
    return text(sql).bindparams(*binds)


def _forget_queued(session: Session) -> None:
    session.info.pop(_QUEUED, None)


# Inserted before other listeners: the wake-up's own listener then finds the channels already sent.
event.listen(Session, "before_commit", _write_queued, insert=True)
event.listen(Session, "after_rollback", _forget_queued)


def relay_channel(service: str) -> str:
    """The channel a service's outbox relay listens on."""
    return channel(service, "outbox")


def wake_relay(session: AsyncSession, service: str) -> None:
    """Wake ``service``'s relay when this transaction commits (for rows added without ``add_event``)."""
    notify_on_commit(session, relay_channel(service))


async def backlog(db: Database) -> int:
    async with db.session() as session:
        result = await session.execute(
            select(func.count()).select_from(OutboxRecord).where(col(OutboxRecord.published_at).is_(None))
        )
        return int(result.scalar_one())


async def unsent(db: Database) -> tuple[int, datetime | None]:
    """How many rows wait to be published, and when the oldest of them was written."""
    async with db.session() as session:
        result = await session.execute(
            select(func.count(), func.min(OutboxRecord.created_at)).where(
                col(OutboxRecord.published_at).is_(None)
            )
        )
        count, oldest = result.one()
        return int(count), oldest


SQLITE_POLL_S = 0.05
"""SQLite has no notifications: the relay polls this often when idle."""
SAFETY_POLL_S = 1.0
"""With PostgreSQL's notifications the relay is woken by each commit that adds a row; it still polls
this often, for rows whose notification it missed (while its listening connection was down)."""


class OutboxRelay:
    """Publishes unsent outbox rows in order with an idempotent producer (``acks=all``), woken by the
    commits that add them (``shared.wakeup``)."""

    def __init__(
        self,
        db: Database,
        kafka: KafkaSettings,
        *,
        service: str,
        batch_size: int = 200,
        poll_interval_s: float | None = None,
        measure_interval_s: float = 5.0,
        gather_s: float = 0.0,
    ) -> None:
        self.db = db
        self.kafka = kafka
        self.service = service
        self.batch_size = batch_size
        self.wakeup = Wakeup(db, relay_channel(service))
        default_s = SAFETY_POLL_S if self.wakeup.enabled else SQLITE_POLL_S
        self.poll_interval_s = default_s if poll_interval_s is None else poll_interval_s
        self.measure_interval_s = measure_interval_s
        self.gather_s = gather_s  # after a wake-up, wait this long for more commits (one pass, one batch)
        self._measured_at = float("-inf")
        self.producer = Producer(kafka, client_id=f"{service}-relay")

    async def run(self, stop: asyncio.Event) -> None:
        """Relay until ``stop`` is set. A failure drops the producer (a timed-out send leaves it in an
        unknown state) and the rows stay unsent, to be tried again after a backoff."""
        try:
            async with self.wakeup.running(stop) as wake:
                await keep_working(
                    stop,
                    self.publish_batch,
                    idle_s=self.poll_interval_s,
                    on_failure=self._failed,
                    wake=wake,
                    first_backoff_s=SQLITE_POLL_S,
                    gather_s=self.gather_s,
                    batch=self.batch_size,
                )
        finally:
            await self.producer.drop()

    async def _failed(self, error: BaseException) -> None:
        log.warning("outbox relay failed, retrying", extra={"error": type(error).__name__})
        await self.producer.drop()

    async def publish_batch(self) -> int:
        """Claim, publish and mark one batch in one transaction; returns how many were published.
        Every ``measure_interval_s`` it also sets the backlog gauges."""
        if time.monotonic() - self._measured_at >= self.measure_interval_s:
            await self.measure()
        async with self.db.session() as session:
            rows = await self._claim(session)
            if not rows:
                return 0
            producer = await self.producer.get()
            futures = [
                await producer.send(
                    self.kafka.topic(row.topic),
                    value=row.payload.encode(),
                    key=row.key.encode(),
                    headers=self._headers(row.topic, row.key, row.traceparent),
                )
                for row in rows
            ]
            # A timeout here is ambiguous (the broker may have the records): the caller rebuilds the
            # producer and the rows stay unsent, so they are published again and deduplicated downstream.
            async with asyncio.timeout(self.kafka.send_timeout_s):
                await asyncio.gather(*futures)
            now = datetime.now(UTC)
            ids = [row.id for row in rows]
            await session.execute(
                update(OutboxRecord).where(col(OutboxRecord.id).in_(ids)).values(published_at=now)
            )
        metrics.outbox_published.labels(self.service).inc(len(rows))
        return len(rows)

    async def measure(self) -> None:
        """Set the backlog and the oldest unsent row's age (what the outbox alerts watch)."""
        self._measured_at = time.monotonic()
        count, oldest = await unsent(self.db)
        metrics.outbox_backlog.labels(self.service).set(count)
        age = 0.0
        if oldest is not None:
            oldest = oldest if oldest.tzinfo else oldest.replace(tzinfo=UTC)
            age = max(0.0, (datetime.now(UTC) - oldest).total_seconds())
        metrics.outbox_oldest_unsent.labels(self.service).set(age)

    def _headers(self, topic: str, key: str, traceparent: str | None) -> list[tuple[str, bytes]] | None:
        """The record's ``traceparent``: a publish span's, child of the writing transaction's, when this
        service traces; else the stored one as it is (the trace still continues downstream)."""
        if not traceparent:
            return None
        if tracing.enabled(self.service):
            span = tracing.tracer(self.service).start_span(
                f"{topic} publish",
                context=tracing.context_of(traceparent),
                kind=SpanKind.PRODUCER,
                attributes={
                    "messaging.system": "kafka",
                    "messaging.operation.type": "send",
                    "messaging.destination.name": topic,
                    "trialroute.referral_id": key,
                },
            )
            with trace.use_span(span, end_on_exit=True):
                traceparent = tracing.current_traceparent() or traceparent
        return [(tracing.TRACEPARENT, traceparent.encode())]

    async def _claim(self, session: AsyncSession) -> Sequence[Row[int | None, str, str, str, str | None]]:
        """The oldest unsent rows' columns the relay needs (plain rows: ORM objects cost more)."""
        columns = (
            col(OutboxRecord.id),
            col(OutboxRecord.topic),
            col(OutboxRecord.key),
            col(OutboxRecord.payload),
            col(OutboxRecord.traceparent),
        )
        unsent = (
            select(*columns)
            .where(col(OutboxRecord.published_at).is_(None))
            .order_by(col(OutboxRecord.id))
            .limit(self.batch_size)
        )
        if not self.db.is_sqlite:
            # Concurrent relays skip each other's rows instead of waiting or publishing them twice.
            result = await session.execute(unsent.with_for_update(skip_locked=True))
            return result.all()
        # SQLite has no row locks: a write first takes the database's write lock for this transaction,
        # so a second relay waits rather than reading the same rows.
        token = uuid.uuid4().hex
        ids = select(unsent.subquery().c.id)
        await session.execute(update(OutboxRecord).where(col(OutboxRecord.id).in_(ids)).values(claim=token))
        result = await session.execute(
            select(*columns).where(col(OutboxRecord.claim) == token).order_by(col(OutboxRecord.id))
        )
        return result.all()
