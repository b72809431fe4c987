"""Test data, built in one place: referral bodies as clinics send them, and events as each service
publishes them.

Every builder returns a valid value from defaults; keyword arguments replace fields, so a test names only
what it is about:

    body = referral_body(patient={"sex": "x"})               # the contract's example, one field changed
    data = screened(clinic_id="C1", routable=False)          # a ReferralScreened
    envelope = wrap(routed(site=site("WCM")), referral_id)   # as its producer would send it
"""

from __future__ import annotations

import copy
import json
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from shared.events import (
    CriterionVerdict,
    Envelope,
    EventData,
    InformationRequestData,
    NotifiedEmail,
    ReferralAmended,
    ReferralInfoRequestClosed,
    ReferralInfoRequested,
    ReferralInfoRequestOpened,
    ReferralNotified,
    ReferralNotifiedV2,
    ReferralProgressed,
    ReferralRouted,
    ReferralScreened,
    ReferralSiteDecided,
    ReferralStatusChanged,
    ReferralSubmitted,
    ReferralUnroutable,
    ReferralWaitlisted,
    ReferralWithdrawn,
    Referrer,
    SiteRef,
)
from shared.referral import EXAMPLE_REFERRAL

CLINIC = "clinic-a"
DAY = date(2026, 11, 10)
"""The referral day of built snapshots: fixed, so that ages and assessments never drift."""
REFERRER = Referrer(name="Dr. Ana Smith", email="asmith@clinic.example.org")

PRODUCERS: dict[type[EventData], str] = {
    ReferralSubmitted: "intake",
    ReferralAmended: "intake",
    ReferralWithdrawn: "intake",
    ReferralScreened: "eligibility",
    ReferralRouted: "site_router",
    ReferralWaitlisted: "site_router",
    ReferralUnroutable: "site_router",
    ReferralSiteDecided: "site_router",
    ReferralProgressed: "site_router",
    ReferralNotified: "notifier",
    ReferralNotifiedV2: "notifier",
    ReferralStatusChanged: "intake",
    ReferralInfoRequested: "site_router",
    ReferralInfoRequestOpened: "intake",
    ReferralInfoRequestClosed: "intake",
}
"""Which service publishes each event type."""


# --- referral bodies (the JSON a clinic submits) ----------------------------------------------------


def referral_body(reference: str | None = None, **sections: dict[str, Any]) -> dict[str, Any]:
    """The contract's example with some fields of sections replaced, e.g. ``referral_body(patient={"sex":
    "x"})``, and a clinic reference if given."""
    body = copy.deepcopy(EXAMPLE_REFERRAL)
    if reference is not None:
        body["clinic_reference"] = reference
    for section, fields in sections.items():
        body[section].update(fields)
    return body


def clinical(**changes: Any) -> dict[str, Any]:
    """The example's clinical block with top-level fields replaced."""
    return {**copy.deepcopy(EXAMPLE_REFERRAL["clinical"]), **changes}


def sample_referral(
    *, postal_code: str = "10021", country: str = "US", email: str | None = None, **clinical: Any
) -> dict[str, Any]:
    """The example with fresh dates, a unique patient and reference: for a running system, where every
    submission must be new."""
    tag = uuid.uuid4().hex[:10]
    body = referral_body(
        f"E2E-{tag}",
        patient={
            "given_name": f"Given{tag}",
            "family_name": f"Family{tag}",
            "email": email or f"patient.{tag}@example.com",
            "postal_code": postal_code,
            "country": country,
        },
        referrer={"email": f"referrer.{tag}@clinic.example.org"},
    )
    body["clinical"]["organ_function"]["assessed_on"] = (date.today() - timedelta(days=3)).isoformat()
    body["clinical"].update(clinical)
    return body


# --- event data --------------------------------------------------------------------------------------


def site(code: str = "US-NY-01", **changes: Any) -> SiteRef:
    """A trial site as events name it."""
    values: dict[str, Any] = {
        "code": code,
        "name": f"Site {code}",
        "city": "New York",
        "coordinator_email": f"{code.lower()}@site.example.org",
    }
    return SiteRef(**(values | changes))


def submitted(*, revision: int = 1, **changes: Any) -> ReferralSubmitted | ReferralAmended:
    """The snapshot intake publishes: ``referral.submitted`` for revision 1, ``referral.amended`` after."""
    values: dict[str, Any] = {
        "clinic_id": CLINIC,
        "revision": revision,
        "referral_day": DAY,
        "age_years": 58,
        "postal_code": "10021",
        "country": "US",
        "consent_to_contact": True,
        "referrer": REFERRER,
        "clinical": clinical(),
    }
    model = ReferralSubmitted if revision == 1 else ReferralAmended
    return model(**(values | changes))


