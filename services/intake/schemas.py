"""The API's bodies: ``ReferralCreate`` (the contract of docs/referral.md) and the ``...Public`` views.

Views never carry the patient's identity or contact details, except the notifier's contact view.
"""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from services.intake.domain import Status
from shared.referral import ClinicalData, ReferralPayload

EXAMPLE_ID = "0b7f6c0e-5d0a-4f4e-9a51-3f1b2b8a9c11"
EXAMPLE_TIME = "2026-11-10T09:30:00Z"

Reason = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=500)]


class ReferralCreate(ReferralPayload):
    """A referral as a partner clinic submits it (contract version 1)."""


class AmendmentCreate(BaseModel):
    """A new clinical block; it replaces the current one as a whole and is screened again."""

    model_config = ConfigDict(extra="ignore")

    clinical: ClinicalData = Field(description="the complete new clinical block (left-out fields: unknown)")
    reason: Reason | None = Field(default=None, examples=["new marrow biopsy results"])


class WithdrawalCreate(BaseModel):
    model_config = ConfigDict(extra="ignore")

    reason: Reason | None = Field(default=None, examples=["patient declined participation"])


class _View(BaseModel):
    model_config = ConfigDict(frozen=True)


class ReferralReceipt(_View):
    """What a submission, amendment or withdrawal answers: where the referral now stands."""

    id: uuid.UUID = Field(description="intake's id of the referral", examples=[EXAMPLE_ID])
    clinic_reference: str = Field(examples=["CLN-2026-00042"])
    status: Status = Field(examples=["received"])
    revision: int = Field(description="1 when submitted, +1 per amendment", examples=[1])
    referral_day: date = Field(
        description="UTC day this revision was received; ages and screening windows count from it",
        examples=["2026-11-10"],
    )


class RequestedFieldPublic(_View):
    json_path: str = Field(description="the referral's field (docs/referral.md)", examples=["clinical.ecog"])
    fhir: str = Field(
        description="the FHIR element it is read from (docs/fhir.md)",
        examples=["Observation[LOINC 89247-1].valueInteger"],
    )


class RequestedItemPublic(_View):
    criterion: str = Field(description="a criterion id (docs/trial/criteria.md)", examples=["ecog"])
    reason: str | None = Field(description="why it is asked", examples=["ecog not given"])
    fields: list[RequestedFieldPublic] = Field(description="what would settle it")


class InformationRequestPublic(_View):
    """What the clinic is asked to send; answered by an amendment (docs/design.md)."""

    id: uuid.UUID = Field(examples=[EXAMPLE_ID])
    origin: Literal["screening", "site"] = Field(
        description="screening: facts missing; site: a site's question", examples=["screening"]
    )
    state: Literal["open", "closed"] = Field(examples=["open"])
    revision: int = Field(description="the revision it asks about", examples=[1])
    site_code: str | None = Field(description="the site that asks, if one does", examples=["US-NY-01"])
    items: list[RequestedItemPublic] = Field(description="the criteria asked about")
    text: str | None = Field(description="a site's question in words", examples=["is the ECOG recent?"])
    outcome: Literal["answered", "superseded", "cancelled"] | None = Field(
        description="set when closed", examples=["answered"]
    )
    closed_by_revision: int | None = Field(description="the revision that answered it", examples=[2])


class TimelineItem(_View):
    at: datetime = Field(description="when it occurred (timeline order)", examples=[EXAMPLE_TIME])
    event: str = Field(description="the event that reported it", examples=["referral.screened"])
    status: Status | None = Field(
        description="the state the event reports; it is the current status only if nothing newer "
        "supersedes it",
        examples=["screened"],
    )
    revision: int | None = Field(description="the revision it is about, when the event says", examples=[1])
    source: str = Field(description="the service that caused it", examples=["eligibility"])
    reason: str | None = Field(examples=["eligible (rule set ucart123-v1)"])
    information_request: InformationRequestPublic | None = Field(
        default=None, description="for `referral.info_request_opened`/`_closed`: the request"
    )


class CriterionPublic(_View):
    id: str = Field(examples=["rr_aml"])
    verdict: str = Field(examples=["met"])
    reason: str = Field(examples=["relapsed AML"])


