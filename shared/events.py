"""The event contract between services: one envelope, one frozen data model per event type.

Consumers ignore fields they do not know (``extra="ignore"``); a breaking change is a new ``version``
registered beside the old one, so consumers accept both while producers move.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, date, datetime
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

Decision = Literal["eligible", "ineligible", "needs_review"]
SiteDecision = Literal["accepted", "declined", "closed"]
RecipientRole = Literal["site", "patient", "referrer"]
RequestOrigin = Literal["screening", "site"]
RequestOutcome = Literal["answered", "superseded", "cancelled"]
EnrolmentStep = Literal[
    "contacted", "screening_scheduled", "consented", "enrolled", "screen_failed", "not_enrolled"
]
OUTCOME_STEPS: frozenset[str] = frozenset({"enrolled", "screen_failed", "not_enrolled"})
"""The steps that end a referral at its site and free the slot it held."""


class EventData(BaseModel):
    """Base of every event payload: frozen, and tolerant of fields added by newer producers.

    A concrete event names its type (which is also its topic) and the version of its payload; nothing
    else in the code spells a topic."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    event_type: ClassVar[str]
    event_version: ClassVar[int] = 1


class Referrer(EventData):
    """The referring physician: a professional contact, not patient identity."""

    name: str
    email: str
    phone: str | None = None


class ReferralSnapshot(EventData):
    """What may leave intake about a referral (docs/referral.md): never identity."""

    clinic_id: str
    revision: int = Field(ge=1, description="1 when submitted, +1 per amendment")
    referral_day: date = Field(description="the day intake received the referral; ages count from it")
    age_years: int = Field(ge=0, description="age in whole years on the referral day")
    postal_code: str
    country: str
    consent_to_contact: bool
    referrer: Referrer
    clinical: dict[str, Any] = Field(description="the clinical block exactly as submitted")


class ReferralSubmitted(ReferralSnapshot):
    event_type = "referral.submitted"


class ReferralAmended(ReferralSnapshot):
    event_type = "referral.amended"


class ReferralWithdrawn(EventData):
    event_type = "referral.withdrawn"

    clinic_id: str
    reason: str | None = None


class CriterionVerdict(EventData):
    id: str
    verdict: str
    reason: str


class ReferralScreened(EventData):
    event_type = "referral.screened"

    clinic_id: str
    revision: int
    ruleset: str
    decision: Decision
    score: float
    routable: bool
    criteria: list[CriterionVerdict]
    age_years: int
    postal_code: str
    country: str
    consent_to_contact: bool
    referrer: Referrer


class SiteRef(EventData):
    code: str
    name: str
    city: str
    coordinator_email: str
    phone: str | None = None


class ReferralRouted(EventData):
    event_type = "referral.routed"

    clinic_id: str
    revision: int
    site: SiteRef
    distance_km: float
    rank: int = Field(ge=1, description="1 for the nearest site, higher after declines or full sites")
    decision: Decision
    criteria_to_confirm: list[str] = Field(description="ids of criteria the site still has to confirm")
    consent_to_contact: bool
    referrer: Referrer
    note: str | None = Field(
        default=None, description="what the site has to confirm, in words (reasons and the pre-screen caveat)"
    )


class ReferralWaitlisted(EventData):
    event_type = "referral.waitlisted"

    clinic_id: str
    reason: str


class ReferralUnroutable(EventData):
    event_type = "referral.unroutable"

    clinic_id: str
    reason: str


class ReferralSiteDecided(EventData):
    event_type = "referral.site_decided"

    clinic_id: str
    site_code: str
    decision: SiteDecision
    reason: str | None = None
    enrolled: bool | None = None


class ReferralProgressed(EventData):
    """A step the accepting site records on the way to enrolment. Ids, dates and reasons only: the
    subject id is the study's pseudonym, never patient identity."""

    event_type = "referral.progressed"

    clinic_id: str
    site_code: str
    step: EnrolmentStep
    screening_date: date | None = Field(default=None, description="set on screening_scheduled")
    subject_id: str | None = Field(
        default=None, description="set on enrolled: the study's subject or randomisation id"
    )
    reason: str | None = Field(default=None, description="set on screen_failed and not_enrolled")


class ReferralNotified(EventData):
    """Version 1: one email went out (one event per email). The notifier now publishes version 2;
    consumers keep accepting this one until no record of it can still be read (docs/events.md)."""

    event_type = "referral.notified"

    recipient_role: RecipientRole
    template: str
    message_id: str
    source_event_id: uuid.UUID


class NotifiedEmail(EventData):
    """One email sent about a referral: its recipient's role, never an address."""

    recipient_role: RecipientRole
    template: str
    message_id: str = Field(description="the email's Message-ID")
    source_event_id: uuid.UUID = Field(description="the id of the event that caused the email")


class ReferralNotifiedV2(EventData):
    """Version 2: the emails about one referral that the notifier recorded as sent in one transaction.
    One event instead of one per email: fewer events, relay passes and consumptions per referral."""

    event_type = "referral.notified"
    event_version = 2

    emails: list[NotifiedEmail] = Field(min_length=1, description="the emails sent, in the order recorded")