def withdrawn(**changes: Any) -> ReferralWithdrawn:
    return ReferralWithdrawn(**({"clinic_id": CLINIC, "reason": "patient moved abroad"} | changes))


def screened(*, routable: bool = True, **changes: Any) -> ReferralScreened:
    """Eligibility's verdict: eligible and routable, or (``routable=False``) ineligible."""
    values: dict[str, Any] = {
        "clinic_id": CLINIC,
        "revision": 1,
        "ruleset": "ucart123-v1",
        "decision": "eligible" if routable else "ineligible",
        "score": 1.0 if routable else 0.4,
        "routable": routable,
        "criteria": [
            CriterionVerdict(id="rr_aml", verdict="met", reason="relapsed AML"),
            CriterionVerdict(id="cd123_positive", verdict="met", reason="positive by flow cytometry"),
        ],
        "age_years": 58,
        "postal_code": "10021",
        "country": "US",
        "consent_to_contact": True,
        "referrer": REFERRER,
    }
    return ReferralScreened(**(values | changes))


def needs_review(*unknown: str, revision: int = 1, routable: bool = True, **changes: Any) -> ReferralScreened:
    """A ``needs_review`` screening that leaves the criteria ``unknown`` undecided (``ecog`` unless
    named), the others met."""
    unknown = unknown or ("ecog",)
    criteria = [CriterionVerdict(id="rr_aml", verdict="met", reason="relapsed AML")] + [
        CriterionVerdict(id=c, verdict="unknown", reason=f"{c} not given") for c in unknown
    ]
    values: dict[str, Any] = {
        "revision": revision,
        "decision": "needs_review",
        "score": 0.5,
        "criteria": criteria,
    }
    return screened(routable=routable, **(values | changes))


def info_requested(**changes: Any) -> ReferralInfoRequested:
    """A site's question to the referring clinic, as the site router publishes it."""
    values: dict[str, Any] = {
        "clinic_id": CLINIC,
        "site_code": "US-NY-01",
        "revision": 1,
        "criteria": ["organ_function"],
        "text": "please send this week's renal panel",
    }
    return ReferralInfoRequested(**(values | changes))


def info_request_opened(**changes: Any) -> ReferralInfoRequestOpened:
    """An information request as intake publishes it (for the notifier's email to the referrer)."""
    request = InformationRequestData.model_validate(
        {
            "id": uuid.uuid4(),
            "origin": "screening",
            "state": "open",
            "revision": 1,
            "items": [
                {
                    "criterion": "ecog",
                    "reason": "ecog not given",
                    "fields": [
                        {"json_path": "clinical.ecog", "fhir": "Observation[LOINC 89247-1].valueInteger"}
                    ],
                }
            ],
        }
    )
    return ReferralInfoRequestOpened(**({"clinic_id": CLINIC, "request": request} | changes))


def routed(**changes: Any) -> ReferralRouted:
    """The site router's choice of a site (rank 1: the nearest)."""
    values: dict[str, Any] = {
        "clinic_id": CLINIC,
        "revision": 1,
        "site": site(),
        "distance_km": 3.24,
        "rank": 1,
        "decision": "eligible",
        "criteria_to_confirm": [],
        "consent_to_contact": True,
        "referrer": REFERRER,
    }
    return ReferralRouted(**(values | changes))


def waitlisted(**changes: Any) -> ReferralWaitlisted:
    return ReferralWaitlisted(
        **({"clinic_id": CLINIC, "reason": "no recruiting site with free capacity"} | changes)
    )


def unroutable(**changes: Any) -> ReferralUnroutable:
    return ReferralUnroutable(
        **({"clinic_id": CLINIC, "reason": "unknown postal code 99999 in US"} | changes)
    )


def site_decided(decision: str = "accepted", **changes: Any) -> ReferralSiteDecided:
    values: dict[str, Any] = {"clinic_id": CLINIC, "site_code": site().code, "decision": decision}
    return ReferralSiteDecided(**(values | changes))


def progressed(step: str = "contacted", **changes: Any) -> ReferralProgressed:
    """A step of the accepting site; the field the step needs is filled in unless given."""
    needs: dict[str, Any] = {
        "screening_scheduled": {"screening_date": date(2026, 12, 14)},
        "enrolled": {"subject_id": "UCART123-0042"},
        "screen_failed": {"reason": "blast count above the protocol's limit"},
        "not_enrolled": {"reason": "the patient chose another treatment"},
    }.get(step, {})
    values: dict[str, Any] = {"clinic_id": CLINIC, "site_code": site().code, "step": step, **needs}
    return ReferralProgressed(**(values | changes))