class DecisionPublic(_View):
    """The eligibility decision on the current revision."""

    revision: int = Field(examples=[1])
    decision: Literal["eligible", "ineligible", "needs_review"] = Field(examples=["eligible"])
    score: float = Field(description="share of criteria met", examples=[0.92])
    ruleset: str = Field(description="rule-set version used", examples=["ucart123-v1"])
    routable: bool = Field(description="whether it goes on to site routing", examples=[True])
    criteria: list[CriterionPublic] = Field(description="one verdict per criterion")


class SitePublic(_View):
    code: str = Field(examples=["US-NY-01"])
    name: str = Field(examples=["Memorial Hospital"])
    city: str = Field(examples=["New York"])
    distance_km: float = Field(description="great-circle distance from the patient", examples=[3.2])
    rank: int = Field(description="1: nearest site; more after declines or full sites", examples=[1])


class NotificationPublic(_View):
    at: datetime = Field(examples=[EXAMPLE_TIME])
    recipient_role: Literal["site", "patient", "referrer"] = Field(examples=["site"])
    template: str = Field(examples=["site_new_referral"])
    message_id: str = Field(description="the mail system's message id", examples=["<a1b2@trialroute>"])


class ReferralSummary(_View):
    id: uuid.UUID = Field(examples=[EXAMPLE_ID])
    clinic_reference: str = Field(examples=["CLN-2026-00042"])
    status: Status = Field(examples=["routed"])
    status_at: datetime | None = Field(description="when the current status began", examples=[EXAMPLE_TIME])
    revision: int = Field(examples=[1])
    created_at: datetime = Field(examples=[EXAMPLE_TIME])
    updated_at: datetime = Field(description="last change of any kind (list order)", examples=[EXAMPLE_TIME])


class ReferralPublic(ReferralSummary):
    """A referral as its clinic sees it: status, history, decision, site and notifications."""

    study: str = Field(examples=["UCART123-AMELI-01"])
    referral_day: date = Field(examples=["2026-11-10"])
    clinical: dict[str, Any] = Field(
        description="the clinical block of the current revision, as submitted",
        examples=[{"diagnosis": "aml", "disease_status": "relapsed", "ecog": 1}],
    )
    decision: DecisionPublic | None = Field(description="null until screened, and after an amendment")
    site: SitePublic | None = Field(description="the site the referral is routed to, if any")
    timeline: list[TimelineItem] = Field(description="every state change, oldest first")
    notifications: list[NotificationPublic] = Field(description="emails sent about the referral")
    information_requests: list[InformationRequestPublic] = Field(
        default_factory=list,
        description="what the clinic was asked to send (criteria and the JSON and FHIR fields that settle "
        "each), oldest first; an open one is answered by an amendment (docs/design.md)",
    )


class ReferralPage(_View):
    items: list[ReferralSummary]
    next_cursor: str | None = Field(
        description="pass as `cursor` for the next page; null on the last page",
        examples=["WyIyMDI2LTExLTEwVDA5OjMwOjAwKzAwOjAwIiwgIjBiN2Y2YzBlIl0"],
    )


class ChangeItem(_View):
    """One entry of a referral's timeline, in the clinic's change feed."""

    seq: int = Field(
        description="its position in the clinic's feed (increasing; use it to drop a copy seen twice)",
        examples=[42],
    )
    referral_id: uuid.UUID = Field(description="the referral", examples=[EXAMPLE_ID])
    event_id: uuid.UUID = Field(description="the id of the event that reported it", examples=[EXAMPLE_ID])
    event: str = Field(description="the event that reported it", examples=["referral.routed"])
    status: Status = Field(
        description="the referral's status once this entry was recorded", examples=["routed"]
    )
    entry_status: Status | None = Field(
        description="the state the event reports (history when an older revision's)", examples=["routed"]
    )
    revision: int = Field(description="the referral's revision once this entry was recorded", examples=[1])
    entry_revision: int | None = Field(
        description="the revision the event is about, if it says", examples=[1]
    )
    source: str = Field(description="the service that caused it", examples=["site_router"])
    reason: str | None = Field(examples=["Memorial Hospital, New York: 6.4 km (choice 1)"])
    occurred_at: datetime = Field(description="when it occurred", examples=[EXAMPLE_TIME])
    recorded_at: datetime = Field(description="when intake recorded it", examples=[EXAMPLE_TIME])
    information_request: InformationRequestPublic | None = Field(
        default=None, description="for `referral.info_request_opened`/`_closed`: the request"
    )


