"""What the insights API answers: the funnel, and its breakdowns per site and per clinic."""

from __future__ import annotations

from datetime import date, datetime

from pydantic import BaseModel, Field


class _Ranged(BaseModel):
    from_: date = Field(serialization_alias="from", description="first submission day counted (UTC)")
    to: date = Field(description="last submission day counted (UTC), included")
    as_of: datetime = Field(description="when these counts were read: every event consumed by then")


class StepCount(BaseModel):
    step: str
    label: str
    count: int


class PathStep(StepCount):
    conversion: float | None = Field(
        description="this step's count over the previous step's (0-1); null for the first, or after 0"
    )
    share: float | None = Field(description="this step's count over the submitted count (0-1)")


class CriterionCount(BaseModel):
    id: str
    title: str = Field(description="the criterion as the sponsor published it")
    fails: int = Field(description="referrals whose current screening fails it (not_met, or present)")


class Funnel(_Ranged):
    """Referrals submitted in the range, and how far they have got."""

    submitted: int
    path: list[PathStep] = Field(description="the main path in order, each step with its conversion")
    decisions: list[StepCount] = Field(description="the current screening's decision of screened referrals")
    waitlisted: int = Field(description="referrals that waited at least once for a free slot")
    exits: list[StepCount] = Field(description="where referrals left the path, one exit each at most")
    in_progress: int = Field(description="neither enrolled nor out by an exit")
    criteria: list[CriterionCount] = Field(description="criteria that exclude, most first")


class SiteSummary(BaseModel):
    site_code: str
    routed: int = Field(description="referrals of the range routed to the site at least once")
    accepted: int
    declined: int
    closed: int
    enrolled: int = Field(description="referrals of the range enrolled at the site")
    acceptance_rate: float | None = Field(description="accepted over accepted + declined (0-1)")
    first_decision_p50_hours: float | None = Field(
        description="median time from routing to the site's first decision (accept, decline or close)"
    )
    capacity_in_use: int = Field(
        description="slots the site holds now, for referrals of any date: routed or accepted, not yet "
        "declined, closed, withdrawn or ended by an outcome"
    )


class SiteBreakdown(_Ranged):
    sites: list[SiteSummary]
    capacity_note: str


class ClinicSummary(BaseModel):
    clinic_id: str
    submitted: int
    screened: int
    eligible: int
    needs_review: int
    ineligible: int
    routed: int
    accepted: int
    enrolled: int
    withdrawn: int


class ClinicBreakdown(_Ranged):
    clinics: list[ClinicSummary]
