"""Waiting in tests: on a condition, with a deadline; never on a guessed amount of time.

    rows = await eventually(lambda: stored(db, rid), what="the assessment stored")
    await eventually(lambda: consumed(kafka, group, "referral.submitted"), what="every record handled")

A check returns something truthy once the condition holds (that value is returned) or something falsy
while it does not; an exception from the check fails the wait at once. "Nothing more happened" checks
wait on a marker the same way (``tests.support.kafka.wait_consumed``), then assert.
"""

from __future__ import annotations

import reprlib
from collections.abc import Awaitable, Callable
from typing import TypeVar

from tenacity import AsyncRetrying, RetryCallState, retry_if_result, stop_after_delay, wait_fixed

T = TypeVar("T")


def _falsy(value: object) -> bool:
    return not value


async def eventually(
    check: Callable[[], Awaitable[T]], *, within: float = 30, interval: float = 0.1, what: str = "condition"
) -> T:
    """Call ``check`` every ``interval`` seconds until it returns something truthy, and return that;
    fail with an ``AssertionError`` naming ``what`` (and the last value) after ``within`` seconds."""

    def give_up(state: RetryCallState) -> T:
        last = state.outcome.result() if state.outcome else None
        raise AssertionError(f"timed out after {within}s waiting for {what} (last: {reprlib.repr(last)})")

    retrying = AsyncRetrying(
        stop=stop_after_delay(within),
        wait=wait_fixed(interval),
        retry=retry_if_result(_falsy),
        retry_error_callback=give_up,
    )

    async def attempt() -> T:  # tenacity would take a lambda returning a coroutine for a sync function
        return await check()

    return await retrying(attempt)
