"""``shared.readiness.CachedCheck``: a dependency probed at a bounded rate, reported down only when two
probes in a row say so, and up again at its first good probe."""

from __future__ import annotations

import pytest

from shared.readiness import CachedCheck
from tests.support.waiting import eventually

pytestmark = pytest.mark.unit


class Dependency:
    """A probe whose answer the test sets, counting the probes it got."""

    def __init__(self) -> None:
        self.up = True
        self.probes = 0

    async def probe(self) -> None:
        self.probes += 1
        if not self.up:
            raise ConnectionError("unreachable")


class Ticks:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def answer(check: CachedCheck) -> str:
    try:
        await check()
    except ConnectionError:
        return "failed"
    return "ok"


async def probed(dependency: Dependency, count: int) -> None:
    await eventually(lambda: _at_least(dependency, count), within=5, what=f"{count} probes")


async def _at_least(dependency: Dependency, count: int) -> bool:
    return dependency.probes >= count


async def test_probes_at_most_once_per_interval_however_often_asked() -> None:
    dependency, ticks = Dependency(), Ticks()
    check = CachedCheck(dependency.probe, interval_s=5, clock=ticks)
    assert [await answer(check) for _ in range(20)] == ["ok"] * 20
    assert dependency.probes == 1
    ticks.now += 5
    await answer(check)
    await probed(dependency, 2)
    assert [await answer(check) for _ in range(20)] == ["ok"] * 20
    assert dependency.probes == 2


async def test_one_failed_probe_is_not_an_outage_two_are_and_one_good_probe_ends_it() -> None:
    dependency, ticks = Dependency(), Ticks()
    check = CachedCheck(dependency.probe, interval_s=5, clock=ticks)
    assert await answer(check) == "ok"
    dependency.up = False
    ticks.now += 5
    await answer(check)  # starts the probe in the background, answers with the last outcome
    await probed(dependency, 2)
    assert await answer(check) == "ok"  # one slow or failed probe: still ready
    ticks.now += 5
    await answer(check)
    await probed(dependency, 3)
    assert await answer(check) == "failed"
    dependency.up = True
    ticks.now += 5
    await answer(check)
    await probed(dependency, 4)
    assert await answer(check) == "ok"


async def test_a_dependency_that_never_answered_is_reported_at_once() -> None:
    dependency = Dependency()
    dependency.up = False
    check = CachedCheck(dependency.probe, interval_s=5, clock=Ticks())
    assert await answer(check) == "failed"
    assert dependency.probes == 1
