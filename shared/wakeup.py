"""Wake a background loop when a commit gives it work (PostgreSQL ``LISTEN``/``NOTIFY``), not by a timer.

A writer calls ``notify_on_commit(session, channel)`` in the transaction that adds work (an outbox row, a
pending email); the channel is notified as part of that transaction, so PostgreSQL delivers it at commit
and drops it on rollback. A loop's ``Wakeup`` listens on a dedicated connection and sets its ``event``;
``shared.retry.keep_working`` waits on that event instead of sleeping out its whole poll interval.

Polling stays the safety net: a notification can be missed while the listening connection is down, so
the event is also set whenever listening (re)starts, and the loop still polls, only less often. On
SQLite there is nothing to listen to and polling is the whole behaviour.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.orm import Session

from shared.db import CONNECT_TIMEOUT_S, Database
from shared.retry import always, until_stopped, wait_any

log = logging.getLogger(__name__)

_PENDING = "trialroute.notify"  # session.info key: the channels to notify when the transaction commits
_NOTIFY = text("SELECT pg_notify(:channel, '')")


def channel(service: str, work: str) -> str:
    """The channel a service's loop for ``work`` listens on (one per service and kind of work)."""
    return f"trialroute_{service}_{work}"


def notify_on_commit(session: Any, name: str) -> None:
    """Have ``name`` notified by the transaction ``session`` is in, right before it commits (an
    ``AsyncSession`` or its sync ``Session``). Several calls in one transaction send one notification."""
    sync = getattr(session, "sync_session", session)
    sync.info.setdefault(_PENDING, set()).add(name)


def take_pending(session: Session) -> set[str]:
    """The channels this transaction is to notify, which the caller now notifies itself (the outbox
    does, in the statement that writes its rows: one round trip for both)."""
    names: set[str] = session.info.pop(_PENDING, set())
    return names


@event.listens_for(Session, "before_commit")
def _notify(session: Session) -> None:
    names = take_pending(session)
    if not names or session.get_bind().dialect.name != "postgresql":
        return
    for name in sorted(names):
        session.execute(_NOTIFY, {"channel": name})


@event.listens_for(Session, "after_rollback")
def _forget(session: Session) -> None:
    session.info.pop(_PENDING, None)


class Wakeup:
    """``event`` is set by each notification on ``name``, and each time listening starts (anything
    committed while nobody listened is then picked up at once). Reconnects with the shared backoff."""

    def __init__(self, db: Database, name: str, *, check_s: float = 1.0) -> None:
        self.db = db
        self.name = name
        self.check_s = check_s  # how often a silent connection is checked for being closed
        self.event = asyncio.Event()
        self.listening = asyncio.Event()  # set while a connection listens (tests wait on it)

    @property
    def enabled(self) -> bool:
        return not self.db.is_sqlite

    @contextlib.asynccontextmanager
    async def running(self, stop: asyncio.Event) -> AsyncIterator[asyncio.Event | None]:
        """Listen in the background for the duration of the block; yields the event to wait on (None on
        SQLite, where nothing is listened to)."""
        if not self.enabled:
            yield None
            return
        task = asyncio.create_task(self.run(stop), name=f"listen {self.name}")
        try:
            yield self.event
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def run(self, stop: asyncio.Event) -> None:
        """Listen until ``stop``; a dropped connection is reconnected after a backoff."""

        def failed(state: Any) -> None:
            error = state.outcome.exception() if state.outcome is not None else None
            extra = {"channel": self.name, "error": type(error).__name__}
            log.warning("listener lost, reconnecting", extra=extra)

        with contextlib.suppress(Exception):  # only when stopping
            retrying = until_stopped(stop, retry=always, first_s=0.1, max_s=5.0, before_sleep=failed)
            async for attempt in retrying:
                with attempt:
                    await self._listen(stop)

    async def _listen(self, stop: asyncio.Event) -> None:
        import asyncpg  # type: ignore[import-untyped]  # only processes that listen need it here

        dsn = self.db.url.set(drivername="postgresql").render_as_string(hide_password=False)
        connection = await asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT_S)
        lost = asyncio.Event()
        try:
            connection.add_termination_listener(lambda _connection: lost.set())
            await connection.add_listener(self.name, self._heard)
            self.listening.set()
            self.event.set()  # work committed while nobody listened
            while not stop.is_set() and not lost.is_set() and not connection.is_closed():
                await wait_any((stop, lost), self.check_s)
            if not stop.is_set():
                raise ConnectionError(f"listening connection on {self.name} closed")
        finally:
            self.listening.clear()
            if not connection.is_closed():
                connection.terminate()

    def _heard(self, *_args: object) -> None:
        self.event.set()
