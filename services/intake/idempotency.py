"""Idempotency-Key handling: a retried POST gets the first response instead of doing the work twice.

A key is claimed (committed as "in flight") before the work starts, so a concurrent retry sees it and
gets a 409 instead of racing. The work and the stored response commit in one transaction, so a key is
"done" exactly when its effect exists. A failed request releases its key: only successes are replayed.
A request that died while holding a key (crash) loses it after ``lock_s``.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, Result, bindparam, delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from services.intake.store import IdempotencyKey
from shared.db import Database
from shared.problems import Conflict, Unprocessable
from shared.store import table_of, utcnow

log = logging.getLogger(__name__)

REPLAYED_HEADER = "Idempotent-Replayed"


@dataclass(frozen=True)
class Outcome:
    """A response as the routes build it and as a key stores it."""

    status_code: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    replayed: bool = False


Operation = Callable[[AsyncSession], Awaitable[Outcome]]

_KEYS = table_of(IdempotencyKey)
_CLAIM = insert(_KEYS)
_COMPLETE = (
    update(_KEYS)
    .where(
        _KEYS.c.client_id == bindparam("b_client_id"),
        _KEYS.c.key == bindparam("b_key"),
        _KEYS.c.lock_token == bindparam("b_token"),
    )
    .values(
        state="done",
        lock_token=None,
        status_code=bindparam("b_status_code", type_=_KEYS.c.status_code.type),
        response=bindparam("b_response", type_=_KEYS.c.response.type),
    )
)
"""Every request with a key claims and completes it: both statements are built once (Core, cached),
not as an ORM object and an ORM UPDATE per request."""


class Idempotency:
    """Runs operations under a client's Idempotency-Key (or plainly, without one)."""

    def __init__(self, db: Database, *, ttl: timedelta, lock_s: float, purge_every_s: float = 60) -> None:
        self.db = db
        self.ttl = ttl
        self.lock = timedelta(seconds=lock_s)
        self.purge_every = timedelta(seconds=purge_every_s)
        self._last_purge: datetime | None = None

    async def run(self, client_id: str, key: str | None, fingerprint: str, operation: Operation) -> Outcome:
        """The operation's outcome, committed with the key; or the stored outcome of an earlier run."""
        if key is None:
            async with self.db.session() as session:
                return await operation(session)
        await self._purge_now_and_then()
        token = secrets.token_hex(16)
        replay = await self._claim(client_id, key, fingerprint, token)
        if replay is not None:
            return replay
        try:
            async with self.db.session() as session:
                outcome = await operation(session)
                await self._complete(session, client_id, key, token, outcome)
            return outcome
        except BaseException:
            await self._release(client_id, key, token)
            raise

    async def _claim(self, client_id: str, key: str, fingerprint: str, token: str) -> Outcome | None:
        for _ in range(3):
            now = utcnow()
            try:
                async with self.db.session() as session:
                    claim = {
                        "client_id": client_id,
                        "key": key,
                        "fingerprint": fingerprint,
                        "state": "in_flight",
                        "lock_token": token,
                        "locked_until": now + self.lock,
                        "status_code": None,
                        "response": None,
                        "created_at": now,
                        "expires_at": now + self.ttl,
                    }
                    await session.execute(_CLAIM, claim)
                return None
            except IntegrityError:
                pass  # the key exists: look at it
            async with self.db.session() as session:
                query = select(IdempotencyKey).where(
                    col(IdempotencyKey.client_id) == client_id, col(IdempotencyKey.key) == key
                )
                row = (await session.execute(query.with_for_update())).scalars().first()
                if row is None:
                    continue  # released or purged meanwhile: claim it afresh
                if row.expires_at <= now:
                    await session.delete(row)
                    continue
                if row.fingerprint != fingerprint:
                    raise Unprocessable(
                        "this Idempotency-Key was used for a different request",
                        errors=[{"field": "Idempotency-Key", "reason": "reused with a different request"}],
                    )
                if row.state == "done" and row.response is not None and row.status_code is not None:
                    return Outcome(
                        row.status_code, row.response["body"], row.response["headers"], replayed=True
                    )
                if row.locked_until > now:
                    raise Conflict(
                        "a request with this Idempotency-Key is still in progress; retry later",
                        headers={"Retry-After": "1"},
                    )
                row.lock_token, row.locked_until = token, now + self.lock  # its owner died: take over
                session.add(row)
                return None
        raise Conflict("the Idempotency-Key is contended; retry later", headers={"Retry-After": "1"})

    async def _complete(
        self, session: AsyncSession, client_id: str, key: str, token: str, outcome: Outcome
    ) -> None:
        result = await session.execute(
            _COMPLETE,
            {
                "b_client_id": client_id,
                "b_key": key,
                "b_token": token,
                "b_status_code": outcome.status_code,
                "b_response": {"body": outcome.body, "headers": outcome.headers},
            },
        )
        if _rowcount(result) != 1:
            # Another request took the key over (we overran the lock): undo our work, theirs stands.
            raise Conflict("the Idempotency-Key was taken over by a retry; retry again to read the result")

    async def _release(self, client_id: str, key: str, token: str) -> None:
        try:
            async with self.db.session() as session:
                await session.execute(
                    delete(IdempotencyKey).where(
                        col(IdempotencyKey.client_id) == client_id,
                        col(IdempotencyKey.key) == key,
                        col(IdempotencyKey.lock_token) == token,
                        col(IdempotencyKey.state) == "in_flight",
                    )
                )
        except Exception as exc:  # the lock expires on its own
            log.warning("could not release an idempotency key", extra={"error": type(exc).__name__})

    async def _purge_now_and_then(self) -> None:
        """Delete expired keys, at most once per ``purge_every`` per process: cheap and sufficient."""
        now = utcnow()
        if self._last_purge is not None and now - self._last_purge < self.purge_every:
            return
        self._last_purge = now
        try:
            async with self.db.session() as session:
                result = await session.execute(
                    delete(IdempotencyKey).where(col(IdempotencyKey.expires_at) < now)
                )
            if purged := _rowcount(result):
                log.info("purged expired idempotency keys", extra={"count": purged})
        except Exception as exc:
            log.warning("idempotency purge failed", extra={"error": type(exc).__name__})


def _rowcount(result: Result[Any]) -> int:
    """Rows an UPDATE or DELETE matched (its result is a CursorResult, typed as a plain Result)."""
    return int(cast(CursorResult[Any], result).rowcount)
