"""Insights' reads: the funnel of the referrals submitted in a range, per site and per clinic, as CSV too.

Counts are SQL aggregates over the fact rows (``store``); the arithmetic that turns them into steps and
rates is ``domain``'s. A referral counts once its ``referral.submitted`` has been consumed (its
submission day is what the range filters on).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from functools import cache
from importlib import resources
from typing import Any

from sqlalchemy import ColumnElement, and_, case, func, or_, select
from sqlmodel import col

from services.insights import domain
from services.insights.config import InsightsSettings
from services.insights.domain import DateRange
from services.insights.schemas import (
    ClinicBreakdown,
    ClinicSummary,
    CriterionCount,
    Funnel,
    PathStep,
    SiteBreakdown,
    SiteSummary,
    StepCount,
)
from services.insights.store import CriterionFact, ReferralFact, SiteFact
from shared.db import Database

F = ReferralFact
S = SiteFact

CAPACITY_NOTE = (
    "capacity_in_use counts the slots each site holds now, derived from the events (routed or accepted, "
    "not yet declined, closed, withdrawn or ended by an outcome). The capacity itself is not in any "
    "event: the site router has it (GET /v1/sites, scope sites:admin)."
)

_LATER_THAN_ACCEPTED = (
    F.contacted_at,
    F.screening_scheduled_at,
    F.consented_at,
    F.enrolled_at,
    F.screen_failed_at,
    F.not_enrolled_at,
)
REACHED: Mapping[str, tuple[Any, ...]] = {
    "screened": (F.screened_at, F.routed_at, F.accepted_at, *_LATER_THAN_ACCEPTED),
    "routed": (F.routed_at, F.accepted_at, *_LATER_THAN_ACCEPTED),
    "accepted": (F.accepted_at, *_LATER_THAN_ACCEPTED),
    "contacted": (F.contacted_at, F.screening_scheduled_at, F.consented_at, F.enrolled_at),
    "screening_scheduled": (F.screening_scheduled_at, F.consented_at, F.enrolled_at),
    "consented": (F.consented_at, F.enrolled_at),
    "enrolled": (F.enrolled_at,),
}
"""The columns any of which shows a referral reached the step (a later step implies the earlier)."""


def _reached(step: str) -> ColumnElement[bool]:
    return or_(*(col(c).is_not(None) for c in REACHED[step]))


def _count_if(condition: ColumnElement[bool]) -> ColumnElement[int]:
    return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)


UNROUTABLE_NOW = and_(
    col(F.unroutable_at).is_not(None),
    or_(col(F.routed_last_at).is_(None), col(F.unroutable_at) >= col(F.routed_last_at)),
)
"""Unroutable since its last routing (an amendment may have been routed after an unroutable one)."""

EXIT = case(
    (col(F.enrolled_at).is_not(None), "enrolled"),
    (col(F.screen_failed_at).is_not(None), "screen_failed"),
    (col(F.not_enrolled_at).is_not(None), "not_enrolled"),
    (col(F.closed_at).is_not(None), "closed"),
    (col(F.withdrawn_at).is_not(None), "withdrawn"),
    (col(F.decision) == "ineligible", "ineligible"),
    (and_(UNROUTABLE_NOW, col(F.declined_sites) > 0), "declined_by_every_site"),
    (UNROUTABLE_NOW, "unroutable"),
    (
        and_(col(F.decision) == "needs_review", col(F.routable).is_(False), col(F.routed_at).is_(None)),
        "held_for_review",
    ),
    else_="in_progress",
)
"""Each referral's outcome: enrolled, an exit (``domain.EXITS``, in that precedence), or in progress."""

HOLDS_SLOT = and_(
    col(S.routed_at).is_not(None),
    col(S.site_code) == col(F.site_code),
    col(S.declined_at).is_(None),
    col(S.closed_at).is_(None),
    col(S.freed_at).is_(None),
    col(F.withdrawn_at).is_(None),
    col(F.closed_at).is_(None),
    ~UNROUTABLE_NOW,
)
"""A (referral, site) row whose slot is taken now: the referral's current site, not let go."""


