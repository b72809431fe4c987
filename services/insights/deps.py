"""What insights' routes reach: its state (``shared.deps``), typed, and the date range asked for."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Annotated

from fastapi import Depends, Query

from services.insights.config import InsightsSettings
from services.insights.domain import BadRange, DateRange
from services.insights.queries import Queries
from shared.deps import ServiceState, state_dep
from shared.problems import Unprocessable


@dataclass(kw_only=True)
class InsightsState(ServiceState):
    settings: InsightsSettings
    queries: Queries


InsightsStateDep = Annotated[InsightsState, Depends(state_dep(InsightsState))]


async def _days(
    insights: InsightsStateDep,
    start: Annotated[
        date | None,
        Query(
            alias="from", description="first submission day (YYYY-MM-DD, UTC); default: 30 days before `to`"
        ),
    ] = None,
    end: Annotated[
        date | None,
        Query(alias="to", description="last submission day, included (YYYY-MM-DD); default today"),
    ] = None,
) -> DateRange:
    """The submission days asked for; a range that cannot be counted is a 422 naming the parameter."""
    try:
        return insights.queries.range(start, end)
    except BadRange as exc:
        raise Unprocessable(
            "the date range cannot be counted", errors=[{"field": exc.field, "reason": exc.reason}]
        ) from None


DaysDep = Annotated[DateRange, Depends(_days)]
