"""Envelopes for the consumer-handler tests (``tests/handlers``): ``tests.support.builders`` with
intake's clinic and site (``tests/integration/intake/events.py``), a referral id first, and each event
in its producer's envelope."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from shared.events import Envelope, EventData, ReferralSiteDecided, ReferralWithdrawn, SiteRef
from tests.integration.intake import events as intake_events
from tests.integration.intake.events import (
    CLINIC,
    SITE,
    progressed,
    routed,
    screened,
    unroutable,
    waitlisted,
)
from tests.support import builders
from tests.support.builders import DAY, REFERRER, clinical, notified, notified_v2

__all__ = [
    "CLINIC",
    "DAY",
    "REFERRER",
    "SITE",
    "clinical",
    "envelope",
    "notified",
    "notified_v2",
    "progressed",
    "routed",
    "screened",
    "site",
    "site_decided",
    "submitted",
    "unroutable",
    "waitlisted",
    "withdrawn",
]


def envelope(
    referral_id: uuid.UUID, data: EventData, at: datetime | None = None, *, trace: str | None = None
) -> Envelope:
    """``data`` in the envelope its producer sends, occurring ``at`` (now if not given)."""
    return builders.wrap(data, referral_id, at=at, trace=trace)


def submitted(
    referral_id: uuid.UUID,
    revision: int = 1,
    *,
    clinic_id: str = CLINIC,
    age: int = 58,
    trace: str | None = None,
    **clinical_changes: Any,
) -> Envelope:
    """``referral.submitted`` (revision 1) or ``referral.amended``, as intake sends it."""
    data = builders.submitted(
        revision=revision, clinic_id=clinic_id, age_years=age, clinical=clinical(**clinical_changes)
    )
    return envelope(referral_id, data, trace=trace)


def withdrawn(reason: str | None = "patient moved", clinic_id: str = CLINIC) -> ReferralWithdrawn:
    return builders.withdrawn(clinic_id=clinic_id, reason=reason)


def site(code: str, name: str | None = None, city: str = "New York") -> SiteRef:
    """A site reference as ``referral.routed`` carries it."""
    return builders.site(code, city=city, **({"name": name} if name else {}))


def site_decided(
    decision: str, reason: str | None = None, *, site_code: str = SITE.code, enrolled: bool | None = None
) -> ReferralSiteDecided:
    """A site's decision (``accepted``, ``declined``, ``closed``) on the referral it holds."""
    data = intake_events.site_decided(decision, reason)
    return data.model_copy(update={"site_code": site_code, "enrolled": enrolled})
