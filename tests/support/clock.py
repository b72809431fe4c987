"""A clock a test moves forward, for code that takes a ``clock`` (a callable returning epoch seconds).

    clock = Clock()
    source = ServiceTokenSource(..., clock=clock)
    clock.advance(300)                # the token's life has passed, without waiting for it

It runs with real time plus an offset, never behind it: a server started with it agrees with the real
clock about everything stamped before the test moved it (say, the first signing key's start).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime


class Clock:
    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds

    def datetime(self) -> datetime:
        """Now on this clock, as an aware datetime (what store functions taking ``now`` expect)."""
        return datetime.fromtimestamp(self(), UTC)
