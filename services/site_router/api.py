"""HTTP routes for site coordinators (their own site's queue and decisions) and the public site finder.

Routes parse, call one use case in one transaction and shape the answer; the rules live in
``referrals.py``. A coordinator's site comes from the token (``site_code``), never from the request, and a
referral the site never had answers 404, as if it did not exist.
"""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request

from services.site_router import store
from services.site_router.config import SiteRouterSettings
from services.site_router.directory import SiteDirectory
from services.site_router.domain import (
    ACTIVE_ASSIGNMENT_STATES,
    AssignmentState,
    confirmation_note,
    criteria_to_confirm,
    postal_area,
)
from services.site_router.geo import GeoError, normalise_postal_code
from services.site_router.ratelimit import RateLimiter
from services.site_router.referrals import Router
from services.site_router.schemas import (
    CloseRequest,
    CriterionOut,
    DeclineRequest,
    NearbySite,
    NearbySites,
    QueueItem,
    ReferrerOut,
    SiteQueue,
    StudyCentreContact,
)
from shared.auth import Principal, Scope, require
from shared.db import Database
from shared.events import ReferralScreened
from shared.problems import TooManyRequests, Unprocessable

router = APIRouter()


def _db(request: Request) -> Database:
    db: Database = request.app.state.db
    return db


def _router(request: Request) -> Router:
    router: Router = request.app.state.router
    return router


def _directory(request: Request) -> SiteDirectory:
    directory: SiteDirectory = request.app.state.directory
    return directory


def _settings(request: Request) -> SiteRouterSettings:
    settings: SiteRouterSettings = request.app.state.settings
    return settings


def _rate_limited(request: Request) -> None:
    """429 with Retry-After once the client's address has used up its requests."""
    limiter: RateLimiter = request.app.state.finder_limiter
    wait_s = limiter.check(request.client.host if request.client else "unknown")
    if wait_s:
        raise TooManyRequests(
            "too many site finder requests from this address", headers={"Retry-After": str(wait_s)}
        )


DatabaseDep = Annotated[Database, Depends(_db)]
RouterDep = Annotated[Router, Depends(_router)]
DirectoryDep = Annotated[SiteDirectory, Depends(_directory)]
SettingsDep = Annotated[SiteRouterSettings, Depends(_settings)]
SiteCoordinator = Annotated[Principal, Depends(require(Scope.SITE_REFERRALS))]


# --- public site finder ---------------------------------------------------------------------------------


@router.get(
    "/v1/sites/nearby",
    tags=["public"],
    summary="Recruiting sites nearest a postal code (no token; rate-limited per client address)",
    dependencies=[Depends(_rate_limited)],
    responses={422: {"description": "unknown postal code or unsupported country"}, 429: {}},
)
async def nearby_sites(
    directory: DirectoryDep,
    router_: RouterDep,
    settings: SettingsDep,
    postal_code: Annotated[str, Query(min_length=1, max_length=16)],
    country: Annotated[str, Query(pattern=r"^[A-Za-z]{2}$")],
    limit: Annotated[int, Query(ge=1, description="at most the configured maximum")] = 5,
) -> NearbySites:
    """Where the trial recruits near the patient, with each study centre's contact."""
    try:
        location = await router_.locate(postal_code, country)
    except GeoError as exc:
        raise Unprocessable(exc.reason) from exc
    limit = min(limit, settings.finder_max_limit)
    found = directory.index.nearby(location.latitude, location.longitude, limit)
    sites = []
    for row in found:
        card = directory.cards[row.site.code]
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


# --- site coordinators ----------------------------------------------------------------------------------


def queue_item(assignment: store.Assignment, referral: store.ReferralRecord) -> QueueItem:
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


@router.get("/v1/site/referrals", tags=["site"], summary="The referrals routed to the caller's site")
async def site_referrals(
    principal: SiteCoordinator,
    db: DatabaseDep,
    settings: SettingsDep,
    status: Annotated[
        list[AssignmentState] | None, Query(description="default: routed and accepted (the open queue)")
    ] = None,
    limit: Annotated[int, Query(ge=1)] = 100,
    # PostgreSQL's OFFSET is a bigint: a larger one would fail in the store (a 500), not be a 422.
    offset: Annotated[int, Query(ge=0, le=2**63 - 1)] = 0,
) -> SiteQueue:
    """Oldest first: referral id, patient age, postal area, distance, screening, referrer, status."""
    site_code = principal.require_site()
    states = status or list(ACTIVE_ASSIGNMENT_STATES)
    async with db.session() as session:
        limit = min(limit, settings.queue_limit_max)
        rows = await store.site_queue(session, site_code, states, limit, offset)
    return SiteQueue(site_code=site_code, referrals=[queue_item(a, r) for a, r in rows])


@router.post("/v1/site/referrals/{referral_id}/accept", tags=["site"], summary="Accept a referral")
async def accept_referral(
    referral_id: uuid.UUID, principal: SiteCoordinator, db: DatabaseDep, router_: RouterDep
) -> QueueItem:
    """The site takes the referral on; it keeps its slot until closed. Publishes referral.site_decided."""
    site_code = principal.require_site()
    referral, assignment = await db.run(lambda session: router_.accept(session, site_code, referral_id))
    return queue_item(assignment, referral)


@router.post("/v1/site/referrals/{referral_id}/decline", tags=["site"], summary="Decline a referral")
async def decline_referral(
    referral_id: uuid.UUID,
    body: DeclineRequest,
    principal: SiteCoordinator,
    db: DatabaseDep,
    router_: RouterDep,
) -> QueueItem:
    """Frees the slot; the referral goes to the next nearest site that has not declined it."""
    site_code = principal.require_site()
    referral, assignment = await db.run(
        lambda session: router_.decline(session, site_code, referral_id, body.reason)
    )
    return queue_item(assignment, referral)


@router.post("/v1/site/referrals/{referral_id}/close", tags=["site"], summary="Close a referral")
async def close_referral(
    referral_id: uuid.UUID,
    body: CloseRequest,
    principal: SiteCoordinator,
    db: DatabaseDep,
    router_: RouterDep,
) -> QueueItem:
    """Ends the site's work on the referral (enrolled or not) and frees its slot for the waitlist."""
    site_code = principal.require_site()
    referral, assignment = await db.run(
        lambda session: router_.close(session, site_code, referral_id, body.enrolled, body.reason)
    )
    return queue_item(assignment, referral)
