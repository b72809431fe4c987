"""Status events as the other services publish them about intake's clinic (``CLINIC-A``) and its site:
``tests.support.builders`` with intake's defaults."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from shared.events import (
    Envelope,
    EventData,
    ReferralProgressed,
    ReferralRouted,
    ReferralScreened,
    ReferralSiteDecided,
    ReferralUnroutable,
    ReferralWaitlisted,
    SiteRef,
)
from tests.support import builders
from tests.support.builders import notified

__all__ = ["notified"]

CLINIC = "CLINIC-A"
SITE = builders.site(name="Memorial Hospital", coordinator_email="crc@site.example.org")


def screened(revision: int = 1, routable: bool = True, **changes: Any) -> ReferralScreened:
    return builders.screened(**({"clinic_id": CLINIC, "revision": revision} | changes), routable=routable)


def routed(revision: int = 1, site: SiteRef = SITE, rank: int = 1) -> ReferralRouted:
    return builders.routed(clinic_id=CLINIC, revision=revision, site=site, rank=rank)


def waitlisted(reason: str = "no recruiting site with free capacity") -> ReferralWaitlisted:
    return builders.waitlisted(clinic_id=CLINIC, reason=reason)


def unroutable(reason: str = "unknown postal code 99999 in US") -> ReferralUnroutable:
    return builders.unroutable(clinic_id=CLINIC, reason=reason)


def site_decided(decision: str, reason: str | None = None) -> ReferralSiteDecided:
    return builders.site_decided(decision, clinic_id=CLINIC, site_code=SITE.code, reason=reason)


def progressed(step: str, **changes: Any) -> ReferralProgressed:
    return builders.progressed(step, clinic_id=CLINIC, site_code=SITE.code, **changes)


def envelope(referral_id: str | uuid.UUID, data: EventData, at: datetime) -> Envelope:
    return builders.wrap(data, referral_id, at=at)
