"""The ops page, ``/insights/``: the funnel at a glance for people signed in with the scope ``ops``
(``shared.web``: the issuer's sign-in, a session cookie of this service's own), with a date-range form
and CSV downloads. Server-rendered (Jinja2, SVG bars), no script.

Bad dates in the form are the page again with the errors next to their fields (422), not problem+json:
a person reads it. The CSV links answer like the API's CSV routes.
"""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, Response

from services.insights import queries, view
from services.insights.api import csv_response
from services.insights.deps import DaysDep, InsightsStateDep
from services.insights.domain import BadRange
from shared.auth import Scope
from shared.web import WebUser, render, signed_in

PAGE = "/insights/"
PREFIX = "/insights"
"""The sign-in routes' prefix (``/insights/signin``, ``/callback``, ``/signout``)."""
STYLESHEET = Path(__file__).with_name("static") / "insights.css"

OpsPerson = Annotated[WebUser, Depends(signed_in(Scope.OPS))]

router = APIRouter(include_in_schema=False)

_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")


def _day(value: str | None, field: str, errors: dict[str, str]) -> date | None:
    if not value:
        return None
    try:
        if _DAY.fullmatch(value):
            return date.fromisoformat(value)
    except ValueError:
        pass
    errors[field] = f"{value!r} is not a day (YYYY-MM-DD)"
    return None


@router.get(PAGE)
async def funnel_page(
    request: Request,
    _: OpsPerson,
    insights: InsightsStateDep,
    start: Annotated[str | None, Query(alias="from", max_length=40)] = None,
    end: Annotated[str | None, Query(alias="to", max_length=40)] = None,
) -> HTMLResponse:
    """The funnel of the range asked for (the last days by default)."""
    errors: dict[str, str] = {}
    first, last = _day(start, "from", errors), _day(end, "to", errors)
    days = None
    if not errors:
        try:
            days = insights.queries.range(first, last)
        except BadRange as exc:
            errors[exc.field] = exc.reason
    context: dict[str, Any] = {
        "page_path": PAGE,
        "percent": view.percent,
        "hours": view.hours,
        "errors": errors,
        "form": {"from": start or "", "to": end or ""},
        "p": None,
    }
    if days is None:
        return render(request, "funnel.html", status_code=422, **context)
    shown = view.page(
        days,
        await insights.queries.funnel(days),
        await insights.queries.sites(days),
        await insights.queries.clinics(days),
    )
    context["form"] = {"from": days.start.isoformat(), "to": days.end.isoformat()}
    return render(request, "funnel.html", **(context | {"p": shown}))


@router.get(f"{PAGE}funnel.csv")
async def funnel_csv(_: OpsPerson, insights: InsightsStateDep, days: DaysDep) -> Response:
    return csv_response(queries.funnel_csv(await insights.queries.funnel(days)), "funnel", days)


@router.get(f"{PAGE}sites.csv")
async def sites_csv(_: OpsPerson, insights: InsightsStateDep, days: DaysDep) -> Response:
    return csv_response(queries.sites_csv(await insights.queries.sites(days)), "funnel-sites", days)


@router.get(f"{PAGE}clinics.csv")
async def clinics_csv(_: OpsPerson, insights: InsightsStateDep, days: DaysDep) -> Response:
    return csv_response(queries.clinics_csv(await insights.queries.clinics(days)), "funnel-clinics", days)


@router.get(f"{PAGE}static/insights.css")
async def stylesheet() -> FileResponse:
    """The page's own styles, from its origin (the Content-Security-Policy allows nothing else)."""
    return FileResponse(STYLESHEET, media_type="text/css", headers={"Cache-Control": "public, max-age=3600"})