class ChangePage(_View):
    items: list[ChangeItem]
    next_cursor: str = Field(
        description="pass as `cursor` next time (also when `items` is empty): store it once the items are "
        "handled, and nothing is missed",
        examples=["Yzo0Mg"],
    )


class PatientContact(_View):
    given_name: str = Field(examples=["Maria"])
    family_name: str = Field(examples=["Lopez"])
    email: str | None = Field(
        description="null when absent or when the patient did not consent to contact",
        examples=["maria.lopez@example.com"],
    )
    preferred_language: str = Field(examples=["en"])
    consent_to_contact: bool = Field(examples=[True])


class ReferrerContact(_View):
    name: str = Field(examples=["Dr. Ana Smith"])
    email: str = Field(examples=["asmith@clinic.example.org"])


class ContactPublic(_View):
    """Contact details for the notifier's emails; every read is logged."""

    referral_id: uuid.UUID = Field(examples=[EXAMPLE_ID])
    status: Status = Field(examples=["routed"])
    patient: PatientContact
    referrer: ReferrerContact


class ContactList(_View):
    """The contact details of the referrals asked for that exist; an unknown id is left out."""

    items: list[ContactPublic]


class SitePatientContact(_View):
    """The patient as intake holds them, for the coordinator of the site that accepted the referral.
    Phone and email are null when absent or when the patient did not consent to contact (reach them
    through the referrer then). Every read is audited; never cache it."""

    referral_id: uuid.UUID = Field(examples=[EXAMPLE_ID])
    status: Status = Field(examples=["accepted"])
    site_code: str = Field(description="the accepting site the read is for", examples=["WCM"])
    given_name: str = Field(examples=["Maria"])
    family_name: str = Field(examples=["Lopez"])
    date_of_birth: date = Field(examples=["1968-03-14"])
    sex: str | None = Field(examples=["female"])
    phone: str | None = Field(examples=["+1 212 555 0199"])
    email: str | None = Field(examples=["maria.lopez@example.com"])
    postal_code: str = Field(
        description="the address intake holds: postal code and country", examples=["10021"]
    )
    country: str = Field(examples=["US"])
    preferred_language: str = Field(examples=["en"])
    consent_to_contact: bool = Field(examples=[True])
    referrer: ReferrerContact


class ContactRead(_View):
    """One read of a patient's contact details (the audit log)."""

    id: int = Field(examples=[42])
    referral_id: uuid.UUID = Field(examples=[EXAMPLE_ID])
    accessed_at: datetime = Field(examples=["2026-11-12T09:30:00Z"])
    client_id: str = Field(
        description="the OAuth client that read it (the portal, the notifier)", examples=["site-portal"]
    )
    subject: str | None = Field(description="the token's subject", examples=["u-7f3a"])
    user: str | None = Field(
        description="the person's account, for a token issued to one", examples=["u-7f3a"]
    )
    site_code: str | None = Field(
        description="the accepting site a coordinator read it for; null: the notifier", examples=["WCM"]
    )


class ContactReadPage(_View):
    items: list[ContactRead]
    next_cursor: str | None = Field(
        description="pass as `cursor` for the next page; null on the last", examples=["cmVhZHM6NDI"]
    )


class FieldError(_View):
    field: str = Field(description="JSON path of the invalid field", examples=["patient.date_of_birth"])
    reason: str = Field(examples=["must not be after 2026-11-10"])


class Problem(_View):
    """RFC 9457 problem details (media type application/problem+json)."""

    type: str = Field(examples=["about:blank"])
    title: str = Field(examples=["Unprocessable content"])
    status: int = Field(examples=[422])
    detail: str = Field(examples=["1 invalid field(s)"])
    instance: str | None = Field(default=None, examples=["/v1/referrals"])
    errors: list[FieldError] | None = Field(default=None, description="422 only: every invalid field")
    existing_id: uuid.UUID | None = Field(
        default=None,
        description="409 on a duplicate clinic_reference: the open referral's id",
        examples=[EXAMPLE_ID],
    )
    current_status: Status | None = Field(
        default=None,
        description="409 on an amendment or withdrawal: the status that forbids it",
        examples=["accepted"],
    )
