"""Events as the services publish them, for tests that hand them to consumer handlers.

The one place for the handler tests' builders. The status events are intake's integration builders
(``tests/integration/intake/events.py``), the clinical block is referral.md's example; every builder
speaks for the same clinic (``CLINIC``), referrer and default site unless told otherwise.
"""

from __future__ import annotations

import copy
import uuid
from datetime import date, datetime
from typing import Any

from shared.events import (
    Envelope,
    EventData,
    ReferralAmended,
    ReferralNotified,
    ReferralRouted,
    ReferralScreened,
    ReferralSiteDecided,
    ReferralSubmitted,
    ReferralUnroutable,
    ReferralWaitlisted,
    ReferralWithdrawn,
    SiteRef,
)
from shared.referral import EXAMPLE_REFERRAL
from tests.integration.intake.events import (
    CLINIC,
    REFERRER,
    SITE,
    notified,
    routed,
    screened,
    unroutable,
    waitlisted,
)
from tests.integration.intake.events import site_decided as _site_decided

__all__ = [
    "CLINIC",
    "DAY",
    "REFERRER",
    "SITE",
    "clinical",
    "envelope",
    "notified",
    "routed",
    "screened",
    "site",
    "site_decided",
    "submitted",
    "unroutable",
    "waitlisted",
    "withdrawn",
]

DAY = date(2026, 11, 10)
"""The referral day of every submitted revision."""

PRODUCERS: dict[type[EventData], str] = {
    ReferralSubmitted: "intake",
    ReferralAmended: "intake",
    ReferralWithdrawn: "intake",
    ReferralScreened: "eligibility",
    ReferralRouted: "site_router",
    ReferralWaitlisted: "site_router",
    ReferralUnroutable: "site_router",
    ReferralSiteDecided: "site_router",
    ReferralNotified: "notifier",
}


def envelope(
    referral_id: uuid.UUID,
    data: EventData,
    at: datetime | None = None,
    *,
    trace: str | None = None,
) -> Envelope:
    """``data`` in the envelope its producer sends, occurring ``at`` (now if not given)."""
    wrapped = Envelope.wrap(data, producer=PRODUCERS[type(data)], referral_id=referral_id, trace=trace)
    return wrapped if at is None else wrapped.model_copy(update={"occurred_at": at})


def clinical(**changes: Any) -> dict[str, Any]:
    """referral.md's example clinical block with top-level fields replaced."""
    return {**copy.deepcopy(EXAMPLE_REFERRAL["clinical"]), **changes}


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
    model = ReferralSubmitted if revision == 1 else ReferralAmended
    data = model(
        clinic_id=clinic_id,
        revision=revision,
        referral_day=DAY,
        age_years=age,
        postal_code="10021",
        country="US",
        consent_to_contact=True,
        referrer=REFERRER,
        clinical=clinical(**clinical_changes),
    )
    return envelope(referral_id, data, trace=trace)


def withdrawn(reason: str | None = "patient moved", clinic_id: str = CLINIC) -> ReferralWithdrawn:
    return ReferralWithdrawn(clinic_id=clinic_id, reason=reason)


def site(code: str, name: str | None = None, city: str = "New York") -> SiteRef:
    """A site reference as ``referral.routed`` carries it."""
    return SiteRef(
        code=code,
        name=name or f"Site {code}",
        city=city,
        coordinator_email=f"{code.lower()}@sites.example.org",
    )


def site_decided(
    decision: str, reason: str | None = None, *, site_code: str = SITE.code, enrolled: bool | None = None
) -> ReferralSiteDecided:
    """A site's decision (``accepted``, ``declined``, ``closed``) on the referral it holds."""
    return _site_decided(decision, reason).model_copy(update={"site_code": site_code, "enrolled": enrolled})