@cache
def criterion_titles() -> dict[str, str]:
    """Criterion id → its published text, from the rule sets packaged with eligibility (the same public
    text ``GET /v1/rulesets/current`` serves); a newer version's text wins. Data only: no engine."""
    titles: dict[str, str] = {}
    folder = resources.files("services.eligibility").joinpath("rulesets")
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".json"):
            for criterion in json.loads(entry.read_bytes()).get("criteria", []):
                titles[str(criterion["id"])] = str(criterion.get("text") or criterion["id"])
    return titles


@dataclass
class Queries:
    db: Database
    settings: InsightsSettings
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))

    def range(self, start: date | None, end: date | None) -> DateRange:
        """The range asked for (``domain.BadRange`` if it cannot be), defaults from the settings."""
        return DateRange.of(
            start,
            end,
            today=self.clock().date(),
            default_days=self.settings.default_range_days,
            max_days=self.settings.max_range_days,
        )

    def _in(self, days: DateRange) -> ColumnElement[bool]:
        return and_(col(F.submitted_on) >= days.start, col(F.submitted_on) <= days.end)

    async def funnel(self, days: DateRange) -> Funnel:
        as_of = self.clock()
        aggregates = [func.count().label("submitted")]
        aggregates += [_count_if(_reached(step)).label(step) for step in REACHED]
        aggregates += [_count_if(col(F.decision) == d).label(d) for d in domain.DECISIONS]
        aggregates.append(_count_if(col(F.waitlisted_at).is_not(None)).label("waitlisted"))
        fails = func.count().label("fails")
        async with self.db.session() as session:
            totals = (await session.execute(select(*aggregates).where(self._in(days)))).one()._mapping
            outcome = EXIT.label("outcome")
            outcomes: dict[str, int] = dict(
                (
                    await session.execute(
                        select(outcome, func.count()).where(self._in(days)).group_by(outcome)
                    )
                ).all()
            )
            criteria = (
                await session.execute(
                    select(col(CriterionFact.criterion_id), fails)
                    .join(F, col(F.referral_id) == col(CriterionFact.referral_id))
                    .where(self._in(days), col(CriterionFact.verdict).in_(domain.FAILING_VERDICTS))
                    .group_by(col(CriterionFact.criterion_id))
                    .order_by(fails.desc(), col(CriterionFact.criterion_id))
                )
            ).all()
        reached = {"submitted": int(totals["submitted"])} | {s: int(totals[s]) for s in REACHED}
        exits = {name: int(outcomes.get(name, 0)) for name in domain.EXITS}
        titles = criterion_titles()
        return Funnel(
            from_=days.start,
            to=days.end,
            as_of=as_of,
            submitted=reached["submitted"],
            path=[PathStep(**vars(step)) for step in domain.path_steps(reached)],
            decisions=[_count(d, int(totals[d])) for d in domain.DECISIONS],
            waitlisted=int(totals["waitlisted"]),
            exits=[_count(name, exits[name]) for name in domain.EXITS],
            in_progress=domain.in_progress(reached["submitted"], reached["enrolled"], exits),
            criteria=[CriterionCount(id=c, title=titles.get(c, c), fails=int(n)) for c, n in criteria],
        )

    async def sites(self, days: DateRange) -> SiteBreakdown:
        as_of = self.clock()
        enrolled_here = and_(col(F.enrolled_at).is_not(None), col(F.site_code) == col(S.site_code))
        rows_query = (
            select(
                col(S.site_code),
                col(S.routed_at),
                col(S.accepted_at),
                col(S.declined_at),
                col(S.closed_at),
                enrolled_here.label("enrolled"),
            )
            .join(F, col(F.referral_id) == col(S.referral_id))
            .where(self._in(days))
        )
        held_query = (
            select(col(S.site_code), func.count())
            .join(F, col(F.referral_id) == col(S.referral_id))
            .where(HOLDS_SLOT)
            .group_by(col(S.site_code))
        )
        async with self.db.session() as session:
            rows = (await session.execute(rows_query)).all()
            held = dict((await session.execute(held_query)).all())
        return SiteBreakdown(
            from_=days.start,
            to=days.end,
            as_of=as_of,
            sites=site_summaries(rows, {k: int(v) for k, v in held.items()}),
            capacity_note=CAPACITY_NOTE,
        )

    async def clinics(self, days: DateRange) -> ClinicBreakdown:
        as_of = self.clock()
        query = (
            select(
                col(F.clinic_id),
                func.count().label("submitted"),
                _count_if(_reached("screened")).label("screened"),
                *(_count_if(col(F.decision) == d).label(d) for d in domain.DECISIONS),
                _count_if(_reached("routed")).label("routed"),
                _count_if(_reached("accepted")).label("accepted"),
                _count_if(_reached("enrolled")).label("enrolled"),
                _count_if(col(F.withdrawn_at).is_not(None)).label("withdrawn"),
            )
            .where(self._in(days))
            .group_by(col(F.clinic_id))
            .order_by(func.count().desc(), col(F.clinic_id))
        )
        async with self.db.session() as session:
            rows = (await session.execute(query)).all()
        return ClinicBreakdown(
            from_=days.start,
            to=days.end,
            as_of=as_of,
            clinics=[ClinicSummary(**{k: v for k, v in row._mapping.items()}) for row in rows],
        )


