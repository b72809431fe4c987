"""Per-client rate limit of the public site finder, in this process's memory.

A sliding window: at most ``per_minute`` requests from one address in any 60 seconds; the next one gets
429 with ``Retry-After`` = the seconds until the oldest of them leaves the window. State is per process:
N API replicas allow N times the rate, which bounds abuse well enough for a public page without a shared
store. Memory is bounded: beyond ``max_clients`` addresses the least recently seen is forgotten. The
address is the connection's peer; behind a reverse proxy run uvicorn with ``--proxy-headers`` and
``--forwarded-allow-ips`` so that it is the client's, not the proxy's.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable

WINDOW_S = 60.0


class RateLimiter:
    """``check(key)`` returns 0 when the request may pass, else the seconds to wait before retrying."""

    def __init__(
        self, per_minute: int, *, max_clients: int = 10_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if per_minute < 1:
            raise ValueError("per_minute must be at least 1")
        self.per_minute = per_minute
        self.max_clients = max_clients
        self.clock = clock
        self._seen: OrderedDict[str, deque[float]] = OrderedDict()

    def check(self, key: str) -> int:
        now = self.clock()
        times = self._seen.pop(key, None) or deque()
        while times and times[0] <= now - WINDOW_S:
            times.popleft()
        self._seen[key] = times  # most recently seen last
        while len(self._seen) > self.max_clients:
            self._seen.popitem(last=False)
        if len(times) >= self.per_minute:
            return max(1, math.ceil(times[0] + WINDOW_S - now))
        times.append(now)
        return 0
