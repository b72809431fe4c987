"""Request and response bodies of the router's API (one family per resource: Create, Update, Public)."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Annotated

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    EmailStr,
    Field,
    StringConstraints,
    model_validator,
)

from services.site_router.domain import QueueTab, SiteStatus, short_id
from shared.criteria_fields import CRITERION_FIELDS
from shared.events import EnrolmentStep

SiteCode = Annotated[str, StringConstraints(pattern=r"^[A-Z0-9][A-Z0-9_-]{0,31}$")]
Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
Country = Annotated[str, StringConstraints(strip_whitespace=True, to_upper=True, pattern=r"^[A-Za-z]{2}$")]


class SiteCreate(BaseModel):
    """A site as registered by trial staff; its coordinates come from the postal code."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "code": "WCM",
                    "name": "Weill Cornell Medicine / NewYork-Presbyterian Hospital",
                    "city": "New York",
                    "region": "NY",
                    "postal_code": "10065",
                    "country": "US",
                    "coordinator_email": "ucart123.wcm@sites.example.org",
                    "phone": "+1 212 555 0100",
                    "capacity": 3,
                }
            ]
        },
    )

    code: SiteCode = Field(examples=["WCM"])
    name: Text
    address: Text | None = None
    city: Text
    region: Text | None = None
    postal_code: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=16)]
    country: Country = Field(examples=["US"])
    coordinator_email: EmailStr
    phone: Annotated[str, StringConstraints(strip_whitespace=True, max_length=40)] | None = None
    capacity: int = Field(ge=0, le=10_000, description="referrals the site holds open at once")
    status: SiteStatus = SiteStatus.RECRUITING


class SiteUpdate(BaseModel):
    """What may change on a live site; absent fields stay as they are."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"capacity": 5}]})

    name: Text | None = None
    coordinator_email: EmailStr | None = None
    phone: Annotated[str, StringConstraints(strip_whitespace=True, max_length=40)] | None = None
    capacity: int | None = Field(default=None, ge=0, le=10_000)


class SitePublic(BaseModel):
    """A site as trial staff see it, slots included."""

    model_config = ConfigDict(from_attributes=True)

    code: str
    name: str
    address: str | None
    city: str
    region: str | None
    postal_code: str
    country: str
    latitude: float
    longitude: float
    coordinator_email: str
    phone: str | None
    capacity: int
    open_count: int
    status: str
    updated_at: datetime


class StudyCentreContact(BaseModel):
    email: str
    phone: str | None


class NearbySite(BaseModel):
    code: str
    name: str
    city: str
    region: str | None
    country: str
    distance_km: float
    distance_miles: float
    contact: StudyCentreContact


class NearbySites(BaseModel):
    """Recruiting sites nearest the postal code, full or not: where the trial runs near the patient."""

    postal_code: str = Field(description="the postal code as looked up (normalised)")
    country: str
    place: str
    sites: list[NearbySite]


class CriterionOut(BaseModel):
    id: str
    verdict: str
    reason: str


class ReferrerOut(BaseModel):
    name: str
    email: str
    phone: str | None = None


class StepOut(BaseModel):
    """One step the site recorded after accepting (the subject id is the study's pseudonym)."""

    step: str
    at: datetime
    screening_date: date | None = None
    subject_id: str | None = None
    reason: str | None = None


class QueueItem(BaseModel):
    """A referral in a site's queue: what the site needs to decide, never the patient's identity."""

    referral_id: uuid.UUID
    site_code: str = Field(description="the site it is routed to (a coordinator may work for several)")
    status: str = Field(description="routed (awaiting the site's decision), accepted, declined, closed, ...")
    step: str | None = Field(
        default=None,
        description="the last step recorded after acceptance: contacted, screening_scheduled, consented, "
        "or an outcome (enrolled, screen_failed, not_enrolled); null before any",
    )
    step_at: datetime | None = None
    steps: list[StepOut] = Field(default_factory=list, description="every step recorded, oldest first")
    routed_at: datetime
    opened_at: datetime | None = Field(
        default=None, description="when a coordinator of the site first opened it in the portal"
    )
    accepted_at: datetime | None = None
    decided_at: datetime | None
    rank: int
    distance_km: float
    age_years: int | None = Field(description="the patient's age in whole years on the referral day")
    postal_area: str | None = Field(description="first characters of the postal code only")
    country: str | None
    revision: int
    decision: str | None
    criteria: list[CriterionOut]
    criteria_to_confirm: list[str]
    note: str | None
    consent_to_contact: bool | None
    clinic_id: str
    referrer: ReferrerOut | None
    reason: str | None
    enrolled: bool | None


class SiteQueue(BaseModel):
    site_code: str | None = Field(
        description="the one site listed (the caller's only site, or the `site` asked for); null for several"
    )
    site_codes: list[str] = Field(description="the sites whose referrals are listed")
    referrals: list[QueueItem]


class TimelineEvent(BaseModel):
    """One decision or step on a referral at the caller's site(s), for the referral's page."""

    at: datetime
    site_code: str
    event: str = Field(
        description="routed, accepted, declined, closed, released, withdrawn, or a step (contacted, ...)"
    )
    detail: str | None = Field(default=None, description="a reason, the screening date, the subject id")


class SiteBrief(BaseModel):
    code: str
    name: str
    city: str


class SiteReferral(QueueItem):
    """One referral's page data for a coordinator: the assignment, the pre-screen criterion by criterion
    with reasons, the referrer and clinic, the timeline of decisions and steps at the caller's sites,
    and what may be recorded next. Never the patient's identity (intake's contact endpoint has it, for
    the accepting site only)."""

    site: SiteBrief | None
    ruleset: str | None = Field(description="the eligibility rule set that pre-screened it")
    score: float | None
    next_steps: list[str] = Field(description="the steps the coordinator may record now, in order")
    timeline: list[TimelineEvent]


SubjectId = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)]
Reason = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=500)]


