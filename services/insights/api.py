"""The ops API (scope ``ops``): the recruitment funnel over a range of submission days, per site and per
clinic, as JSON or CSV. Counts only: no referral, patient or referrer is ever listed."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Response

from services.insights import queries
from services.insights.deps import DaysDep, InsightsStateDep
from services.insights.domain import DateRange
from services.insights.schemas import ClinicBreakdown, Funnel, SiteBreakdown
from shared.auth import Principal, Scope, require

Ops = Annotated[Principal, Depends(require(Scope.OPS))]

router = APIRouter(prefix="/v1", tags=["funnel"])

_ERRORS: dict[int | str, dict[str, str]] = {
    401: {"description": "no valid token"},
    403: {"description": "the token lacks the scope ops"},
    422: {"description": "a date that is not YYYY-MM-DD, `from` after `to`, or a range too long"},
}
_CSV: dict[int | str, dict[str, object]] = {
    200: {"content": {"text/csv": {}}, "description": "CSV with a header row, as a download"}
} | _ERRORS  # type: ignore[operator]


def csv_response(body: str, name: str, days: DateRange) -> Response:
    """A CSV download named after what it holds and its range."""
    filename = f"{name}-{days.start.isoformat()}-to-{days.end.isoformat()}.csv"
    return Response(
        body,
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


@router.get("/funnel", summary="The funnel of the referrals submitted in a range", responses=_ERRORS)
async def read_funnel(_: Ops, insights: InsightsStateDep, days: DaysDep) -> Funnel:
    """Referrals by step with conversion, decisions, exits, and the criteria that exclude most."""
    return await insights.queries.funnel(days)


@router.get("/funnel/sites", summary="The funnel per study site", responses=_ERRORS)
async def read_sites(_: Ops, insights: InsightsStateDep, days: DaysDep) -> SiteBreakdown:
    """Per site: referrals routed, decisions, acceptance rate, median time to first decision, and the
    slots it holds now."""
    return await insights.queries.sites(days)


@router.get("/funnel/clinics", summary="The funnel per referring clinic", responses=_ERRORS)
async def read_clinics(_: Ops, insights: InsightsStateDep, days: DaysDep) -> ClinicBreakdown:
    return await insights.queries.clinics(days)


@router.get("/funnel.csv", summary="The funnel as CSV", responses=_CSV, response_class=Response)
async def funnel_csv(_: Ops, insights: InsightsStateDep, days: DaysDep) -> Response:
    return csv_response(queries.funnel_csv(await insights.queries.funnel(days)), "funnel", days)


@router.get(
    "/funnel/sites.csv", summary="The funnel per site as CSV", responses=_CSV, response_class=Response
)
async def sites_csv(_: Ops, insights: InsightsStateDep, days: DaysDep) -> Response:
    return csv_response(queries.sites_csv(await insights.queries.sites(days)), "funnel-sites", days)


@router.get(
    "/funnel/clinics.csv", summary="The funnel per clinic as CSV", responses=_CSV, response_class=Response
)
async def clinics_csv(_: Ops, insights: InsightsStateDep, days: DaysDep) -> Response:
    return csv_response(queries.clinics_csv(await insights.queries.clinics(days)), "funnel-clinics", days)
