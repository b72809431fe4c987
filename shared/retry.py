"""What a transient failure is, and the retry policies every loop builds on it.

A failure is transient when the same work, tried again later unchanged, can succeed: a database that
restarts or aborted a transaction to break a deadlock, a broker or an SMTP server out of reach, an HTTP
peer that times out or answers 429/5xx. Everything else (a bad payload, a constraint violation, a
programming error) fails the same way every time, and retrying it only hides it.

The policies are tenacity's, named for what they are used for:

- ``until_stopped``: retry transient failures without end, backing off, until the process stops (the
  consumer loop, the outbox relay, the dispatcher's passes, dead-letter publishing);
- ``conflicts``: run a transaction again that the database aborted for a deadlock or a serialization
  conflict (``Database.run``);
- ``briefly``: ride out a short blip within a deadline (the dispatcher recording an email it just sent).

``pause`` is the one stop-aware sleep: it returns early when the process is asked to stop.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import aiosmtplib
import httpx
from aiokafka import errors as kafka_errors
from sqlalchemy import exc as sa_exc
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential,
    wait_random,
)

TRANSIENT_SQLSTATES = ("08", "53", "57P01", "57P02", "57P03", "40001", "40P01")
"""Connection exceptions, insufficient resources, the server shutting down or starting up,
serialization failures and deadlocks (prefixes of SQLSTATE codes)."""

CONFLICT_SQLSTATES = ("40001", "40P01")
"""A serialization failure or a deadlock: the database aborted one transaction so that others could go
on; the same work run again from the start succeeds."""

TRANSIENT_HTTP_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


class TransientError(Exception):
    """A failure that will pass (a service down, a lock timeout): retry, never give up on the work."""


def _sqlstate(error: BaseException) -> str | None:
    orig = getattr(error, "orig", None)
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    return code if isinstance(code, str) else None


def is_transient_database_error(error: BaseException) -> bool:
    """SQLAlchemy's asyncpg dialect raises some passing failures as a bare ``DBAPIError``, not as
    ``OperationalError`` ("the database system is shutting down", 57P01/57P03, during a restart): only
    the SQLSTATE tells them from a constraint violation or a bad query."""
    if isinstance(error, sa_exc.OperationalError | sa_exc.InterfaceError):
        return True
    if isinstance(error, sa_exc.DBAPIError):
        code = _sqlstate(error)
        return error.connection_invalidated or (code is not None and code.startswith(TRANSIENT_SQLSTATES))
    return False


def is_conflict(error: BaseException) -> bool:
    """A deadlock or serialization failure: the whole transaction, run again, can succeed."""
    return isinstance(error, sa_exc.DBAPIError) and _sqlstate(error) in CONFLICT_SQLSTATES


def is_transient(error: BaseException) -> bool:
    """True for a failure that the same work, tried again later, can get past."""
    if isinstance(error, TransientError | ConnectionError | TimeoutError):
        return True
    if isinstance(error, sa_exc.SQLAlchemyError):
        return is_transient_database_error(error)
    if isinstance(error, kafka_errors.KafkaError):
        return bool(getattr(error, "retriable", False)) or isinstance(
            error, kafka_errors.KafkaConnectionError | kafka_errors.KafkaTimeoutError
        )
    if isinstance(error, aiosmtplib.SMTPResponseException):
        return error.code < 500  # 4xx: "try again later"; 5xx: the server will say the same again
    if isinstance(error, aiosmtplib.SMTPException):
        return isinstance(error, aiosmtplib.SMTPServerDisconnected | aiosmtplib.SMTPConnectError)
    if isinstance(error, httpx.HTTPStatusError):
        return error.response.status_code in TRANSIENT_HTTP_STATUSES
    return isinstance(error, httpx.TransportError)


async def pause(stop: asyncio.Event, seconds: float) -> None:
    """Sleep ``seconds``, or less if ``stop`` is set meanwhile."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await stop.wait()


async def wait_any(events: Sequence[asyncio.Event], seconds: float) -> None:
    """Sleep ``seconds``, or less if any of ``events`` is set meanwhile."""
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


def _errors(accept: Callable[[BaseException], bool]) -> retry_if_exception:
    """Retry what ``accept`` accepts, but never a cancellation or an exit: tenacity's attempt swallows
    every ``BaseException``, and a retried ``CancelledError`` is a task that cannot be cancelled."""
    return retry_if_exception(lambda error: isinstance(error, Exception) and accept(error))


