"""Failed client authentications, counted per key in a sliding window, to slow down secret guessing.

In memory, per process: with N replicas an attacker gets N times the budget, which still turns a
guess per millisecond into a handful per minute. The counts are lost on restart, which is acceptable
for a brake (it is not an audit log). Thread-safe: failures are recorded from authlib's worker thread.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable


class SlidingWindowThrottle:
    """Blocks a key once it has ``limit`` failures within the last ``window_s`` seconds."""

    def __init__(
        self,
        limit: int,
        window_s: float,
        *,
        max_keys: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.window_s = window_s
        self.max_keys = max_keys
        self.clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def record_failure(self, key: str) -> None:
        now = self.clock()
        with self._lock:
            times = self._failures.pop(key, None) or deque()
            self._prune(times, now)
            times.append(now)
            self._failures[key] = times  # most recently failed last
            while len(self._failures) > self.max_keys:
                self._failures.popitem(last=False)

    def retry_after(self, key: str) -> float | None:
        """Seconds until ``key`` may try again, or ``None`` if it may now."""
        now = self.clock()
        with self._lock:
            times = self._failures.get(key)
            if not times:
                return None
            self._prune(times, now)
            if not times:
                del self._failures[key]
                return None
            if len(times) < self.limit:
                return None
            # Blocked until enough failures leave the window to get back under the limit.
            return times[len(times) - self.limit] + self.window_s - now

    def _prune(self, times: deque[float], now: float) -> None:
        while times and times[0] <= now - self.window_s:
            times.popleft()


class LoginThrottle:
    """Failures counted per client id and per remote address, each with its own limit."""

    def __init__(self, by_client: SlidingWindowThrottle, by_address: SlidingWindowThrottle) -> None:
        self.by_client = by_client
        self.by_address = by_address

    def record_failure(self, client_id: str | None, address: str | None) -> None:
        if client_id:
            self.by_client.record_failure(client_id)
        if address:
            self.by_address.record_failure(address)

    def retry_after(self, client_id: str | None, address: str | None) -> int | None:
        """Whole seconds to wait (for a Retry-After header), or ``None``."""
        waits: Iterable[float | None] = (
            self.by_client.retry_after(client_id) if client_id else None,
            self.by_address.retry_after(address) if address else None,
        )
        longest = max((w for w in waits if w is not None), default=None)
        return None if longest is None else max(1, math.ceil(longest))
