"""What the ops page shows, shaped for its templates: bars scaled for a glance, rates as percentages.

Pure: the page's route hands the funnel and breakdowns here and the result to the template, so what
the bars mean is tested without a browser. Bars are SVG rectangles whose width is the count over the
largest count of the chart (server-side, no script, allowed by the strict Content-Security-Policy).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from urllib.parse import urlencode

from services.insights.domain import STEP_LABELS, DateRange
from services.insights.schemas import ClinicBreakdown, Funnel, SiteBreakdown


@dataclass(frozen=True)
class Bar:
    label: str
    count: int
    width: float
    """Of 100: the count over the chart's largest (0 for an empty chart)."""
    note: str = ""
    """A rate in words, e.g. "80% of Screened"."""


@dataclass(frozen=True)
class Chart:
    id: str
    title: str
    description: str
    bars: list[Bar]


@dataclass(frozen=True)
class Page:
    start: date
    end: date
    as_of: str
    submitted: int
    in_progress: int
    charts: list[Chart]
    sites: SiteBreakdown
    clinics: ClinicBreakdown
    query: str
    """``from=...&to=...``: the range, for the CSV links."""


def percent(value: float | None) -> str:
    """0.8 → "80%", 0.3333 → "33.3%"; "n/a" when there is nothing to divide by."""
    if value is None:
        return "n/a"
    shown = round(value * 100, 1)
    return f"{shown:g}%"


def hours(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:g} h" if value < 48 else f"{value / 24:.1f} days"


def chart(id: str, title: str, description: str, rows: Sequence[tuple[str, int, str]]) -> Chart:
    top = max((count for _, count, _ in rows), default=0)
    bars = [
        Bar(label, count, round(100 * count / top, 2) if top else 0.0, note) for label, count, note in rows
    ]
    return Chart(id, title, description, bars)


def page(days: DateRange, funnel: Funnel, sites: SiteBreakdown, clinics: ClinicBreakdown) -> Page:
    path_rows = []
    previous = None
    for step in funnel.path:
        note = f"{percent(step.conversion)} of {previous}" if previous is not None else "all referrals"
        path_rows.append((step.label, step.count, note))
        previous = step.label
    screened = next(s.count for s in funnel.path if s.step == "screened")
    decision_rows = [
        (d.label, d.count, f"{percent(_rate(d.count, screened))} of screened") for d in funnel.decisions
    ]
    exit_rows = [
        (e.label, e.count, f"{percent(_rate(e.count, funnel.submitted))} of submitted") for e in funnel.exits
    ]
    exit_rows.append(
        (
            STEP_LABELS["in_progress"],
            funnel.in_progress,
            f"{percent(_rate(funnel.in_progress, funnel.submitted))} of submitted",
        )
    )
    exit_rows.append((STEP_LABELS["waitlisted"], funnel.waitlisted, "waited at least once for a free slot"))
    criteria_rows = [(f"{c.title} ({c.id})", c.fails, "") for c in funnel.criteria]
    charts = [
        chart(
            "path",
            "From referral to enrolment",
            "Referrals that reached each step; each step as a share of the one before.",
            path_rows,
        ),
        chart(
            "decisions",
            "Pre-screening decisions",
            "The decision of each screened referral's current revision.",
            decision_rows,
        ),
        chart(
            "exits",
            "Where referrals left",
            "One outcome per referral: the first exit that applies, or still in progress.",
            exit_rows,
        ),
        chart(
            "criteria",
            "Criteria that exclude most",
            "Referrals whose current screening fails the criterion "
            "(an inclusion not met, an exclusion present).",
            criteria_rows,
        ),
    ]
    return Page(
        start=days.start,
        end=days.end,
        as_of=funnel.as_of.strftime("%Y-%m-%d %H:%M UTC"),
        submitted=funnel.submitted,
        in_progress=funnel.in_progress,
        charts=charts,
        sites=sites,
        clinics=clinics,
        query=urlencode({"from": days.start.isoformat(), "to": days.end.isoformat()}),
    )


def _rate(part: int, whole: int) -> float | None:
    return part / whole if whole else None
