"""Intake's pure rules: ages, the referral state machine, request fingerprints and list cursors.

No I/O here. The current status is never stored as "the last event that arrived": it is derived from
the whole timeline in order of occurrence, so events that arrive late or twice cannot corrupt it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from enum import StrEnum
from typing import Any

from shared.criteria_fields import CRITERION_FIELDS, settling_fields
from shared.events import (
    CriterionVerdict,
    EventData,
    NotifiedEmail,
    ReferralNotified,
    ReferralNotifiedV2,
    ReferralProgressed,
    ReferralRouted,
    ReferralScreened,
    ReferralSiteDecided,
    ReferralUnroutable,
    ReferralWaitlisted,
    RequestedField,
    RequestedItem,
)


class Status(StrEnum):
    """A referral's states (docs/design.md; after HL7 FHIR Task and BSeR)."""

    RECEIVED = "received"
    SCREENED = "screened"
    NOT_ROUTED = "not_routed"
    ROUTED = "routed"
    WAITLISTED = "waitlisted"
    UNROUTABLE = "unroutable"
    NOTIFIED = "notified"
    ACCEPTED = "accepted"
    DECLINED = "declined"
    CONTACTED = "contacted"
    SCREENING_SCHEDULED = "screening_scheduled"
    CONSENTED = "consented"
    ENROLLED = "enrolled"
    SCREEN_FAILED = "screen_failed"
    NOT_ENROLLED = "not_enrolled"
    CLOSED = "closed"
    WITHDRAWN = "withdrawn"


IN_PROGRESS = frozenset({Status.CONTACTED, Status.SCREENING_SCHEDULED, Status.CONSENTED})
"""The accepting site's steps before the outcome (``referral.progressed``): the site still holds it."""
OUTCOMES = frozenset({Status.ENROLLED, Status.SCREEN_FAILED, Status.NOT_ENROLLED})
"""The site's final outcome (``referral.progressed``): it ends the referral, as a close does."""
AT_SITE = frozenset({Status.ACCEPTED, *IN_PROGRESS})
"""Accepted and not yet ended: the site works it, the clinic can no longer change it."""
TERMINAL = frozenset({Status.WITHDRAWN, Status.CLOSED, *OUTCOMES})
"""States nothing leaves; they also free the clinic reference for a new referral."""
OPEN_EXCLUDED = tuple(sorted(s.value for s in TERMINAL))
ACCEPTED_OR_LATER = frozenset({*AT_SITE, *OUTCOMES, Status.CLOSED})
"""The states in which the accepting site may read the patient's contact (a close may also end a
referral no site accepted: then there is no accepting site, see ``accepting_site``)."""


def age_in_years(born: date, on: date) -> int:
    """Whole years completed on ``on`` (a 29 February birthday counts on 1 March in common years)."""
    years = on.year - born.year
    if (on.month, on.day) < (born.month, born.day):
        years -= 1
    return years