def until_stopped(
    stop: asyncio.Event,
    *,
    retry: Callable[[BaseException], bool] = is_transient,
    give_up: Callable[[RetryCallState], bool] | None = None,
    first_s: float = 0.1,
    max_s: float = 5.0,
    before_sleep: Callable[[RetryCallState], Awaitable[None] | None] | None = None,
) -> AsyncRetrying:
    """Retry what ``retry`` accepts (transient failures by default) with exponential backoff from
    ``first_s`` up to ``max_s`` for as long as the process runs, or until ``give_up`` says so. The last
    error is raised then, or at once for an error ``retry`` refuses. Sleeps end early on stop."""

    def stopping(state: RetryCallState) -> bool:
        return stop.is_set() or (give_up is not None and give_up(state))

    return AsyncRetrying(
        retry=_errors(retry),
        stop=stopping,
        wait=wait_exponential(multiplier=first_s, min=first_s, max=max_s),
        sleep=lambda seconds: pause(stop, seconds),
        before_sleep=before_sleep,
        reraise=True,
    )


def always(_error: BaseException) -> bool:
    """For loops that have nowhere else to put their work (the outbox relay cannot skip a row): every
    failure is retried, with backoff, and logged."""
    return True


async def keep_working(
    stop: asyncio.Event,
    work: Callable[[], Awaitable[int]],
    *,
    idle_s: float,
    on_failure: Callable[[BaseException], Awaitable[None] | None],
    max_backoff_s: float = 5.0,
    wake: asyncio.Event | None = None,
    first_backoff_s: float | None = None,
    gather_s: float = 0.0,
    batch: int | None = None,
) -> None:
    """Run ``work`` in passes until ``stop``: again at once while it finds something to do (it returns
    how much it did), after ``idle_s`` when it found nothing, or as soon as ``wake`` is set (by a commit
    that gives it work: ``shared.wakeup``), and with backoff from ``first_backoff_s`` (default
    ``idle_s``) after a failure, which ``on_failure`` hears of (to log it, or to drop a client that may
    be broken).

    With ``wake``, two things keep the passes few when work trickles in (one pass per commit is what
    costs most at low rates): a wake-up after an idle wait is followed by ``gather_s`` more, so that the
    commits of the next few milliseconds share the pass; and a pass that took fewer than ``batch`` (its
    limit) is not followed by a pass of its own: whatever was committed after it looked woke it."""

    async def failed(state: RetryCallState) -> None:
        if state.outcome is not None and (error := state.outcome.exception()) is not None:
            result = on_failure(error)
            if result is not None:
                await result

    first_s = idle_s if first_backoff_s is None else first_backoff_s
    while not stop.is_set():
        if wake is not None:
            wake.clear()  # a wake-up from here on means work committed after this pass looked
        try:
            async for attempt in until_stopped(
                stop, retry=always, first_s=first_s, max_s=max_backoff_s, before_sleep=failed
            ):
                with attempt:
                    done = await work()
        except Exception:  # only when stopping: the loop ends below
            return
        if wake is None:
            if done == 0:
                await wait_any((stop,), idle_s)
            continue
        if done == 0 or (batch is not None and done < batch and not wake.is_set()):
            await wait_any((stop, wake), idle_s)
            if wake.is_set() and gather_s > 0:
                await wait_any((stop,), gather_s)


def conflicts(attempts: int = 3) -> AsyncRetrying:
    """Run a transaction again from the start after a deadlock or serialization failure, with a little
    jitter so that the two transactions that met do not meet again."""
    return AsyncRetrying(
        retry=_errors(is_conflict),
        stop=stop_after_attempt(attempts),
        wait=wait_random(0.01, 0.1),
        reraise=True,
    )


def briefly(within_s: float, *, retry: Callable[[BaseException], bool] = is_transient) -> AsyncRetrying:
    """Ride out a short transient failure, giving up after ``within_s`` seconds."""
    return AsyncRetrying(
        retry=_errors(retry),
        stop=stop_after_delay(within_s),
        wait=wait_exponential(multiplier=0.1, max=2),
        reraise=True,
    )


async def quietly(awaitable: Awaitable[Any], timeout_s: float = 10) -> None:
    """Await a clean-up whose failure nobody can act on (stopping a client that is being dropped)."""
    try:
        async with asyncio.timeout(timeout_s):
            await awaitable
    except Exception:  # noqa: S110 - shutting down: nothing useful to do with the error
        pass
