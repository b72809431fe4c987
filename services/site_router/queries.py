"""The site router's reads: the public finder, a site's queue, the coordinators' portal, the site register.

The finder reads the in-memory site index (no store round trip per request); the rest read the store.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from services.site_router import store
from services.site_router.commands import Commands
from services.site_router.config import SiteRouterSettings
from services.site_router.directory import SiteDirectory
from services.site_router.domain import (
    AssignmentState,
    confirmation_note,
    criteria_to_confirm,
    postal_area,
    queue_tab,
)
from services.site_router.geo import GeoError, normalise_postal_code
from services.site_router.schemas import (
    CriterionOut,
    NearbySite,
    NearbySites,
    PortalItem,
    PortalQueue,
    PortalReferral,
    QueueItem,
    ReferrerOut,
    SitePublic,
    SiteQueue,
    StudyCentreContact,
    TimelineEntry,
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

    async def portal_queue(self, site_codes: Collection[str]) -> PortalQueue:
        """The portal's queue of a coordinator's sites: every open referral and the most recent closed
        ones (``queue_limit_max``), oldest first."""
        async with self.db.session() as session:
            rows = await store.sites_queue(session, site_codes, self.settings.queue_limit_max)
            names = await _site_names(session, site_codes)
        return PortalQueue(site_codes=sorted(site_codes), items=[portal_item(a, r, names) for a, r in rows])

    async def portal_referral(self, site_codes: Collection[str], referral_id: uuid.UUID) -> PortalReferral:
        """One referral as the coordinator's sites hold it (the latest of their assignments of it) and
        its timeline there; NotFound when none of their sites ever held it (other sites' routings and
        decisions are not theirs to see)."""
        async with self.db.session() as session:
            referral = await session.get(store.ReferralRecord, referral_id)
            history = await store.assignments_of(session, referral_id) if referral else []
            mine = [a for a in history if a.site_code in site_codes]
            if referral is None or not mine:
                raise NotFound(f"no referral {referral_id} at your sites")
            names = await _site_names(session, site_codes)
        return PortalReferral(
            item=portal_item(mine[-1], referral, names), timeline=timeline(mine, names, len(site_codes) > 1)
        )

    async def sites_of(self, site_codes: Collection[str]) -> list[SitePublic]:
        """The coordinator's own sites, by code (the portal's settings page)."""
        async with self.db.session() as session:
            rows = await store.list_sites(session)
        return [SitePublic.model_validate(s) for s in rows if s.code in site_codes]

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


async def _site_names(session: AsyncSession, site_codes: Collection[str]) -> dict[str, str]:
    return {s.code: s.name for s in await store.list_sites(session) if s.code in site_codes}


def portal_item(
    assignment: store.Assignment, referral: store.ReferralRecord, site_names: dict[str, str]
) -> PortalItem:
    return PortalItem(
        **queue_item(assignment, referral).model_dump(),
        site_code=assignment.site_code,
        site_name=site_names.get(assignment.site_code, assignment.site_code),
        opened_at=assignment.opened_at,
        tab=queue_tab(assignment.state, opened=assignment.opened_at is not None),
    )


def timeline(
    assignments: Sequence[store.Assignment], site_names: dict[str, str], name_sites: bool
) -> list[TimelineEntry]:
    """What happened to the referral at these sites, oldest first: routings, first opening, decisions."""
    entries = []
    for a in assignments:
        where = f" to {site_names.get(a.site_code, a.site_code)}" if name_sites else ""
        choice = f", choice {a.rank} (nearer sites were full or declined)" if a.rank > 1 else ""
        entries.append(
            TimelineEntry(at=a.routed_at, what=f"Routed{where}", detail=f"{a.distance_km:.0f} km{choice}")
        )
        if a.opened_at is not None:
            entries.append(TimelineEntry(at=a.opened_at, what="Opened by the site"))
        if a.decided_at is not None:
            entries.append(
                TimelineEntry(at=a.decided_at, what=_ENDED.get(a.state, a.state), detail=_ended_detail(a))
            )
    return sorted(entries, key=lambda e: e.at)


_ENDED: dict[str, str] = {
    AssignmentState.ROUTED: "Routed",
    AssignmentState.ACCEPTED: "Accepted",
    AssignmentState.DECLINED: "Declined",
    AssignmentState.CLOSED: "Closed",
    AssignmentState.RELEASED: "Released (no longer routable)",
    AssignmentState.WITHDRAWN: "Withdrawn by the referring clinic",
}


def _ended_detail(a: store.Assignment) -> str | None:
    if a.state == AssignmentState.CLOSED and a.enrolled is not None:
        outcome = "enrolled" if a.enrolled else "not enrolled"
        return f"{outcome}: {a.reason}" if a.reason else outcome
    return a.reason


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