def request_fingerprint(method: str, path: str, body: Any) -> str:
    """What "the same request" means for an Idempotency-Key: method, path and the validated body.

    The body is hashed after validation and in canonical JSON, so key order, whitespace and
    normalised spellings (``us`` for ``US``) do not make a retry look like a different request.
    """
    canonical = json.dumps(
        {"method": method.upper(), "path": path, "body": body},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        default=str,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def change_refusal(status: Status, action: str) -> str | None:
    """Why the clinic may not amend or withdraw a referral in ``status``; ``None`` when it may."""
    if status in AT_SITE:
        return f"the site accepted the referral; it can no longer be {action}; contact the site"
    if status in OUTCOMES:
        return f"the site recorded the referral's outcome ({status}); it can no longer be {action}"
    if status is Status.WITHDRAWN:
        return f"the referral was withdrawn; it can no longer be {action}"
    if status is Status.CLOSED:
        return f"the referral is closed; it can no longer be {action}"
    return None


@dataclass(frozen=True)
class Fact:
    """One timeline entry as the state machine sees it."""

    event_type: str
    occurred_at: datetime
    seq: int
    status: Status | None
    revision: int | None = None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Projection:
    """What the timeline says now: the status, since when, and the decision and site in force."""

    status: Status
    status_at: datetime | None
    decision: dict[str, Any] | None = None
    site: dict[str, Any] | None = None


def _accepts(current: Status | None, incoming: Status) -> bool:
    """Whether ``incoming`` may follow ``current`` (events are replayed in order of occurrence)."""
    if current in TERMINAL:
        return False
    if current in AT_SITE:
        # The site's steps, its outcome, or a (legacy) close; site_router keeps their order.
        return incoming in IN_PROGRESS or incoming in OUTCOMES or incoming is Status.CLOSED
    if incoming in IN_PROGRESS or incoming in OUTCOMES:
        return False  # only the accepting site records steps: without an acceptance, history only
    if incoming is Status.NOTIFIED:
        # Notifications follow routing and site decisions alike; only the first kind is a state.
        return current in (Status.ROUTED, Status.NOTIFIED)
    return True


def project(facts: Iterable[Fact], revision: int) -> Projection:
    """Fold the timeline in order of occurrence; facts about an older revision stay history only."""
    status: Status | None = None
    status_at: datetime | None = None
    decision: dict[str, Any] | None = None
    site: dict[str, Any] | None = None
    for fact in sorted(facts, key=lambda f: (f.occurred_at, f.seq)):
        if fact.status is None or (fact.revision is not None and fact.revision < revision):
            continue
        if not _accepts(status, fact.status):
            continue
        if fact.status is not status:
            status, status_at = fact.status, fact.occurred_at
        if fact.status is Status.RECEIVED:
            decision = site = None
        elif fact.status in (Status.SCREENED, Status.NOT_ROUTED):
            decision, site = fact.details.get("decision"), None
        elif fact.status is Status.ROUTED:
            site = fact.details.get("site")
        elif fact.status in (Status.WAITLISTED, Status.UNROUTABLE):
            site = None
    return Projection(status or Status.RECEIVED, status_at, decision, site)


@dataclass(frozen=True)
class Described:
    """A consumed status event translated into a timeline entry."""

    status: Status | None
    reason: str | None
    revision: int | None
    details: dict[str, Any]


def describe(data: EventData) -> Described:
    """The timeline entry of a status event published by another service."""
    if isinstance(data, ReferralScreened):
        status = Status.SCREENED if data.routable else Status.NOT_ROUTED
        decision = {
            "revision": data.revision,
            "decision": data.decision,
            "score": data.score,
            "ruleset": data.ruleset,
            "routable": data.routable,
            "criteria": [c.model_dump(mode="json") for c in data.criteria],
        }
        reason = f"{data.decision} (rule set {data.ruleset})" + ("" if data.routable else "; not routed")
        return Described(status, reason, data.revision, {"decision": decision})
    if isinstance(data, ReferralRouted):
        site = {
            "code": data.site.code,
            "name": data.site.name,
            "city": data.site.city,
            "distance_km": round(data.distance_km, 1),
            "rank": data.rank,
        }
        reason = f"{data.site.name}, {data.site.city}: {data.distance_km:.1f} km (choice {data.rank})"
        return Described(Status.ROUTED, reason, data.revision, {"site": site})
    if isinstance(data, ReferralWaitlisted):
        return Described(Status.WAITLISTED, data.reason, None, {})
    if isinstance(data, ReferralUnroutable):
        return Described(Status.UNROUTABLE, data.reason, None, {})
    if isinstance(data, ReferralNotified):
        notification = {
            "recipient_role": data.recipient_role,
            "template": data.template,
            "message_id": data.message_id,
        }
        reason = f"{data.recipient_role} notified ({data.template})"
        return Described(Status.NOTIFIED, reason, None, {"notification": notification})
    if isinstance(data, ReferralNotifiedV2):
        # One entry for the emails of one event (version 1 made one per email).
        sent = [
            {"recipient_role": e.recipient_role, "template": e.template, "message_id": e.message_id}
            for e in data.emails
        ]
        return Described(Status.NOTIFIED, notified_reason(data.emails), None, {"notifications": sent})
    if isinstance(data, ReferralSiteDecided):
        details = {"site_code": data.site_code, "decision": data.decision, "enrolled": data.enrolled}
        reason = data.reason or f"site {data.site_code} {data.decision}"
        return Described(Status(data.decision), reason, None, details)
    if isinstance(data, ReferralProgressed):
        return Described(
            Status(data.step), progress_reason(data), None, {"progress": data.model_dump(mode="json")}
        )
    raise TypeError(f"not a status event: {type(data).__name__}")


def notified_reason(emails: Sequence[NotifiedEmail]) -> str:
    """Who was emailed, in words for the clinic's timeline: roles and templates, never an address."""
    roles = [e.recipient_role for e in emails]
    who = roles[0] if len(roles) == 1 else f"{', '.join(roles[:-1])} and {roles[-1]}"
    return f"{who} notified ({', '.join(e.template for e in emails)})"


def sent_emails(details: dict[str, Any]) -> list[dict[str, Any]]:
    """The emails a ``referral.notified`` entry records: one (version 1's ``notification``) or several
    (version 2's ``notifications``)."""
    if "notifications" in details:
        return list(details["notifications"])
    return [details["notification"]] if "notification" in details else []


def progress_reason(data: ReferralProgressed) -> str:
    """A step in words for the clinic's timeline (the subject id is the study's pseudonym)."""
    at = f"site {data.site_code}"
    if data.step == "screening_scheduled":
        return f"screening scheduled for {data.screening_date} at {at}"
    if data.step == "enrolled":
        return f"enrolled at {at}" + (f" (study subject {data.subject_id})" if data.subject_id else "")
    if data.step in ("screen_failed", "not_enrolled"):
        return f"{data.step.replace('_', ' ')} at {at}" + (f": {data.reason}" if data.reason else "")
    return f"{data.step} by {at}"


def accepting_site(facts: Iterable[tuple[str, dict[str, Any]]]) -> str | None:
    """The site that accepted the referral and has not let it go, from its timeline's
    ``referral.site_decided`` entries in order (event type, details): the last acceptance, unless that
    site declined after it; a withdrawal ends it."""
    site: str | None = None
    for event_type, details in facts:
        if event_type == "referral.withdrawn":
            site = None
        elif event_type == "referral.site_decided":
            if details.get("decision") == "accepted":
                site = details.get("site_code")
            elif details.get("decision") == "declined" and details.get("site_code") == site:
                site = None
    return site


def encode_cursor(updated_at: datetime, referral_id: uuid.UUID) -> str:
    """An opaque position in the list (clients must not build or read it)."""
    raw = json.dumps([updated_at.isoformat(), str(referral_id)]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    """The position of ``encode_cursor``; ``ValueError`` for anything it did not produce."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        position = json.loads(raw)
        # Any JSON decodes: only the shape encode_cursor writes may reach datetime and UUID.
        if not (
            isinstance(position, list) and len(position) == 2 and all(isinstance(p, str) for p in position)
        ):
            raise ValueError("not a [time, id] pair")
        moment = datetime.fromisoformat(position[0])
        if moment.tzinfo is None:
            raise ValueError("naive time")
        # In UTC, as the store compares it: a time whose UTC falls outside datetime's years overflows.
        return moment.astimezone(UTC), uuid.UUID(position[1])
    except (binascii.Error, TypeError, ValueError, OverflowError) as exc:
        raise ValueError("not a cursor of this list") from exc


_CHANGES = "changes:"


def encode_change_cursor(seq: int) -> str:
    """An opaque position in a clinic's change feed: after entry ``seq``."""
    return base64.urlsafe_b64encode(f"{_CHANGES}{seq}".encode()).decode().rstrip("=")


def decode_change_cursor(cursor: str) -> int:
    """The position of ``encode_change_cursor``; ``ValueError`` for anything it did not produce."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, ValueError) as exc:
        raise ValueError("not a cursor of the change feed") from exc
    number = raw.removeprefix(_CHANGES)
    if not raw.startswith(_CHANGES) or not number.isdigit() or not number.isascii() or len(number) > 19:
        raise ValueError("not a cursor of the change feed")
    if int(number) >= 2**63:  # beyond the column's bigint: no position of ours
        raise ValueError("not a cursor of the change feed")
    return int(number)


REQUESTS_END = frozenset({*ACCEPTED_OR_LATER, Status.WITHDRAWN})
"""States in which the clinic can no longer amend: its open information requests are cancelled."""


def missing_facts(criteria: Iterable[CriterionVerdict], clinical: dict[str, Any]) -> list[RequestedItem]:
    """What a screening lacks: each ``unknown`` criterion with the fields that would settle it (those
    absent from the clinical block, or all of the criterion's when the values given do not settle it)."""
    return [
        RequestedItem(
            criterion=c.id,
            reason=c.reason,
            fields=[_field(f) for f in settling_fields(c.id, {"clinical": clinical})],
        )
        for c in criteria
        if c.verdict == "unknown"
    ]


def asked_facts(criteria: Iterable[str]) -> list[RequestedItem]:
    """What a site asks about: each criterion with every field that decides it (the site asks to
    confirm, so the values already given count too)."""
    return [
        RequestedItem(
            criterion=c, reason="asked by the site", fields=[_field(f) for f in CRITERION_FIELDS[c]]
        )
        for c in dict.fromkeys(criteria)
    ]


def still_lacking(asked: Iterable[str], criteria: Iterable[CriterionVerdict]) -> list[str]:
    """Which of the criteria ``asked`` a newer screening still leaves ``unknown``."""
    unknown = {c.id for c in criteria if c.verdict == "unknown"}
    return [c for c in asked if c in unknown]


def _field(field: Any) -> RequestedField:
    return RequestedField(json_path=field.json_path, fhir=field.fhir)
