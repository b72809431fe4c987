"""Trial staff's site administration (scope ``sites:admin``): register, change, pause, close, reopen.

After a change commits, this process re-reads its site index at once; other instances within
``index_refresh_s`` (their reservations are decided by the database meanwhile, so nothing is overbooked).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, status

from services.site_router import sites, store
from services.site_router.api import DatabaseDep, DirectoryDep, RouterDep
from services.site_router.domain import SiteStatus
from services.site_router.schemas import SiteCreate, SitePublic, SiteUpdate
from shared.auth import Principal, Scope, require
from shared.problems import NotFound

router = APIRouter(prefix="/v1/sites", tags=["sites"])

SitesAdmin = Annotated[Principal, Depends(require(Scope.SITES_ADMIN))]
Code = Annotated[str, Path(pattern=r"^[A-Z0-9][A-Z0-9_-]{0,31}$")]


@router.get("", summary="Every site with its capacity and reserved slots")
async def list_sites(_: SitesAdmin, db: DatabaseDep) -> list[SitePublic]:
    """All sites, whatever their status, by code."""
    async with db.session() as session:
        rows = await store.list_sites(session)
    return [SitePublic.model_validate(s) for s in rows]


@router.post("", status_code=status.HTTP_201_CREATED, summary="Register a site")
async def create_site(
    body: SiteCreate, _: SitesAdmin, db: DatabaseDep, router_: RouterDep, directory: DirectoryDep
) -> SitePublic:
    """Coordinates come from the postal code (422 if unknown); a recruiting site takes the waitlist."""
    async with db.session() as session:
        site = await sites.create_site(session, body, router_.geocoder)
    await directory.reload(db)
    return SitePublic.model_validate(site)


@router.get("/{code}", summary="One site")
async def get_site(code: Code, _: SitesAdmin, db: DatabaseDep) -> SitePublic:
    async with db.session() as session:
        site = await store.get_site(session, code)
    if site is None:
        raise NotFound(f"no site {code}")
    return SitePublic.model_validate(site)


@router.patch("/{code}", summary="Change a site's name, contact or capacity")
async def update_site(
    code: Code, body: SiteUpdate, _: SitesAdmin, db: DatabaseDep, directory: DirectoryDep
) -> SitePublic:
    """More capacity routes waitlisted referrals at once; less never takes referrals away."""
    async with db.session() as session:
        site = await sites.update_site(session, code, body)
    await directory.reload(db)
    return SitePublic.model_validate(site)


async def _set_status(code: str, new: SiteStatus, db: DatabaseDep, directory: DirectoryDep) -> SitePublic:
    async with db.session() as session:
        site = await sites.set_status(session, code, new)
    await directory.reload(db)
    return SitePublic.model_validate(site)


@router.post("/{code}/pause", summary="Stop routing new referrals to the site for now")
async def pause_site(code: Code, _: SitesAdmin, db: DatabaseDep, directory: DirectoryDep) -> SitePublic:
    """Referrals the site holds stay in its queue."""
    return await _set_status(code, SiteStatus.PAUSED, db, directory)


@router.post("/{code}/close", summary="Stop recruiting at the site")
async def close_site(code: Code, _: SitesAdmin, db: DatabaseDep, directory: DirectoryDep) -> SitePublic:
    """Referrals the site holds stay in its queue until it decides them."""
    return await _set_status(code, SiteStatus.CLOSED, db, directory)


@router.post("/{code}/reopen", summary="Recruit again at a paused or closed site")
async def reopen_site(code: Code, _: SitesAdmin, db: DatabaseDep, directory: DirectoryDep) -> SitePublic:
    """Its free slots go to waitlisted referrals at once, oldest first."""
    return await _set_status(code, SiteStatus.RECRUITING, db, directory)
