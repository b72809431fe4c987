"""The site router's reads: the public finder, a site's queue, the site register.

The finder reads the in-memory site index (no store round trip per request); the rest read the store.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from services.site_router import store
from services.site_router.commands import Commands
from services.site_router.config import SiteRouterSettings
from services.site_router.directory import SiteDirectory
from services.site_router.domain import confirmation_note, criteria_to_confirm, postal_area
from services.site_router.geo import GeoError, normalise_postal_code
from services.site_router.schemas import (
    CriterionOut,
    NearbySite,
    NearbySites,
    QueueItem,
    ReferrerOut,
    SitePublic,
    SiteQueue,
    StudyCentreContact,
)
from shared.db import Database
from shared.events import ReferralScreened
from shared.problems import NotFound, Unprocessable


@dataclass
class Queries:
    db: Database
    settings: SiteRouterSettings
    commands: Commands
    directory: SiteDirectory

    async def nearby(self, postal_code: str, country: str, limit: int) -> NearbySites:
        """Where the trial recruits near a postal code, nearest first, with each study centre's contact."""
        try:
            location = await self.commands.locate(postal_code, country)
        except GeoError as exc:
            raise Unprocessable(exc.reason) from exc
        limit = min(limit, self.settings.finder_max_limit)
        found = self.directory.index.nearby(location.latitude, location.longitude, limit)
        sites = []
        for row in found:
            card = self.directory.cards[row.site.code]
            sites.append(
                NearbySite(
                    code=card.code,
                    name=card.name,
                    city=card.city,
                    region=card.region,
                    country=card.country,
                    distance_km=round(row.km, 1),
                    distance_miles=round(row.miles, 1),
                    contact=StudyCentreContact(email=card.coordinator_email, phone=card.phone),
                )
            )
        return NearbySites(
            postal_code=location.postal_code, country=location.country, place=location.place_name, sites=sites
        )

    async def site_queue(self, site_code: str, states: Collection[str], limit: int, offset: int) -> SiteQueue:
        """The site's referrals in these states, oldest first; ``limit`` capped by the settings."""
        async with self.db.session() as session:
            limit = min(limit, self.settings.queue_limit_max)
            rows = await store.site_queue(session, site_code, states, limit, offset)
        return SiteQueue(site_code=site_code, referrals=[queue_item(a, r) for a, r in rows])

    async def sites(self) -> list[SitePublic]:
        """Every site, whatever its status, by code."""
        async with self.db.session() as session:
            rows = await store.list_sites(session)
        return [SitePublic.model_validate(s) for s in rows]

    async def site(self, code: str) -> SitePublic:
        async with self.db.session() as session:
            site = await store.get_site(session, code)
        if site is None:
            raise NotFound(f"no site {code}")
        return SitePublic.model_validate(site)


def queue_item(assignment: store.Assignment, referral: store.ReferralRecord) -> QueueItem:
    """A referral as its site sees it: screening, referrer and status, never the patient's identity."""
    screened = ReferralScreened.model_validate(referral.screening) if referral.screening else None
    verdicts = [(c.id, c.verdict, c.reason) for c in screened.criteria] if screened else []
    return QueueItem(
        referral_id=referral.referral_id,
        status=assignment.state,
        routed_at=assignment.routed_at,
        decided_at=assignment.decided_at,
        rank=assignment.rank,
        distance_km=assignment.distance_km,
        age_years=screened.age_years if screened else None,
        postal_area=(
            postal_area(normalise_postal_code(screened.postal_code, screened.country)) if screened else None
        ),
        country=screened.country if screened else None,
        revision=referral.revision,
        decision=screened.decision if screened else None,
        criteria=[CriterionOut(id=i, verdict=v, reason=r) for i, v, r in verdicts],
        criteria_to_confirm=criteria_to_confirm(verdicts),
        note=confirmation_note(verdicts) if screened else None,
        consent_to_contact=screened.consent_to_contact if screened else None,
        clinic_id=referral.clinic_id,
        referrer=ReferrerOut(**screened.referrer.model_dump()) if screened else None,
        reason=assignment.reason,
        enrolled=assignment.enrolled,
    )