class ProgressRequest(BaseModel):
    """A step after acceptance. Each step needs its one field and takes no other: screening_scheduled
    the screening_date, enrolled the subject_id (the study's subject or randomisation id, never patient
    identity), screen_failed and not_enrolled the reason."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"step": "contacted"},
                {"step": "screening_scheduled", "screening_date": "2026-12-14"},
                {"step": "consented"},
                {"step": "enrolled", "subject_id": "UCART123-0042"},
                {"step": "screen_failed", "reason": "blast count above the protocol's limit"},
                {"step": "not_enrolled", "reason": "the patient chose another treatment"},
            ]
        },
    )

    step: EnrolmentStep
    screening_date: date | None = None
    subject_id: SubjectId | None = None
    reason: Reason | None = None


class DeclineRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"reason": "no CAR-T bed before the patient's next assessment"}]},
    )

    reason: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=500)]


class CloseRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"enrolled": True}, {"enrolled": False, "reason": "screen failure"}]},
    )

    enrolled: bool
    reason: Annotated[str, StringConstraints(strip_whitespace=True, max_length=500)] | None = None


def _known_criterion(value: str) -> str:
    if value not in CRITERION_FIELDS:
        raise ValueError(f"not a criterion id; one of {', '.join(CRITERION_FIELDS)}")
    return value


CriterionId = Annotated[
    str, AfterValidator(_known_criterion), Field(json_schema_extra={"enum": list(CRITERION_FIELDS)})
]
"""A criterion id of docs/trial/criteria.md; the schema lists them, so clients see which ones exist."""
QuestionText = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=1000)]


class QuestionRequest(BaseModel):
    """A site's question to the referring clinic: criteria (ids of docs/trial/criteria.md) and/or words.
    Clinical facts only: the clinic knows whom the referral is about, so never write patient identity."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"criteria": ["organ_function"], "text": "please send the renal panel of this week"}
            ],
            # What the validator below enforces, said in the schema so that clients (and generated
            # requests) know an empty question is refused.
            "anyOf": [
                {"required": ["criteria"], "properties": {"criteria": {"minItems": 1}}},
                {"required": ["text"], "properties": {"text": {"type": "string"}}},
            ],
        },
    )

    criteria: list[CriterionId] = Field(default_factory=list, max_length=20)
    text: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=1000)] | None = (
        None
    )

    @model_validator(mode="after")
    def _something_asked(self) -> QuestionRequest:
        if not self.criteria and self.text is None:
            raise ValueError("ask about at least one criterion, or write the question in text")
        return self


class QuestionReceipt(BaseModel):
    """The question as sent: intake opens an information request to the clinic from it."""

    question_id: uuid.UUID = Field(description="the id of the referral.info_requested event")
    referral_id: uuid.UUID
    site_code: str
    criteria: list[str]
    text: str | None


# --- the coordinators' portal (what its pages show; never the patient's identity) --------------------------


class PortalItem(QueueItem):
    """A row of the portal's queue: one site's assignment of a referral, in its tab."""

    site_name: str
    tab: QueueTab

    @property
    def short_id(self) -> str:
        return short_id(self.referral_id)


class PortalQueue(BaseModel):
    """The signed-in coordinator's sites' referrals, oldest first, with how many each tab holds."""

    site_codes: list[str]
    site_names: dict[str, str]
    items: list[PortalItem]

    def in_tab(self, tab: QueueTab) -> list[PortalItem]:
        return [item for item in self.items if item.tab == tab]

    def counts(self) -> dict[QueueTab, int]:
        return {tab: len(self.in_tab(tab)) for tab in QueueTab}


class PortalReferral(SiteReferral):
    """One referral's page in the portal: the site API's view of it, in the portal's tab."""

    site_name: str
    tab: QueueTab

    @property
    def short_id(self) -> str:
        return short_id(self.referral_id)
