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
    next_steps,
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
    SiteBrief,
    SitePublic,
    SiteQueue,
    SiteReferral,
    StepOut,
    StudyCentreContact,
    TimelineEvent,
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

    async def site_queue(
        self, site_codes: Collection[str], states: Collection[str], limit: int, offset: int
    ) -> SiteQueue:
        """The sites' referrals in these states, oldest first, each with its steps; ``limit`` capped by
        the settings."""
        codes = sorted(set(site_codes))
        async with self.db.session() as session:
            limit = min(limit, self.settings.queue_limit_max)
            rows = await store.site_queue(session, codes, states, limit, offset)
            steps = await store.steps_of(session, [a.id for a, _ in rows if a.id is not None])
        return SiteQueue(
            site_code=codes[0] if len(codes) == 1 else None,
            site_codes=codes,
            referrals=[queue_item(a, r, steps.get(a.id or 0, ())) for a, r in rows],
        )

    async def referral_for_site(self, site_codes: Collection[str], referral_id: uuid.UUID) -> SiteReferral:
        """One referral's page for a coordinator: its latest assignment at one of their sites, the
        pre-screen, referrer and clinic, and the timeline at their sites (another site's decisions are
        not theirs to see). 404 when none of their sites ever had it, as for an unknown id."""
        codes = set(site_codes)
        async with self.db.session() as session:
            referral = await session.get(store.ReferralRecord, referral_id)
            history = await store.assignments_of(session, referral_id) if referral else []
            mine = [a for a in history if a.site_code in codes]
            if referral is None or not mine:
                raise NotFound(f"no referral {referral_id} at site {', '.join(sorted(codes))}")
            steps = await store.steps_of(session, [a.id for a in mine if a.id is not None])
            current = mine[-1]
            site = await store.get_site(session, current.site_code)
        item = queue_item(current, referral, steps.get(current.id or 0, ()))
        screened = ReferralScreened.model_validate(referral.screening) if referral.screening else None
        return SiteReferral(
            **item.model_dump(),
            site=SiteBrief(code=site.code, name=site.name, city=site.city) if site else None,
            ruleset=screened.ruleset if screened else None,
            score=screened.score if screened else None,
            next_steps=next_steps(current.state, current.step),
            timeline=_timeline(mine, steps),
        )

    async def portal_queue(self, site_codes: Collection[str]) -> PortalQueue:
        """The portal's queue of a coordinator's sites: every open referral (they hold slots, so the
        sites' capacity bounds them) and the most recent closed ones (``queue_limit_max``), oldest first."""
        async with self.db.session() as session:
            rows = await store.sites_queue(session, site_codes, self.settings.queue_limit_max)
            steps = await store.steps_of(session, [a.id for a, _ in rows if a.id is not None])
            names = await _site_names(session, site_codes)
        items = [portal_item(queue_item(a, r, steps.get(a.id or 0, ())), names) for a, r in rows]
        return PortalQueue(site_codes=sorted(site_codes), site_names=names, items=items)

    async def portal_referral(self, site_codes: Collection[str], referral_id: uuid.UUID) -> PortalReferral:
        """``referral_for_site`` with the portal's tab and the site's name; NotFound likewise."""
        view = await self.referral_for_site(site_codes, referral_id)
        return PortalReferral(
            **view.model_dump(),
            site_name=view.site.name if view.site else view.site_code,
            tab=queue_tab(view.status, opened=view.opened_at is not None),
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


def portal_item(item: QueueItem, site_names: dict[str, str]) -> PortalItem:
    return PortalItem(
        **item.model_dump(),
        site_name=site_names.get(item.site_code, item.site_code),
        tab=queue_tab(item.status, opened=item.opened_at is not None),
    )


def _timeline(
    assignments: Sequence[store.Assignment], steps: dict[int, list[store.ReferralStep]]
) -> list[TimelineEvent]:
    """Decisions and steps at the caller's sites, in order of time."""
    events: list[TimelineEvent] = []
    for a in assignments:
        events.append(
            TimelineEvent(at=a.routed_at, site_code=a.site_code, event="routed", detail=f"choice {a.rank}")
        )
        if a.opened_at is not None:
            events.append(TimelineEvent(at=a.opened_at, site_code=a.site_code, event="opened"))
        if a.accepted_at is not None:
            events.append(TimelineEvent(at=a.accepted_at, site_code=a.site_code, event="accepted"))
        for step in steps.get(a.id or 0, ()):
            detail = (
                step.reason
                or step.subject_id
                or (step.screening_date.isoformat() if step.screening_date else None)
            )
            events.append(
                TimelineEvent(at=step.recorded_at, site_code=a.site_code, event=step.step, detail=detail)
            )
        ended = a.state not in (AssignmentState.ROUTED, AssignmentState.ACCEPTED)
        if ended and a.decided_at is not None and not (a.state == AssignmentState.CLOSED and a.step):
            # An outcome step already says how it closed; a legacy close or a decline says it here.
            events.append(
                TimelineEvent(at=a.decided_at, site_code=a.site_code, event=a.state, detail=a.reason)
            )
    return sorted(events, key=lambda e: e.at)


def queue_item(
    assignment: store.Assignment,
    referral: store.ReferralRecord,
    steps: Sequence[store.ReferralStep] = (),
) -> QueueItem:
    """A referral as its site sees it: screening, referrer, status and steps, never the patient's
    identity."""
    screened = ReferralScreened.model_validate(referral.screening) if referral.screening else None
    verdicts = [(c.id, c.verdict, c.reason) for c in screened.criteria] if screened else []
    return QueueItem(
        referral_id=referral.referral_id,
        site_code=assignment.site_code,
        status=assignment.state,
        step=assignment.step,
        step_at=assignment.step_at,
        steps=[
            StepOut(
                step=s.step,
                at=s.recorded_at,
                screening_date=s.screening_date,
                subject_id=s.subject_id,
                reason=s.reason,
            )
            for s in steps
        ],
        routed_at=assignment.routed_at,
        opened_at=assignment.opened_at,
        accepted_at=assignment.accepted_at,
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
