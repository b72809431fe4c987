"""Relays are woken by the commit that gives them work (LISTEN/NOTIFY), and keep working without it.

The relays here poll only every 60 s, so an event published within a few seconds was published because
its commit woke the relay (or, after the listening connection was killed, because the relay
reconnected and looked again), never because a poll came round.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from sqlalchemy import text

from shared.db import Database
from shared.outbox import OutboxRelay, add_event, backlog
from shared.settings import KafkaSettings
from tests.integration.platform.test_mechanisms import TABLES, withdrawn
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

LONG_POLL_S = 60.0
SOON_S = 10.0  # far below the poll interval; generous for a loaded machine


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url)
    await database.create_tables(TABLES)
    yield database
    await database.dispose()


@pytest.fixture
async def relay(db: Database, kafka: KafkaSettings) -> AsyncIterator[OutboxRelay]:
    """A running relay that polls once a minute, once its listener listens."""
    relay = OutboxRelay(db, kafka, service="test", poll_interval_s=LONG_POLL_S)
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    await eventually(_flag(relay.wakeup.listening), within=SOON_S * 2, what="the relay to listen")
    # Warm-up: the test's fresh topic gets its partition leaders (seconds on a busy broker) while the
    # first event is published; what follows measures the wake-up, not the broker's start.
    await _commit_event(db)
    await eventually(lambda: _published(db), within=LONG_POLL_S / 2, what="the warm-up event")
    yield relay
    stop.set()
    await task


def _flag(event: asyncio.Event) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return event.is_set()

    return check


async def _commit_event(db: Database) -> None:
    async with db.session() as session:
        add_event(session, withdrawn())


async def _published(db: Database) -> bool:
    return await backlog(db) == 0


async def _listeners(db: Database) -> list[int]:
    """The backends of this database listening for the relay (its dedicated connection)."""
    async with db.session() as session:
        rows = await session.execute(
            text(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                "AND query LIKE 'LISTEN %' AND pid <> pg_backend_pid()"
            )
        )
        return [int(pid) for pid in rows.scalars()]


async def test_a_commit_wakes_the_relay_long_before_its_poll(db: Database, relay: OutboxRelay) -> None:
    assert relay.poll_interval_s == LONG_POLL_S
    for _ in range(3):  # each commit, not only the first, wakes it
        await _commit_event(db)
        await eventually(lambda: _published(db), within=SOON_S, interval=0.05, what="the woken relay")


async def test_a_killed_listener_is_replaced_and_nothing_committed_meanwhile_waits(
    db: Database, relay: OutboxRelay
) -> None:
    [killed] = await eventually(lambda: _listeners(db), within=SOON_S, what="the relay's listener")
    async with db.session() as session:
        assert (await session.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": killed})).scalar()
    await _commit_event(db)  # committed while nobody may be listening: its notification can be lost
    await eventually(lambda: _published(db), within=SOON_S, interval=0.05, what="the event after the kill")

    async def replaced() -> bool:
        pids = await _listeners(db)
        return len(pids) == 1 and killed not in pids

    await eventually(replaced, within=SOON_S, what="a new listening connection")
    await _commit_event(db)  # and the new connection wakes the relay again
    await eventually(
        lambda: _published(db), within=SOON_S, interval=0.05, what="the event after reconnecting"
    )


async def test_on_sqlite_the_relay_polls_as_before(kafka: KafkaSettings) -> None:
    database = Database("sqlite+aiosqlite:///:memory:")
    relay = OutboxRelay(database, kafka, service="test")
    try:
        assert not relay.wakeup.enabled
        assert relay.poll_interval_s < 0.1
    finally:
        await database.dispose()
