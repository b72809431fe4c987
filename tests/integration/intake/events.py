"""Status events as the other services publish them, put on the real topics for intake to consume."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from shared.events import (
    CriterionVerdict,
    Envelope,
    EventData,
    ReferralNotified,
    ReferralRouted,
    ReferralScreened,
    ReferralSiteDecided,
    ReferralUnroutable,
    ReferralWaitlisted,
    Referrer,
    SiteRef,
)
from shared.settings import KafkaSettings
from tests.support.kafka import produce

CLINIC = "CLINIC-A"
REFERRER = Referrer(name="Dr. Ana Smith", email="asmith@clinic.example.org")
SITE = SiteRef(
    code="US-NY-01", name="Memorial Hospital", city="New York", coordinator_email="crc@site.example.org"
)
PRODUCERS = {
    ReferralScreened: "eligibility",
    ReferralRouted: "site_router",
    ReferralWaitlisted: "site_router",
    ReferralUnroutable: "site_router",
    ReferralSiteDecided: "site_router",
    ReferralNotified: "notifier",
}


def screened(revision: int = 1, routable: bool = True, **changes: Any) -> ReferralScreened:
    values: dict[str, Any] = {
        "clinic_id": CLINIC,
        "revision": revision,
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


def routed(revision: int = 1, site: SiteRef = SITE, rank: int = 1) -> ReferralRouted:
    return ReferralRouted(
        clinic_id=CLINIC,
        revision=revision,
        site=site,
        distance_km=3.24,
        rank=rank,
        decision="eligible",
        criteria_to_confirm=[],
        consent_to_contact=True,
        referrer=REFERRER,
    )


def waitlisted(reason: str = "no recruiting site with free capacity") -> ReferralWaitlisted:
    return ReferralWaitlisted(clinic_id=CLINIC, reason=reason)


def unroutable(reason: str = "unknown postal code 99999 in US") -> ReferralUnroutable:
    return ReferralUnroutable(clinic_id=CLINIC, reason=reason)


def site_decided(decision: str, reason: str | None = None) -> ReferralSiteDecided:
    return ReferralSiteDecided(clinic_id=CLINIC, site_code=SITE.code, decision=decision, reason=reason)  # type: ignore[arg-type]


def notified(role: str = "site", template: str = "site_new_referral") -> ReferralNotified:
    return ReferralNotified(
        recipient_role=role,  # type: ignore[arg-type]
        template=template,
        message_id=f"<{uuid.uuid4().hex}@trialroute>",
        source_event_id=uuid.uuid4(),
    )


def envelope(referral_id: str | uuid.UUID, data: EventData, at: datetime) -> Envelope:
    wrapped = Envelope.wrap(data, producer=PRODUCERS[type(data)], referral_id=uuid.UUID(str(referral_id)))
    return wrapped.model_copy(update={"occurred_at": at})


async def publish(kafka: KafkaSettings, event: Envelope) -> None:
    await produce(kafka, event.type, event.to_bytes(), str(event.referral_id).encode())
