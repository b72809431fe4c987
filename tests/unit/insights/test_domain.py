"""The funnel's arithmetic: conversion between steps, exits, rates, medians, ranges."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from services.insights import domain
from services.insights.domain import BadRange, DateRange


def test_conversion_is_each_step_over_the_one_before() -> None:
    steps = domain.path_steps({"submitted": 10, "screened": 8, "routed": 4, "accepted": 3, "contacted": 0})
    assert [(s.step, s.count, s.conversion, s.share) for s in steps] == [
        ("submitted", 10, None, 1.0),
        ("screened", 8, 0.8, 0.8),
        ("routed", 4, 0.5, 0.4),
        ("accepted", 3, 0.75, 0.3),
        ("contacted", 0, 0.0, 0.0),
        ("screening_scheduled", 0, None, 0.0),  # nothing to convert from
        ("consented", 0, None, 0.0),
        ("enrolled", 0, None, 0.0),
    ]


def test_an_empty_funnel_has_no_rates() -> None:
    steps = domain.path_steps({})
    assert all(s.count == 0 and s.share is None for s in steps)


def test_rates_are_rounded_to_four_places() -> None:
    assert domain.rate(1, 3) == 0.3333
    assert domain.rate(2, 0) is None
    assert domain.acceptance_rate(accepted=2, declined=1) == 0.6667
    assert domain.acceptance_rate(accepted=0, declined=0) is None


def test_in_progress_is_what_neither_enrolled_nor_left() -> None:
    assert domain.in_progress(10, 2, {"withdrawn": 3, "ineligible": 1, "not_an_exit": 99}) == 4


def test_the_median_is_in_hours() -> None:
    assert domain.median_hours([3600, 7200, 36000]) == 2.0
    assert domain.median_hours([3600, 7200]) == 1.5
    assert domain.median_hours([]) is None


def test_a_step_keeps_its_earliest_time_and_a_state_its_latest() -> None:
    early = datetime(2026, 11, 10, tzinfo=UTC)
    late = early + timedelta(hours=1)
    assert domain.earliest(None, late) == late
    assert domain.earliest(late, early) == domain.earliest(early, late) == early
    assert domain.latest(early, late) == domain.latest(late, early) == late


def test_a_range_defaults_to_the_last_days_up_to_today() -> None:
    today = date(2026, 11, 30)
    days = DateRange.of(None, None, today=today, default_days=30, max_days=100)
    assert (days.start, days.end) == (date(2026, 11, 1), today)
    days = DateRange.of(None, date(2026, 1, 31), today=today, default_days=31, max_days=100)
    assert days.start == date(2026, 1, 1)
    one_day = DateRange.of(today, today, today=today, default_days=30, max_days=1)
    assert one_day.start == one_day.end


@pytest.mark.parametrize(
    ("start", "end", "field"),
    [(date(2026, 12, 2), date(2026, 12, 1), "from"), (date(2020, 1, 1), date(2026, 1, 1), "to")],
)
def test_a_range_backwards_or_too_long_names_the_parameter(start: date, end: date, field: str) -> None:
    with pytest.raises(BadRange) as refused:
        DateRange.of(start, end, today=date(2026, 12, 7), default_days=30, max_days=366)
    assert refused.value.field == field


def test_every_exit_and_step_has_a_label() -> None:
    names = {*domain.PATH, *domain.DECISIONS, *domain.EXITS, "waitlisted", "in_progress"}
    assert names <= set(domain.STEP_LABELS)
