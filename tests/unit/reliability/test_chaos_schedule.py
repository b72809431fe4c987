"""Chaos mode's schedule: replayable from its seed, and within its bounds whatever the seed."""

from __future__ import annotations

import pytest

from tests.reliability.chaos import KINDS, Planned, schedule, seed_from_env

pytestmark = pytest.mark.unit

SEEDS = range(200)


def test_the_same_seed_gives_the_same_schedule() -> None:
    assert schedule(1234, 600) == schedule(1234, 600)
    assert schedule(7, 75) == schedule(7, 75)


def test_different_seeds_give_different_schedules() -> None:
    schedules = {tuple(schedule(seed, 600)) for seed in range(20)}
    assert len(schedules) == 20


def test_faults_start_within_the_duration_in_order() -> None:
    for seed in SEEDS:
        planned = schedule(seed, 90)
        assert planned, seed
        starts = [p.start_s for p in planned]
        assert starts == sorted(starts)
        assert 0 < starts[0] and starts[-1] < 90


def _at_once(planned: list[Planned], t: float) -> list[Planned]:
    return [p for p in planned if p.start_s <= t < p.reserved_until]


def test_never_more_than_two_at_once_nor_two_on_one_target() -> None:
    for seed in SEEDS:
        planned = schedule(seed, 300)
        for p in planned:  # the count of active faults only rises at a start
            active = _at_once(planned, p.start_s)
            assert len(active) <= 2, (seed, active)
            assert len({a.target for a in active}) == len(active), (seed, active)


def test_a_long_run_overlaps_faults_and_draws_every_kind() -> None:
    planned = schedule(42, 600)
    assert {p.kind for p in planned} == set(KINDS)
    assert any(len(_at_once(planned, p.start_s)) == 2 for p in planned)
    assert len({p.target for p in planned if p.kind == "kill"}) == 6


def test_at_most_two_at_once_is_a_setting() -> None:
    for seed in range(50):
        planned = schedule(seed, 300, max_at_once=1)
        assert all(len(_at_once(planned, p.start_s)) == 1 for p in planned)


def test_the_seed_comes_from_the_environment_or_is_fresh() -> None:
    assert seed_from_env({"TRIALROUTE_CHAOS_SEED": "987"}) == 987
    assert seed_from_env({}) != seed_from_env({}) or seed_from_env({}) != seed_from_env({})