def _count(step: str, count: int) -> StepCount:
    return StepCount(step=step, label=domain.STEP_LABELS[step], count=count)


def site_summaries(rows: Iterable[Any], held: Mapping[str, int]) -> list[SiteSummary]:
    """Per site, from its (referral, site) rows of the range: counts, acceptance rate, and the median
    time from routing to the first decision; a site holding slots with no row in the range is listed."""
    by_site: dict[str, list[Any]] = {code: [] for code in held}
    for row in rows:
        by_site.setdefault(row.site_code, []).append(row)
    summaries = []
    for code in sorted(by_site):
        mine = by_site[code]
        accepted = sum(r.accepted_at is not None for r in mine)
        declined = sum(r.declined_at is not None for r in mine)
        waits = []
        for r in mine:
            decided = [t for t in (r.accepted_at, r.declined_at, r.closed_at) if t is not None]
            if r.routed_at is not None and decided:
                waits.append(max(0.0, (min(decided) - r.routed_at).total_seconds()))
        summaries.append(
            SiteSummary(
                site_code=code,
                routed=sum(r.routed_at is not None for r in mine),
                accepted=accepted,
                declined=declined,
                closed=sum(r.closed_at is not None for r in mine),
                enrolled=sum(bool(r.enrolled) for r in mine),
                acceptance_rate=domain.acceptance_rate(accepted, declined),
                first_decision_p50_hours=domain.median_hours(waits),
                capacity_in_use=held.get(code, 0),
            )
        )
    return summaries


# --- CSV ------------------------------------------------------------------------------------------------


def _csv(header: list[str], rows: Iterable[Iterable[Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow(["" if v is None else v for v in row])
    return out.getvalue()


def funnel_csv(funnel: Funnel) -> str:
    """One row per count: section (path, decision, exit, criterion, total), name, label, count, rates."""
    rows: list[list[Any]] = [["path", s.step, s.label, s.count, s.conversion, s.share] for s in funnel.path]
    rows += [["decision", d.step, d.label, d.count, None, None] for d in funnel.decisions]
    rows.append(["other", "waitlisted", domain.STEP_LABELS["waitlisted"], funnel.waitlisted, None, None])
    rows += [["exit", e.step, e.label, e.count, None, None] for e in funnel.exits]
    rows.append(["other", "in_progress", domain.STEP_LABELS["in_progress"], funnel.in_progress, None, None])
    rows += [["criterion", c.id, c.title, c.fails, None, None] for c in funnel.criteria]
    return _csv(["section", "name", "label", "count", "conversion", "share"], rows)


def sites_csv(breakdown: SiteBreakdown) -> str:
    fields = list(SiteSummary.model_fields)
    return _csv(fields, ([getattr(s, f) for f in fields] for s in breakdown.sites))


def clinics_csv(breakdown: ClinicBreakdown) -> str:
    fields = list(ClinicSummary.model_fields)
    return _csv(fields, ([getattr(c, f) for f in fields] for c in breakdown.clinics))
