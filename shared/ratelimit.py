"""Sliding-window counts kept in a service's own database, so that every instance of the service shares
one budget (a count in each process's memory would give N replicas N times the budget, and a restart a
fresh one).

A hit is one row ``(bucket, key, at)`` of ``rate_hit``; a service adds ``RateHit`` to its ``store.TABLES``.
A bucket is one limit (``"finder"``, ``"login-address"``, ...), a key what it counts (an address, an
address and a client). Rows older than the window are deleted with each new hit of their key and, for
keys never seen again, by the ``prune_loop``.

On PostgreSQL ``take`` holds a transaction advisory lock on its key while it counts and adds, so that
two instances cannot both let the last allowed request through; SQLite (the embedded default, one
process) has one writer at a time.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import logging
import math
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

from sqlalchemy import Index, delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import Field, SQLModel, col

from shared.app import Loop
from shared.db import Database
from shared.retry import pause
from shared.store import bigint_pk, timestamp

log = logging.getLogger(__name__)

_LOCK_CLASS = 0x5274
"""First key of the advisory locks ``take`` holds (the second is a hash of the bucket and key)."""

Clock = Callable[[], float]
"""Epoch seconds (a wall clock: the instances sharing the counts share no monotonic clock)."""


class RateHit(SQLModel, table=True):
    __tablename__ = "rate_hit"
    __table_args__ = (
        Index("ix_rate_hit_bucket_key_at", "bucket", "key", "at"),
        Index("ix_rate_hit_bucket_at", "bucket", "at"),
    )

    id: int | None = bigint_pk()
    bucket: str = Field(max_length=32)
    key: str = Field(max_length=100)
    at: datetime = timestamp(now_by_default=False)


def address_key(host: str | None) -> str:
    """What a limit counts for a client address: an IPv6 client owns a whole /64, so it counts as one."""
    if not host:
        return "unknown"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host[:64]
    if address.version == 6:
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


def hashed(value: str) -> str:
    """A fixed-length key for text the caller chose (a claimed client id: any length, any character)."""
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:32]


class SlidingWindow:
    """At most ``limit`` hits per key in any ``window_s`` seconds, counted in the database."""

    def __init__(self, db: Database, bucket: str, limit: int, window_s: float, *, clock: Clock = time.time):
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.db = db
        self.bucket = bucket
        self.limit = limit
        self.window_s = window_s
        self.clock = clock

    async def take(self, key: str) -> int:
        """Count a hit if the key has budget left: 0; else the whole seconds until it has (not counted)."""
        now = self.clock()
        async with self.db.session() as session:
            await self._lock(session, key)
            wait = await self.wait(session, key, now=now)
            if wait is not None:
                return max(1, math.ceil(wait))
            await self.hit(session, key, now=now)
            return 0

    async def wait(self, session: AsyncSession, key: str, *, now: float | None = None) -> float | None:
        """Seconds until ``key`` is under its limit again, or ``None`` if it is now."""
        now = self.clock() if now is None else now
        rows = await session.execute(
            select(col(RateHit.at))
            .where(
                col(RateHit.bucket) == self.bucket,
                col(RateHit.key) == key,
                col(RateHit.at) > _moment(now - self.window_s),
            )
            .order_by(col(RateHit.at).desc())
            .limit(self.limit)
        )
        recent = rows.scalars().all()
        if len(recent) < self.limit:
            return None
        # Blocked until the oldest of the last ``limit`` hits leaves the window.
        return max(0.0, recent[-1].timestamp() + self.window_s - now)

    async def hit(self, session: AsyncSession, key: str, *, now: float | None = None) -> None:
        """Count one hit of ``key``, and forget its hits that left the window."""
        now = self.clock() if now is None else now
        await session.execute(
            delete(RateHit).where(
                col(RateHit.bucket) == self.bucket,
                col(RateHit.key) == key,
                col(RateHit.at) <= _moment(now - self.window_s),
            )
        )
        session.add(RateHit(bucket=self.bucket, key=key, at=_moment(now)))

    async def prune(self) -> None:
        """Forget every hit that left the window (of keys that will not come back)."""
        cutoff = _moment(self.clock() - self.window_s)
        async with self.db.session() as session:
            await session.execute(
                delete(RateHit).where(col(RateHit.bucket) == self.bucket, col(RateHit.at) <= cutoff)
            )

    async def _lock(self, session: AsyncSession, key: str) -> None:
        if session.bind is not None and session.bind.dialect.name == "postgresql":
            # The two-integer form: a lock space apart from the single-bigint locks a service takes.
            lock = func.pg_advisory_xact_lock(_LOCK_CLASS, func.hashtext(f"{self.bucket}:{key}"))
            await session.execute(select(lock))


def prune_loop(windows: Sequence[SlidingWindow], *, name: str = "rate-prune") -> Loop:
    """A background loop that prunes each window once per window length (the shortest of them)."""
    interval = min(w.window_s for w in windows)

    async def run(stop: asyncio.Event) -> None:
        while not stop.is_set():
            await pause(stop, interval)
            if stop.is_set():
                return
            for window in windows:
                try:
                    await window.prune()
                except Exception as error:  # a database away now: pruned next time
                    log.warning(
                        "rate window not pruned",
                        extra={"bucket": window.bucket, "error": type(error).__name__},
                    )

    return Loop(name, run)


def _moment(epoch_s: float) -> datetime:
    return datetime.fromtimestamp(0, UTC) + timedelta(seconds=epoch_s)
