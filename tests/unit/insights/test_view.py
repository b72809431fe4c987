"""The ops page's view: bars scaled to the largest count, rates in words, the range in the CSV links."""

from __future__ import annotations

from datetime import UTC, date, datetime

from services.insights import domain, view
from services.insights.domain import DateRange
from services.insights.schemas import ClinicBreakdown, Funnel, PathStep, SiteBreakdown, StepCount

DAYS = DateRange(date(2026, 11, 1), date(2026, 11, 30))
NOW = datetime(2026, 12, 1, 8, 30, tzinfo=UTC)


def funnel(reached: dict[str, int]) -> Funnel:
    return Funnel(
        from_=DAYS.start,
        to=DAYS.end,
        as_of=NOW,
        submitted=reached.get("submitted", 0),
        path=[PathStep(**vars(s)) for s in domain.path_steps(reached)],
        decisions=[StepCount(step=d, label=d, count=0) for d in domain.DECISIONS],
        waitlisted=0,
        exits=[StepCount(step=e, label=e, count=0) for e in domain.EXITS],
        in_progress=0,
        criteria=[],
    )


def test_bars_are_scaled_to_the_largest_count_and_say_their_conversion() -> None:
    page = view.page(
        DAYS,
        funnel({"submitted": 8, "screened": 6, "routed": 2}),
        SiteBreakdown(from_=DAYS.start, to=DAYS.end, as_of=NOW, sites=[], capacity_note=""),
        ClinicBreakdown(from_=DAYS.start, to=DAYS.end, as_of=NOW, clinics=[]),
    )
    path = next(c for c in page.charts if c.id == "path")
    assert [(b.count, b.width) for b in path.bars[:4]] == [(8, 100.0), (6, 75.0), (2, 25.0), (0, 0.0)]
    assert path.bars[1].note == "75% of Submitted"
    assert path.bars[3].note == "0% of Routed to a site"
    assert path.bars[4].note == "n/a of Accepted by a site"
    assert page.query == "from=2026-11-01&to=2026-11-30"
    assert page.as_of == "2026-12-01 08:30 UTC"


def test_an_empty_chart_has_no_width_to_divide_by() -> None:
    chart = view.chart("x", "X", "", [("a", 0, ""), ("b", 0, "")])
    assert [b.width for b in chart.bars] == [0.0, 0.0]


def test_rates_and_durations_in_words() -> None:
    assert (view.percent(0.3333), view.percent(1.0), view.percent(None)) == ("33.3%", "100%", "n/a")
    assert (view.hours(5.0), view.hours(72.0), view.hours(None)) == ("5 h", "3.0 days", "n/a")
