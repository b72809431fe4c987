"""The brake on secret guessing: a sliding window of failures per key."""

import pytest

from services.auth.throttle import LoginThrottle, SlidingWindowThrottle

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_blocks_at_the_limit_until_the_oldest_failure_leaves_the_window() -> None:
    clock = Clock()
    throttle = SlidingWindowThrottle(3, 60, clock=clock)
    for _ in range(2):
        throttle.record_failure("c1")
        clock.now += 10
    assert throttle.retry_after("c1") is None
    throttle.record_failure("c1")  # failures at 1000, 1010, 1020
    assert throttle.retry_after("c1") == pytest.approx(40)
    clock.now = 1060
    assert throttle.retry_after("c1") is None


def test_the_window_slides_rather_than_resets() -> None:
    clock = Clock()
    throttle = SlidingWindowThrottle(3, 60, clock=clock)
    for at in (1000, 1050, 1070):
        clock.now = at
        throttle.record_failure("c1")
    assert throttle.retry_after("c1") is None  # the one at 1000 has left the window
    throttle.record_failure("c1")
    assert throttle.retry_after("c1") == pytest.approx(40)  # until 1050 leaves, at 1110


def test_keys_are_counted_apart() -> None:
    throttle = SlidingWindowThrottle(1, 60, clock=Clock())
    throttle.record_failure("c1")
    assert throttle.retry_after("c1") is not None
    assert throttle.retry_after("c2") is None


def test_memory_is_bounded_by_evicting_the_least_recent_key() -> None:
    throttle = SlidingWindowThrottle(1, 60, max_keys=2, clock=Clock())
    for key in ("a", "b", "c"):
        throttle.record_failure(key)
    assert throttle.retry_after("a") is None
    assert throttle.retry_after("c") is not None


def test_login_throttle_waits_for_the_longer_of_client_and_address() -> None:
    clock = Clock()
    login = LoginThrottle(
        SlidingWindowThrottle(2, 60, clock=clock), SlidingWindowThrottle(3, 60, clock=clock)
    )
    login.record_failure("c1", "10.0.0.1")
    clock.now += 30
    login.record_failure("c1", "10.0.0.1")
    assert login.retry_after("c1", "10.0.0.2") == 30  # the client id is blocked from any address
    assert login.retry_after("c2", "10.0.0.1") is None  # the address has 2 of its 3
    login.record_failure("c2", "10.0.0.1")
    assert login.retry_after("c2", "10.0.0.1") == 30
    assert login.retry_after(None, None) is None
