"""Sliding windows counted in a service's database (``shared.ratelimit``): the site finder's limit and
the auth service's login throttle share one count across every instance."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import func, select

from services.auth.throttle import LoginThrottle
from shared.db import Database
from shared.ratelimit import RateHit, SlidingWindow, address_key, prune_loop
from shared.store import tables
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url)
    await database.create_tables(tables(RateHit))
    yield database
    await database.dispose()


async def rows(db: Database) -> int:
    async with db.session() as session:
        return (await session.execute(select(func.count()).select_from(RateHit))).scalar_one()


async def test_take_allows_the_limit_then_says_when_to_retry(db: Database) -> None:
    clock = Clock()
    start = clock.now
    window = SlidingWindow(db, "finder", 60, 60, clock=clock)
    for i in range(60):
        clock.now += 0.5 if i else 0  # 60 requests over 29.5 seconds
        assert await window.take("10.0.0.1") == 0
    assert await window.take("10.0.0.1") == 31  # the first request leaves the window at start + 60
    assert await window.take("10.0.0.2") == 0  # another address has its own window
    clock.now = start + 60
    assert await window.take("10.0.0.1") == 0
    assert await window.take("10.0.0.1") == 1  # the second (at +0.5) leaves half a second later


async def test_two_instances_share_one_budget(db: Database, database_url: str) -> None:
    """Concurrent takes through two engines (two processes' pools) never let more than the limit in."""
    other = Database(database_url)
    try:
        windows = [SlidingWindow(db, "finder", 10, 60), SlidingWindow(other, "finder", 10, 60)]
        results = await asyncio.gather(*(windows[i % 2].take("10.0.0.1") for i in range(30)))
        assert results.count(0) == 10
        assert all(r > 0 for r in results if r)
    finally:
        await other.dispose()


async def test_buckets_are_counted_apart(db: Database) -> None:
    clock = Clock()
    finder = SlidingWindow(db, "finder", 1, 60, clock=clock)
    other = SlidingWindow(db, "other", 1, 60, clock=clock)
    assert await finder.take("k") == 0
    assert await finder.take("k") > 0
    assert await other.take("k") == 0


async def test_old_hits_are_pruned(db: Database) -> None:
    clock = Clock()
    window = SlidingWindow(db, "finder", 5, 60, clock=clock)
    for key in ("a", "b", "c"):
        assert await window.take(key) == 0
    clock.now += 30
    assert await window.take("a") == 0
    clock.now += 31  # the first three left the window; the second "a" has not
    assert await window.take("a") == 0  # a hit forgets its own key's old ones
    assert await rows(db) == 4
    await window.prune()
    assert await rows(db) == 2

    stop = asyncio.Event()
    fast = SlidingWindow(db, "finder", 5, 0.05)  # real time: everything is old within 50 ms
    task = asyncio.create_task(prune_loop([fast]).run(stop))
    try:

        async def pruned() -> bool:
            return await rows(db) == 0

        await eventually(pruned, within=10, interval=0.02, what="the loop to prune every hit")
    finally:
        stop.set()
        await task


async def test_login_throttle_counts_a_client_per_address(db: Database) -> None:
    """F1: failures for a client id from one address never block the client from another."""
    clock = Clock()
    login = LoginThrottle(
        db,
        SlidingWindow(db, "login-client", 2, 60, clock=clock),
        SlidingWindow(db, "login-address", 3, 60, clock=clock),
    )
    await login.record_failure("c1", "10.0.0.1")
    clock.now += 30
    await login.record_failure("c1", "10.0.0.1")
    assert await login.retry_after("c1", "10.0.0.1") == 30
    assert await login.retry_after("c1", "10.0.0.2") is None  # the client elsewhere: not blocked
    assert await login.retry_after("c2", "10.0.0.1") is None  # the address has 2 of its 3
    await login.record_failure("c2", "10.0.0.1")
    assert await login.retry_after("c2", "10.0.0.1") == 30  # the address has used its 3
    assert await login.retry_after("c3", "10.0.0.9") is None
    await login.record_failure("a\x00" + "x" * 500, "10.0.0.4")  # any claimed id is a fixed-length key
    assert await login.retry_after(None, None) is None


def test_an_ipv6_client_counts_as_its_64() -> None:
    assert address_key("2001:db8::1") == address_key("2001:db8::ffff:1") == "2001:db8::/64"
    assert address_key("2001:db8:0:1::1") != address_key("2001:db8::1")
    assert address_key("203.0.113.7") == "203.0.113.7"
    assert address_key(None) == "unknown"
