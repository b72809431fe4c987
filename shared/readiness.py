"""Readiness checks that reach a dependency over the network, at a bounded rate and without flapping.

A probe of Kafka or SMTP opens a connection and waits for an answer. Run on every ``/readyz`` request,
every probe of every replica (and anyone polling the endpoint) would be a round trip to the broker or
the mail server; and one slow answer would take a healthy service out of its Service. ``CachedCheck``
runs the probe at most once per ``interval_s`` in the background of the requests (each answers with
the last outcome; only the first waits for a probe), and reports a failure only once it is confirmed:
two probes in a row failed (or none ever succeeded). A dependency that is really gone is reported within about
two intervals plus two probe timeouts; one that answers again is ready at its first good probe.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

Clock = Callable[[], float]

Probe = Callable[[], Awaitable[None]]


class CachedCheck:
    """A readiness check (``shared.app.Check``) around ``probe``, which raises when the dependency does
    not answer; a probe is given ``timeout_s`` (under ``/readyz``'s own 3 s per check)."""

    def __init__(
        self, probe: Probe, *, interval_s: float = 5.0, timeout_s: float = 2.5, clock: Clock = time.monotonic
    ) -> None:
        self.probe = probe
        self.clock = clock
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.ever_succeeded = False
        self.failures = 0  # consecutive failed probes
        self.last_error: BaseException | None = None
        self._finished_at = float("-inf")
        self._running: asyncio.Task[None] | None = None

    async def __call__(self) -> None:
        if self._running is None and self.clock() - self._finished_at >= self.interval_s:
            self._running = asyncio.create_task(self._probe_once(), name="readiness probe")
        if self._running is not None and self._finished_at == float("-inf"):
            # The first call has no outcome to give yet: it waits for the first probe (shielded: a
            # caller that gives up does not cancel the probe others wait for). Later calls answer with
            # the last outcome at once while a new probe runs, so a slow probe never fails a request.
            await asyncio.shield(self._running)
        if self.failing and self.last_error is not None:
            raise self.last_error.with_traceback(None)  # the probe's error, not a growing traceback

    @property
    def failing(self) -> bool:
        """Confirmed down: the last two probes failed, or no probe has succeeded yet and the last failed."""
        return self.failures >= 2 or (self.failures >= 1 and not self.ever_succeeded)

    async def _probe_once(self) -> None:
        try:
            async with asyncio.timeout(self.timeout_s):
                await self.probe()
        except Exception as exc:  # the outcome is reported to callers, not raised to the task
            self.failures += 1
            self.last_error = exc
        else:
            self.failures = 0
            self.last_error = None
            self.ever_succeeded = True
        finally:
            self._finished_at = self.clock()
            self._running = None
