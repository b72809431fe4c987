"""``Database.run`` runs a transaction again when PostgreSQL aborts it to break a deadlock."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from shared.db import Database

pytestmark = pytest.mark.integration


async def test_both_sides_of_a_deadlock_complete(database_url: str) -> None:
    db = Database(database_url)
    async with db.session() as session:
        await session.execute(text("CREATE TABLE counters (id int PRIMARY KEY, n int NOT NULL)"))
        await session.execute(text("INSERT INTO counters VALUES (1, 0), (2, 0)"))
    both_hold_one = asyncio.Barrier(2)
    runs: list[str] = []

    def bump_in_order(first: int, second: int, name: str) -> Callable[[AsyncSession], Awaitable[None]]:
        async def work(session: AsyncSession) -> None:
            runs.append(name)
            await session.execute(text("UPDATE counters SET n = n + 1 WHERE id = :id"), {"id": first})
            if runs.count(name) == 1:  # first attempts meet holding one row each: a deadlock
                await both_hold_one.wait()
            await session.execute(text("UPDATE counters SET n = n + 1 WHERE id = :id"), {"id": second})

        return work

    try:
        await asyncio.gather(db.run(bump_in_order(1, 2, "a")), db.run(bump_in_order(2, 1, "b")))
        async with db.session() as session:
            counts = (await session.execute(text("SELECT n FROM counters ORDER BY id"))).scalars().all()
    finally:
        await db.dispose()
    assert counts == [2, 2]  # each work's two increments, once each
    assert len(runs) == 3  # the database aborted one of them, which ran again
