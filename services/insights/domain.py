"""The funnel's arithmetic, pure: steps in order, conversion between them, exits, rates, medians.

Queries count rows in SQL; this module turns the counts into what people read, and is where a step's
meaning is written down (docs: services/insights/README.md, "The funnel").
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta

PATH: tuple[str, ...] = (
    "submitted",
    "screened",
    "routed",
    "accepted",
    "contacted",
    "screening_scheduled",
    "consented",
    "enrolled",
)
"""The main path, in order. A referral has reached a step when that step or any later one is recorded
(a site that records `consented` without `contacted` did contact the patient), so each count is at most
the one before it."""

DECISIONS: tuple[str, ...] = ("eligible", "needs_review", "ineligible")
"""The decision of the referral's current (highest revision) screening."""

EXITS: tuple[str, ...] = (
    "screen_failed",
    "not_enrolled",
    "closed",
    "withdrawn",
    "ineligible",
    "declined_by_every_site",
    "unroutable",
    "held_for_review",
)
"""Where a referral left the path, at most one each, in this order of precedence (the first that
applies): the site's outcomes, the clinic's withdrawal, the current screening, then routing."""

STEP_LABELS: Mapping[str, str] = {
    "submitted": "Submitted",
    "screened": "Screened",
    "routed": "Routed to a site",
    "accepted": "Accepted by a site",
    "contacted": "Patient contacted",
    "screening_scheduled": "Screening visit scheduled",
    "consented": "Consented",
    "enrolled": "Enrolled",
    "eligible": "Eligible",
    "needs_review": "Needs review",
    "ineligible": "Ineligible",
    "waitlisted": "Waitlisted (every site full)",
    "screen_failed": "Screen failed at the site",
    "not_enrolled": "Not enrolled",
    "closed": "Closed by the site",
    "withdrawn": "Withdrawn by the clinic",
    "declined_by_every_site": "Declined by every site",
    "unroutable": "Unroutable",
    "held_for_review": "Held for review (not routed)",
    "in_progress": "Still in progress",
}

FAILING_VERDICTS: frozenset[str] = frozenset({"not_met", "present"})
"""The verdicts that exclude (docs/trial/criteria.md): an inclusion `not_met`, an exclusion `present`."""


class BadRange(ValueError):
    """A date range that cannot be asked for; ``field`` names the parameter at fault."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(reason)
        self.field = field
        self.reason = reason


@dataclass(frozen=True)
class DateRange:
    """Submission days, both ends included."""

    start: date
    end: date

    @classmethod
    def of(
        cls, start: date | None, end: date | None, *, today: date, default_days: int, max_days: int
    ) -> DateRange:
        """The range asked for; a missing end is today, a missing start ``default_days`` before the end."""
        end = end or today
        start = start or end - timedelta(days=default_days - 1)
        if start > end:
            raise BadRange("from", f"{start} is after to ({end})")
        if (end - start).days + 1 > max_days:
            raise BadRange("to", f"the range is longer than {max_days} days")
        return cls(start, end)


@dataclass(frozen=True)
class Step:
    step: str
    label: str
    count: int
    conversion: float | None
    """This step's count over the previous step's (None for the first, or when the previous is 0)."""
    share: float | None
    """This step's count over the submitted count: how much of the funnel is left."""


def rate(part: int, whole: int) -> float | None:
    """``part / whole`` rounded to 4 places; None when there is nothing to divide by."""
    return round(part / whole, 4) if whole else None


def path_steps(reached: Mapping[str, int]) -> list[Step]:
    """The main path with conversion from each step to the next, from the counts of referrals that
    reached each step (a missing step counts 0)."""
    steps: list[Step] = []
    first = reached.get(PATH[0], 0)
    previous: int | None = None
    for name in PATH:
        count = reached.get(name, 0)
        conversion = None if previous is None else rate(count, previous)
        steps.append(Step(name, STEP_LABELS[name], count, conversion, rate(count, first)))
        previous = count
    return steps


def in_progress(submitted: int, enrolled: int, exits: Mapping[str, int]) -> int:
    """Referrals neither enrolled nor out by an exit."""
    return submitted - enrolled - sum(exits.get(name, 0) for name in EXITS)


def median_hours(durations_s: Sequence[float]) -> float | None:
    """The median (p50) of durations in seconds, in hours to one decimal; None for none."""
    if not durations_s:
        return None
    return round(statistics.median(durations_s) / 3600, 1)


def acceptance_rate(accepted: int, declined: int) -> float | None:
    """Accepted over the site's accept-or-decline decisions (a closure is neither)."""
    return rate(accepted, accepted + declined)


def earliest(held: datetime | None, seen: datetime) -> datetime:
    """A step's time: the first occurrence, whichever copy arrives first."""
    return seen if held is None or seen < held else held


def latest(held: datetime | None, seen: datetime) -> datetime:
    """A state's time: the last occurrence, whichever copy arrives last."""
    return seen if held is None or seen > held else held
