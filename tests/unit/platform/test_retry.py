"""The one retry policy: what is transient, and how the named policies retry, stop and give up."""

from __future__ import annotations

import asyncio

import aiosmtplib
import httpx
import pytest
from aiokafka import errors as kafka_errors
from sqlalchemy import exc as sa_exc

from shared.retry import TransientError, is_conflict, is_transient, keep_working, pause, until_stopped

pytestmark = pytest.mark.unit


class _Orig(Exception):
    def __init__(self, sqlstate: str) -> None:
        super().__init__(sqlstate)
        self.sqlstate = sqlstate


def _dbapi(sqlstate: str) -> sa_exc.DBAPIError:
    return sa_exc.DBAPIError("SELECT 1", None, _Orig(sqlstate))


def _http(status: int) -> httpx.HTTPStatusError:
    request = httpx.Request("GET", "https://intake.example.org/")
    return httpx.HTTPStatusError("x", request=request, response=httpx.Response(status, request=request))


@pytest.mark.parametrize(
    "error",
    [
        TransientError("down"),
        ConnectionRefusedError(),
        TimeoutError(),
        sa_exc.OperationalError("SELECT 1", None, Exception("gone")),
        _dbapi("57P01"),  # the server shutting down
        _dbapi("40P01"),  # a deadlock
        kafka_errors.KafkaConnectionError(),
        kafka_errors.NotLeaderForPartitionError(),
        aiosmtplib.SMTPServerDisconnected("bye"),
        aiosmtplib.SMTPResponseException(451, "try later"),
        httpx.ConnectError("refused"),
        _http(503),
        _http(429),
    ],
)
def test_what_passes_by_itself_is_transient(error: BaseException) -> None:
    assert is_transient(error)


@pytest.mark.parametrize(
    "error",
    [
        ValueError("bad"),
        _dbapi("23505"),  # a unique violation fails the same way every time
        kafka_errors.MessageSizeTooLargeError(),
        aiosmtplib.SMTPResponseException(550, "no such user"),
        _http(404),
        _http(422),
    ],
)
def test_what_fails_the_same_way_again_is_not(error: BaseException) -> None:
    assert not is_transient(error)


def test_only_deadlocks_and_serialization_failures_are_conflicts() -> None:
    assert is_conflict(_dbapi("40P01")) and is_conflict(_dbapi("40001"))
    assert not is_conflict(_dbapi("57P01"))


async def test_until_stopped_retries_transient_failures_and_raises_others_at_once() -> None:
    calls: list[int] = []

    async def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise TransientError("not yet")
        return "done"

    async for attempt in until_stopped(asyncio.Event(), first_s=0.001, max_s=0.001):
        with attempt:
            result = await flaky()
    assert (result, len(calls)) == ("done", 3)

    with pytest.raises(ValueError, match="bad"):
        async for attempt in until_stopped(asyncio.Event(), first_s=0.001):
            with attempt:
                raise ValueError("bad")


async def test_until_stopped_gives_up_when_the_process_stops_or_give_up_says_so() -> None:
    stop = asyncio.Event()
    attempts = 0
    with pytest.raises(TransientError):
        async for attempt in until_stopped(stop, first_s=0.001):
            with attempt:
                attempts += 1
                if attempts == 4:
                    stop.set()
                raise TransientError("down")
    assert attempts == 4

    with pytest.raises(ValueError):
        async for attempt in until_stopped(
            asyncio.Event(), retry=lambda _: True, give_up=lambda s: s.attempt_number >= 2, first_s=0.001
        ):
            with attempt:
                attempts += 1
                raise ValueError("keeps failing")
    assert attempts == 6


async def test_a_retrying_task_can_still_be_cancelled() -> None:
    """tenacity's attempt swallows every BaseException: a retried CancelledError would make the task
    uncancellable (a relay killed mid-batch never ended)."""
    started = asyncio.Event()

    async def forever() -> None:
        async for attempt in until_stopped(asyncio.Event(), retry=lambda _: True, first_s=0.001):
            with attempt:
                started.set()
                await asyncio.sleep(3600)

    task = asyncio.create_task(forever())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, timeout=2)


async def test_keep_working_backs_off_after_failures_and_idles_when_there_is_nothing() -> None:
    stop = asyncio.Event()
    outcomes: list[int | Exception] = [RuntimeError("broker down"), RuntimeError("still down"), 5, 0]
    failures: list[str] = []

    async def work() -> int:
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        if not outcomes:
            stop.set()
        return outcome

    await asyncio.wait_for(
        keep_working(stop, work, idle_s=0.001, on_failure=lambda e: failures.append(str(e))), timeout=5
    )
    assert (outcomes, failures) == ([], ["broker down", "still down"])


async def test_pause_ends_early_when_stopped() -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(0.01, stop.set)
    await asyncio.wait_for(pause(stop, 3600), timeout=2)


async def test_keep_working_gathers_after_a_wake_up_and_skips_the_pass_a_partial_batch_needs_not() -> None:
    """A partial pass is followed by none of its own (every later commit wakes the loop); a wake-up is
    followed by ``gather_s`` before the pass, so that the commits just behind it share it."""
    stop, wake = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()
    passes: list[float] = []

    async def work() -> int:
        passes.append(loop.time())
        if len(passes) == 2:
            stop.set()
        return 3  # fewer than the batch of 10

    async def commit_later() -> None:
        await asyncio.sleep(0.3)
        wake.set()

    committed = asyncio.create_task(commit_later())
    started = loop.time()
    await asyncio.wait_for(
        keep_working(stop, work, idle_s=3600, on_failure=lambda _e: None, wake=wake, gather_s=0.2, batch=10),
        timeout=5,
    )
    await committed
    assert len(passes) == 2
    # The second pass came after the wake-up (0.3 s) and the gathering (0.2 s), not at once.
    assert passes[1] - started >= 0.45


async def test_keep_working_runs_again_at_once_after_a_full_batch() -> None:
    stop, wake = asyncio.Event(), asyncio.Event()
    done = [10, 10, 0]

    async def work() -> int:
        if len(done) == 1:
            stop.set()
        return done.pop(0)

    await asyncio.wait_for(
        keep_working(stop, work, idle_s=3600, on_failure=lambda _e: None, wake=wake, gather_s=3600, batch=10),
        timeout=5,
    )
    assert done == []
