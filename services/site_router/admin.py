"""Trial staff's site administration (scope ``sites:admin``): register, change, pause, close, reopen.

After a change commits, this process re-reads its site index at once; other instances within
``index_refresh_s`` (their reservations are decided by the database meanwhile, so nothing is overbooked).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, status

from services.site_router import sites
from services.site_router.deps import SiteRouterState, SiteRouterStateDep
from services.site_router.domain import SiteStatus
from services.site_router.schemas import SiteCreate, SitePublic, SiteUpdate
from shared.auth import Principal, Scope, require

router = APIRouter(prefix="/v1/sites", tags=["sites"])

SitesAdmin = Annotated[Principal, Depends(require(Scope.SITES_ADMIN))]
Code = Annotated[str, Path(pattern=r"^[A-Z0-9][A-Z0-9_-]{0,31}$")]


@router.get("", summary="Every site with its capacity and reserved slots")
async def list_sites(_: SitesAdmin, site_router: SiteRouterStateDep) -> list[SitePublic]:
    """All sites, whatever their status, by code."""
    return await site_router.queries.sites()


@router.post("", status_code=status.HTTP_201_CREATED, summary="Register a site")
async def create_site(body: SiteCreate, _: SitesAdmin, site_router: SiteRouterStateDep) -> SitePublic:
    """Coordinates come from the postal code (422 if unknown); a recruiting site takes the waitlist."""
    async with site_router.db.session() as session:
        site = await sites.create_site(session, body, site_router.commands.geocoder)
    await site_router.directory.reload(site_router.db)
    return SitePublic.model_validate(site)


@router.get("/{code}", summary="One site")
async def get_site(code: Code, _: SitesAdmin, site_router: SiteRouterStateDep) -> SitePublic:
    return await site_router.queries.site(code)


@router.patch("/{code}", summary="Change a site's name, contact or capacity")
async def update_site(
    code: Code, body: SiteUpdate, _: SitesAdmin, site_router: SiteRouterStateDep
) -> SitePublic:
    """More capacity routes waitlisted referrals at once; less never takes referrals away."""
    async with site_router.db.session() as session:
        site = await sites.update_site(session, code, body)
    await site_router.directory.reload(site_router.db)
    return SitePublic.model_validate(site)


async def _set_status(code: str, new: SiteStatus, site_router: SiteRouterState) -> SitePublic:
    async with site_router.db.session() as session:
        site = await sites.set_status(session, code, new)
    await site_router.directory.reload(site_router.db)
    return SitePublic.model_validate(site)


@router.post("/{code}/pause", summary="Stop routing new referrals to the site for now")
async def pause_site(code: Code, _: SitesAdmin, site_router: SiteRouterStateDep) -> SitePublic:
    """Referrals the site holds stay in its queue."""
    return await _set_status(code, SiteStatus.PAUSED, site_router)


@router.post("/{code}/close", summary="Stop recruiting at the site")
async def close_site(code: Code, _: SitesAdmin, site_router: SiteRouterStateDep) -> SitePublic:
    """Referrals the site holds stay in its queue until it decides them."""
    return await _set_status(code, SiteStatus.CLOSED, site_router)


@router.post("/{code}/reopen", summary="Recruit again at a paused or closed site")
async def reopen_site(code: Code, _: SitesAdmin, site_router: SiteRouterStateDep) -> SitePublic:
    """Its free slots go to waitlisted referrals at once, oldest first."""
    return await _set_status(code, SiteStatus.RECRUITING, site_router)
