"""Use cases on sites: register, change, pause, close, reopen, import a file or a ClinicalTrials.gov record.

Whatever gives a site room (a new recruiting site, more capacity, reopening) hands the room to the
waitlist in the same transaction. Pausing or closing a site stops new routings only: the referrals it
already holds stay in its queue until it decides them (a decline sends them on).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from services.site_router import ctgov, routing, store
from services.site_router.domain import SiteStatus
from services.site_router.geo import Geocoder, GeoError
from services.site_router.schemas import SiteCreate, SiteUpdate
from shared.db import Database
from shared.problems import Conflict, NotFound, Unprocessable
from shared.store import utcnow

SEED_FILE = Path(__file__).with_name("seed") / "sites.json"


async def _geocode(geocoder: Geocoder, postal_code: str, country: str) -> tuple[float, float]:
    location = await asyncio.to_thread(geocoder.locate, postal_code, country)
    return location.latitude, location.longitude


async def create_site(session: AsyncSession, data: SiteCreate, geocoder: Geocoder) -> store.Site:
    try:
        lat, lon = await _geocode(geocoder, data.postal_code, data.country)
    except GeoError as exc:
        raise Unprocessable(exc.reason) from exc
    await store.waitlist_lock(session)  # also serialises two creations of one code
    if await store.get_site(session, data.code) is not None:
        raise Conflict(f"site {data.code} exists")
    site = store.Site(**data.model_dump(), latitude=lat, longitude=lon)
    session.add(site)
    await session.flush()
    await routing.drain_waitlist(session, [site.code], None)
    return site


async def _locked_site(session: AsyncSession, code: str) -> store.Site:
    await store.waitlist_lock(session)
    site = await store.get_site(session, code, lock=True)
    if site is None:
        raise NotFound(f"no site {code}")
    return site


async def update_site(session: AsyncSession, code: str, changes: SiteUpdate) -> store.Site:
    site = await _locked_site(session, code)
    grew = changes.capacity is not None and changes.capacity > site.capacity
    for name, value in changes.model_dump(exclude_unset=True).items():
        if value is not None or name == "phone":
            setattr(site, name, value)
    site.updated_at = utcnow()
    await session.flush()
    if grew:
        await routing.drain_waitlist(session, [code], None)
    return await _fresh(session, code)


async def set_status(session: AsyncSession, code: str, status: SiteStatus) -> store.Site:
    """Pause (from recruiting), close (from anything) or reopen (to recruiting, which frees room)."""
    site = await _locked_site(session, code)
    if status == SiteStatus.PAUSED and site.status == SiteStatus.CLOSED:
        raise Conflict(f"site {code} is closed; reopen it first", state=site.status)
    if site.status != status:
        site.status, site.updated_at = status, utcnow()
        await session.flush()
        if status == SiteStatus.RECRUITING:
            await routing.drain_waitlist(session, [code], None)
    return await _fresh(session, code)


async def _fresh(session: AsyncSession, code: str) -> store.Site:
    site = await store.get_site(session, code)
    assert site is not None
    return site


# --- import ---------------------------------------------------------------------------------------------


class SiteImportError(ValueError):
    """The file cannot be imported as a whole; ``problems`` names each bad entry."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = list(problems)


@dataclass
class ImportReport:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    routed_from_waitlist: int = 0


def read_sites_file(path: Path) -> list[SiteCreate]:
    """Parse ``{"sites": [...]}`` (the trial's sites.json) or a bare list; every entry or nothing."""
    try:
        raw: Any = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise SiteImportError([f"{path}: {exc}"]) from exc
    entries = raw.get("sites") if isinstance(raw, dict) else raw
    if not isinstance(entries, list):
        raise SiteImportError([f"{path}: expected a list of sites or an object with 'sites'"])
    sites, problems = [], []
    for i, entry in enumerate(entries):
        try:
            sites.append(SiteCreate.model_validate(entry))
        except ValidationError as exc:
            errors = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            problems.append(f"site #{i + 1}: {errors}")
    codes = [s.code for s in sites]
    problems += [f"site {c}: listed twice" for c in sorted({c for c in codes if codes.count(c) > 1})]
    if problems:
        raise SiteImportError(problems)
    return sites


async def import_sites(db: Database, path: Path, geocoder: Geocoder | None = None) -> ImportReport:
    """Upsert a sites file's sites by code in one transaction (``open_count`` is kept), coordinates from
    the postal codes; any bad entry or unknown postal code refuses the whole file."""
    return await upsert_sites(db, read_sites_file(path), geocoder or Geocoder())


async def import_ctgov(
    db: Database,
    path: Path,
    geocoder: Geocoder | None = None,
    *,
    codes_file: Path | None = ctgov.SHIPPED_CODES_FILE,
    default_capacity: int = 3,
) -> ImportReport:
    """Upsert a ClinicalTrials.gov record's locations (``ctgov.py``): capacities already set are kept,
    and a postal code the geocoder does not know takes the record's geoPoint."""
    try:
        found = ctgov.read_ctgov_file(path, codes_file=codes_file, default_capacity=default_capacity)
    except ctgov.CtgovRecordError as exc:
        raise SiteImportError([f"{path}: {p}" for p in exc.problems]) from exc
    return await upsert_sites(
        db, found.sites, geocoder or Geocoder(), fallbacks=found.fallbacks, keep=frozenset({"capacity"})
    )


async def upsert_sites(
    db: Database,
    sites: Sequence[SiteCreate],
    geocoder: Geocoder,
    *,
    fallbacks: Mapping[str, tuple[float, float]] | None = None,
    keep: frozenset[str] = frozenset(),
) -> ImportReport:
    """Create or update sites by code, all or nothing, and hand any room they add to the waitlist.

    Coordinates come from the postal code, else from ``fallbacks`` (by code); ``keep`` names the fields
    an existing site keeps (the source does not know them); ``open_count`` is always kept.
    """
    located: dict[str, tuple[float, float]] = {}
    problems = []
    for site in sites:
        try:
            located[site.code] = await _geocode(geocoder, site.postal_code, site.country)
        except GeoError as exc:
            if fallbacks and site.code in fallbacks:
                located[site.code] = fallbacks[site.code]
            else:
                problems.append(f"site {site.code}: {exc.reason}")
    if problems:
        raise SiteImportError(problems)
    report = ImportReport()
    async with db.session() as session:
        await store.waitlist_lock(session)
        for data in sites:
            lat, lon = located[data.code]
            existing = await store.get_site(session, data.code, lock=True)
            if existing is None:
                session.add(store.Site(**data.model_dump(), latitude=lat, longitude=lon))
                report.created.append(data.code)
            else:
                for name, value in data.model_dump(exclude={"code", *keep}).items():
                    setattr(existing, name, value)
                existing.latitude, existing.longitude, existing.updated_at = lat, lon, utcnow()
                report.updated.append(data.code)
        await session.flush()
        report.routed_from_waitlist = await routing.drain_waitlist(session, None, None)
    return report
