"""What intake answers in FHIR: a Task per referral and the CapabilityStatement.

The Task follows intake's states; it names the referral by the clinic's own identifier (``focus``, the
ServiceRequest the clinic sent) and carries no patient identity (no ``for``: the clinic knows whom its
referral is about, and the Task adds nothing the clinic did not send).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from fhir.resources.R4B.capabilitystatement import CapabilityStatement

from services.intake.domain import Status
from services.intake.fhir import codes
from services.intake.schemas import InformationRequestPublic

FHIR_JSON = "application/fhir+json"

TASK_STATUS: dict[Status, str] = {
    Status.RECEIVED: "received",
    Status.SCREENED: "in-progress",
    Status.NOT_ROUTED: "rejected",
    Status.ROUTED: "in-progress",
    Status.WAITLISTED: "on-hold",
    Status.UNROUTABLE: "failed",
    Status.NOTIFIED: "in-progress",
    Status.ACCEPTED: "accepted",
    Status.DECLINED: "in-progress",
    Status.CONTACTED: "in-progress",
    Status.SCREENING_SCHEDULED: "in-progress",
    Status.CONSENTED: "in-progress",
    Status.ENROLLED: "completed",
    Status.SCREEN_FAILED: "completed",
    Status.NOT_ENROLLED: "completed",
    Status.CLOSED: "completed",
    Status.WITHDRAWN: "cancelled",
}
"""Task.status per state; the state itself is ``businessStatus``. A referral declined by a site is
routed again (in progress); one held for review (screened needs_review, not routed) is on hold. The
accepting site's steps (contacted, screening booked, consented) are the work in progress; each outcome
(enrolled, screen failed, not enrolled) completes the referral: the site did what was asked, and
``businessStatus`` and ``statusReason`` say how it ended (``failed`` is for a task that could not be
carried out, not for a patient who did not qualify)."""


def task_status(status: Status, decision: str | None = None) -> str:
    if status is Status.NOT_ROUTED and decision == "needs_review":
        return "on-hold"
    return TASK_STATUS[status]


def task(
    referral_id: str,
    clinic_reference: str,
    status: Status,
    *,
    decision: str | None = None,
    reason: str | None = None,
    authored: datetime | None = None,
    modified: datetime | None = None,
    requests: Sequence[InformationRequestPublic] = (),
) -> dict[str, Any]:
    """The Task of a referral (``id`` is intake's referral id, as in ``/v1/referrals/{id}``). With an
    open information request, ``businessStatus`` is ``information-requested`` (the state stays in
    ``status`` and the businessStatus text) and ``input`` lists what is asked (docs/fhir.md)."""
    resource: dict[str, Any] = {
        "resourceType": "Task",
        "id": referral_id,
        "identifier": [{"system": f"{codes.BASE}/referral-id", "value": referral_id}],
        "status": task_status(status, decision),
        "businessStatus": {
            "coding": [{"system": codes.REFERRAL_STATUS, "code": status.value}],
            "text": status.value,
        },
        "intent": "order",
        "focus": {
            "type": "ServiceRequest",
            "identifier": {
                "type": {"coding": [{"system": codes.IDENTIFIER_TYPE, "code": codes.PLACER}]},
                "value": clinic_reference,
            },
        },
    }
    asked = [request for request in requests if request.state == "open"]
    if asked:
        resource["businessStatus"] = {
            "coding": [{"system": codes.REFERRAL_STATUS, "code": INFORMATION_REQUESTED}],
            "text": f"{INFORMATION_REQUESTED} ({status.value})",
        }
        resource["input"] = [item for request in asked for item in _inputs(request)]
    if reason:
        resource["statusReason"] = {"text": reason}
    if authored is not None:
        resource["authoredOn"] = _instant(authored)
    if modified is not None:
        resource["lastModified"] = _instant(modified)
        resource["meta"] = {"lastUpdated": _instant(modified)}
    return resource


INFORMATION_REQUESTED = "information-requested"
"""``businessStatus`` while the clinic is asked for facts (code system ``referral-status``)."""


def _inputs(request: InformationRequestPublic) -> list[dict[str, Any]]:
    """One ``input`` per field asked for: ``type`` the criterion (project CodeSystem ``criterion``,
    text the referral's JSON path), ``valueString`` the FHIR element that carries it; a site's question
    in words is one more, of type ``question``."""
    inputs = [
        {
            "type": {
                "coding": [{"system": codes.CRITERION, "code": item.criterion}],
                "text": field.json_path,
            },
            "valueString": field.fhir,
        }
        for item in request.items
        for field in item.fields
    ]
    if request.text:
        inputs.append(
            {
                "type": {"coding": [{"system": codes.CRITERION, "code": "question"}], "text": "question"},
                "valueString": request.text,
            }
        )
    return inputs


def _instant(moment: datetime) -> str:
    aware = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return aware.isoformat()


def capability_statement(base_url: str) -> dict[str, Any]:
    """What this endpoint does: create a referral Bundle, read a Task; JSON only; OAuth2 bearer tokens."""
    statement = {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-11-10",
        "kind": "instance",
        "software": {"name": "trialroute intake"},
        "implementation": {"description": "trialroute referral intake (FHIR R4)", "url": base_url},
        "fhirVersion": "4.0.1",
        "format": [FHIR_JSON],
        "rest": [
            {
                "mode": "server",
                "documentation": "Referrals to the UCART123 (AMELI-01) study: POST a referral Bundle "
                "(type collection, docs/fhir.md), follow its Task.",
                "security": {
                    "service": [
                        {
                            "coding": [
                                {
                                    "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                                    "code": "OAuth",
                                }
                            ]
                        }
                    ],
                    "description": "OAuth2 client credentials, audience intake: scope referrals:write "
                    "to post a Bundle, referrals:read to read a Task (the clinic's own only).",
                },
                "resource": [
                    {
                        "type": "Bundle",
                        "interaction": [
                            {"code": "create", "documentation": "a referral Bundle; answers its Task"}
                        ],
                    },
                    {"type": "Task", "interaction": [{"code": "read"}]},
                ],
            }
        ],
    }
    CapabilityStatement.model_validate(statement)  # what the model refuses is a bug of ours
    return statement