def notified(role: str = "site", template: str = "site_new_referral") -> ReferralNotified:
    return ReferralNotified(
        recipient_role=role,  # type: ignore[arg-type]
        template=template,
        message_id=f"<{uuid.uuid4().hex}@trialroute>",
        source_event_id=uuid.uuid4(),
    )


ROUTING_EMAILS = (
    ("site", "site_new_referral"),
    ("patient", "patient_routed"),
    ("referrer", "referrer_routed"),
)
"""(role, template) of the three emails a routing sends."""


def notified_v2(*emails: tuple[str, str], source_event_id: uuid.UUID | None = None) -> ReferralNotifiedV2:
    """The ``referral.notified`` version 2 of emails (role, template) recorded together: those of a
    routing unless given, each with a fresh Message-ID, all caused by one source event."""
    source = source_event_id or uuid.uuid4()
    return ReferralNotifiedV2(
        emails=[
            NotifiedEmail(
                recipient_role=role,  # type: ignore[arg-type]
                template=template,
                message_id=f"<{uuid.uuid4().hex}@trialroute>",
                source_event_id=source,
            )
            for role, template in (emails or ROUTING_EMAILS)
        ]
    )


def status_changed(event_type: str = "referral.routed", **changes: Any) -> ReferralStatusChanged:
    """An entry of a referral's timeline as intake publishes it for the clinic (``seq`` 1 unless given)."""
    now = datetime(2026, 11, 10, 9, 30, tzinfo=UTC)
    values: dict[str, Any] = {
        "clinic_id": CLINIC,
        "seq": 1,
        "status": "routed",
        "entry_status": "routed",
        "revision": 1,
        "entry_revision": 1,
        "reason": "Memorial Hospital, New York: 3.2 km (choice 1)",
        "occurred_at": now,
        "recorded_at": now,
        "source_event_id": uuid.uuid4(),
        "source_event_type": event_type,
    }
    return ReferralStatusChanged(**(values | changes))


# --- envelopes ---------------------------------------------------------------------------------------


def wrap(
    data: EventData,
    referral_id: uuid.UUID | str | None = None,
    *,
    at: datetime | None = None,
    trace: str | None = None,
    producer: str | None = None,
) -> Envelope:
    """``data`` in an envelope as its producer would send it (a new referral id unless given; now unless
    ``at``)."""
    envelope = Envelope.wrap(
        data,
        producer=producer or PRODUCERS[type(data)],
        referral_id=uuid.UUID(str(referral_id)) if referral_id is not None else uuid.uuid4(),
        trace=trace,
    )
    return envelope if at is None else envelope.model_copy(update={"occurred_at": at})


# --- FHIR referral Bundles (services/intake/fhir/examples, docs/fhir.md) ----------------------------

FHIR_EXAMPLES = Path(__file__).resolve().parents[2] / "services" / "intake" / "fhir" / "examples"
FHIR_EXAMPLE_DAY = date(2026, 11, 10)
"""The day the example Bundles were written for (the demo's dates count back from it)."""


def fhir_examples() -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """Each demo referral (services/devstack/demo.py): its name, its example Bundle and its JSON twin."""
    from services.devstack.demo import SAMPLES, referral

    out = []
    for i, sample in enumerate(SAMPLES, 1):
        (path,) = FHIR_EXAMPLES.glob(f"{i}-*.json")
        twin = referral(sample, FHIR_EXAMPLE_DAY)
        twin["clinic_reference"] = f"DEMO-{i:04d}"
        out.append((path.stem, json.loads(path.read_text()), twin))
    return out


def fhir_bundle(reference: str | None = None) -> dict[str, Any]:
    """The first example Bundle (eligible, New York), with another clinic reference if given."""
    _, bundle, _ = fhir_examples()[0]
    if reference is not None:
        bundle["entry"][0]["resource"]["identifier"][0]["value"] = reference
    return bundle


def fhir_entry(bundle: dict[str, Any], code: str | None = None, kind: str = "Observation") -> int:
    """The index of the Bundle's entry of a resource type (an Observation: the one with this code)."""
    for i, entry in enumerate(bundle["entry"]):
        resource = entry["resource"]
        if resource["resourceType"] == kind and (
            code is None or any(c["code"] == code for c in resource["code"]["coding"])
        ):
            return i
    raise LookupError(f"no {kind} {code or ''} in the Bundle")