class ReferralInfoRequested(EventData):
    """A site's question about a referral in its queue, for the referring clinic (intake makes it an
    information request). The text is a coordinator's words about clinical facts, never identity."""

    event_type = "referral.info_requested"

    clinic_id: str
    site_code: str
    revision: int = Field(ge=0, description="the revision the site has seen")
    criteria: list[str] = Field(description="ids of the criteria the site asks about (may be empty)")
    text: str | None = Field(default=None, description="the question in words")


class RequestedField(EventData):
    """A referral field that would settle a criterion: JSON path (docs/referral.md), FHIR element."""

    json_path: str
    fhir: str


class RequestedItem(EventData):
    """One criterion asked about, why, and the fields that would settle it."""

    criterion: str
    reason: str | None = None
    fields: list[RequestedField]


class InformationRequestData(EventData):
    """An information request to the referring clinic, as intake holds it."""

    id: uuid.UUID
    origin: RequestOrigin = Field(description="screening: facts missing; site: a site's question")
    state: Literal["open", "closed"]
    revision: int = Field(ge=1, description="the revision it asks about")
    site_code: str | None = None
    items: list[RequestedItem]
    text: str | None = Field(default=None, description="a site's question in words")
    outcome: RequestOutcome | None = Field(default=None, description="set when closed")
    closed_by_revision: int | None = None


class ReferralInfoRequestOpened(EventData):
    """Intake asks the referring clinic for facts (the notifier emails the referrer)."""

    event_type = "referral.info_request_opened"

    clinic_id: str
    request: InformationRequestData


class ReferralInfoRequestClosed(EventData):
    """An information request ended: answered by an amendment, superseded by a newer one, or cancelled
    (the referral can no longer be amended)."""

    event_type = "referral.info_request_closed"

    clinic_id: str
    request: InformationRequestData


class ReferralStatusChanged(EventData):
    """One entry of a referral's timeline as its clinic sees it (intake's change feed, and what the
    notifier delivers by webhook). Ids, statuses, reasons and times only: never patient identity."""

    event_type = "referral.status_changed"

    clinic_id: str
    seq: int = Field(ge=1, description="the entry's position in the clinic's change feed (GET /v1/changes)")
    status: str = Field(description="the referral's status once this entry was recorded")
    entry_status: str | None = Field(default=None, description="the status the source event reports")
    revision: int = Field(ge=1, description="the referral's revision once this entry was recorded")
    entry_revision: int | None = Field(default=None, description="the revision the source event is about")
    reason: str | None = None
    occurred_at: datetime = Field(description="when the source event occurred")
    recorded_at: datetime = Field(description="when intake put it on the timeline")
    source_event_id: uuid.UUID
    source_event_type: str = Field(description="e.g. referral.routed")
    information_request: InformationRequestData | None = Field(
        default=None, description="for an information request opened or closed: the request"
    )


EVENTS: tuple[type[EventData], ...] = (
    ReferralSubmitted,
    ReferralAmended,
    ReferralWithdrawn,
    ReferralScreened,
    ReferralRouted,
    ReferralWaitlisted,
    ReferralUnroutable,
    ReferralSiteDecided,
    ReferralProgressed,
    ReferralNotified,
    ReferralNotifiedV2,
    ReferralStatusChanged,
    ReferralInfoRequested,
    ReferralInfoRequestOpened,
    ReferralInfoRequestClosed,
)
"""Every event model; a new version of an event is a new model with the same ``event_type``."""
EVENT_TYPES: dict[tuple[str, int], type[EventData]] = {(m.event_type, m.event_version): m for m in EVENTS}
TOPICS: tuple[str, ...] = tuple(sorted({m.event_type for m in EVENTS}))
DEAD_LETTER_SUFFIX = ".dlq"
STATUS_EVENTS: tuple[type[EventData], ...] = (
    ReferralScreened,
    ReferralRouted,
    ReferralWaitlisted,
    ReferralUnroutable,
    ReferralNotified,
    ReferralNotifiedV2,
    ReferralSiteDecided,
    ReferralProgressed,
)
"""The events that change where a referral stands, as the clinic sees it on its timeline."""


def dead_letter_topic(topic: str) -> str:
    """Where the records of ``topic`` that can never be handled go, with their error."""
    return topic + DEAD_LETTER_SUFFIX


class UnknownEventType(ValueError):
    """No model is registered for this (type, version): the event cannot be read."""


class Envelope(BaseModel):
    """The one JSON envelope every event travels in."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    id: uuid.UUID = Field(default_factory=uuid.uuid4)
    type: str
    version: int = 1
    occurred_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    producer: str
    referral_id: uuid.UUID
    trace: str | None = Field(default=None, description="W3C traceparent")
    data: dict[str, Any]

    @classmethod
    def wrap(
        cls, data: EventData, *, producer: str, referral_id: uuid.UUID, trace: str | None = None
    ) -> Envelope:
        """Build the envelope of a typed payload; the type and version come from the registry."""
        return cls(
            type=data.event_type,
            version=data.event_version,
            producer=producer,
            referral_id=referral_id,
            trace=trace,
            data=data.model_dump(mode="json"),
        )

    def payload(self) -> EventData:
        """The typed data; raises UnknownEventType or pydantic.ValidationError on a bad payload."""
        model = EVENT_TYPES.get((self.type, self.version))
        if model is None:
            raise UnknownEventType(f"no model for event type {self.type!r} version {self.version}")
        return model.model_validate(self.data)

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> Envelope:
        return cls.model_validate(json.loads(raw))
