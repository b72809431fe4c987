"""A ClinicalTrials.gov study record (API v2 JSON) as the sites the import upserts.

The record's ``protocolSection.contactsLocationsModule.locations`` become the same ``SiteCreate`` list
that ``sites.read_sites_file`` makes of a sites file, so both go through one upsert (``sites.upsert_sites``).
Everything here is pure: no database, no geocoding. What ClinicalTrials.gov does not say is decided so:

- **status**: ``LOCATION_STATUS`` (recruiting, paused while the site cannot take a referral yet or any
  more, closed once it never will); any other value refuses the record rather than guess.
- **country**: the record spells country names ("United States", "Korea, Republic of"); pycountry turns
  them into ISO 3166 alpha-2 codes, with ``_COUNTRY_ALIASES`` for the older names it no longer knows.
- **code**: ``codes`` (facility name to an existing site code, e.g. the shipped
  ``seed/ctgov-site-codes.json``) first, else ``derive_code``: a slug of facility and postal code, the
  same on every import of the same location. A facility renamed on ClinicalTrials.gov would become a new
  site: map its new name to the old code.
- **contact**: the first contact with an email, role ``CONTACT`` before investigators; a location with none
  refuses the record (every site needs a coordinator address).
- **capacity**: ClinicalTrials.gov has none; new sites get ``default_capacity`` and the import keeps the
  capacity of a site that exists.
- **coordinates**: by postal code like every site; the record's ``geoPoint`` (returned in ``fallbacks``)
  when the geocoder does not know the code or the country.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pycountry
from pydantic import ValidationError

from services.site_router.domain import SiteStatus
from services.site_router.schemas import SiteCreate

SHIPPED_CODES_FILE = Path(__file__).with_name("seed") / "ctgov-site-codes.json"

LOCATION_STATUS: dict[str, SiteStatus] = {
    "RECRUITING": SiteStatus.RECRUITING,
    "NOT_YET_RECRUITING": SiteStatus.PAUSED,
    "ACTIVE_NOT_RECRUITING": SiteStatus.PAUSED,
    "ENROLLING_BY_INVITATION": SiteStatus.PAUSED,
    "COMPLETED": SiteStatus.CLOSED,
    "TERMINATED": SiteStatus.CLOSED,
    "WITHDRAWN": SiteStatus.CLOSED,
    "SUSPENDED": SiteStatus.CLOSED,
}
"""ClinicalTrials.gov recruitment status of a location to the router's site status. Paused and closed
both stop new routings; closed says the site will not come back (reopen is a deliberate act)."""

_COUNTRY_ALIASES = {
    "TURKEY": "TR",
    "MACEDONIA, THE FORMER YUGOSLAV REPUBLIC OF": "MK",
    "SWAZILAND": "SZ",
}
"""Names ClinicalTrials.gov has used that pycountry's current names no longer match."""

_CODE_MAX = 32  # schemas.SiteCode
_POSTAL_MAX = 10


class CtgovRecordError(ValueError):
    """The record cannot be read as a whole; ``problems`` names each bad location."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass
class CtgovSites:
    """The record's locations as sites, and the record's coordinates of each (by site code)."""

    nct_id: str | None
    sites: list[SiteCreate] = field(default_factory=list)
    fallbacks: dict[str, tuple[float, float]] = field(default_factory=dict)


def country_code(name: str) -> str:
    """ "United States" -> "US"; raises LookupError for a name that is no country."""
    cleaned = name.strip()
    if cleaned.upper() in _COUNTRY_ALIASES:
        return _COUNTRY_ALIASES[cleaned.upper()]
    return str(pycountry.countries.lookup(cleaned).alpha_2)


def derive_code(facility: str, postal_code: str) -> str:
    """A stable site code: the facility's words upper-cased (ASCII) and the postal code, in 32 characters.

    ``Dana-Farber Cancer Institute``, ``02215`` -> ``DANA-FARBER-CANCER-INSTITU-02215``.
    """
    ascii_name = unicodedata.normalize("NFKD", facility).encode("ascii", "ignore").decode()
    words = re.findall(r"[A-Z0-9]+", ascii_name.upper())
    postal = re.sub(r"[^A-Z0-9]", "", postal_code.upper())[:_POSTAL_MAX]
    slug = "-".join(words)[: _CODE_MAX - len(postal) - 1].rstrip("-")
    return f"{slug}-{postal}" if slug and postal else slug or postal


def location_status(value: Any) -> SiteStatus:
    """A location's recruitment status as a site status; KeyError for one the mapping does not know."""
    return LOCATION_STATUS[str(value).strip().upper()]


def _contact(location: Mapping[str, Any]) -> Mapping[str, Any] | None:
    with_email = [c for c in location.get("contacts") or [] if isinstance(c, dict) and c.get("email")]
    with_email.sort(key=lambda c: c.get("role") != "CONTACT")  # stable: study contacts first
    return with_email[0] if with_email else None


def _geo_point(location: Mapping[str, Any]) -> tuple[float, float] | None:
    point = location.get("geoPoint")
    if not isinstance(point, dict):
        return None
    lat, lon = point.get("lat"), point.get("lon")
    if not isinstance(lat, int | float) or not isinstance(lon, int | float):
        return None
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        return None
    return float(lat), float(lon)


def _site(
    location: Mapping[str, Any], codes: Mapping[str, str], default_capacity: int
) -> tuple[SiteCreate, tuple[float, float] | None]:
    """One location as a site; raises ValueError (ValidationError, KeyError, LookupError) with why not."""
    facility = str(location.get("facility") or "").strip()
    postal = str(location.get("zip") or "").strip()
    if not facility:
        raise ValueError("no facility")
    try:
        status = location_status(location.get("status"))
    except KeyError:
        raise ValueError(
            f"status {location.get('status')!r} is not one of {sorted(LOCATION_STATUS)}"
        ) from None
    try:
        country = country_code(str(location.get("country") or ""))
    except LookupError:
        raise ValueError(f"country {location.get('country')!r} is not a known country name") from None
    contact = _contact(location)
    if contact is None:
        raise ValueError("no contact with an email (the site's coordinator address)")
    phone = contact.get("phone")
    if phone and contact.get("phoneExt"):
        phone = f"{phone} ext. {contact['phoneExt']}"
    site = SiteCreate(
        code=codes.get(facility) or derive_code(facility, postal),
        name=facility,
        city=location.get("city"),  # type: ignore[arg-type]  # validated by the model
        region=location.get("state"),
        postal_code=postal,
        country=country,
        coordinator_email=contact["email"],
        phone=phone,
        capacity=default_capacity,
        status=status,
    )
    return site, _geo_point(location)


def read_ctgov_record(
    record: Any, *, codes: Mapping[str, str] | None = None, default_capacity: int = 3
) -> CtgovSites:
    """Every location of a study record as a site, or CtgovRecordError naming each bad one."""
    if not isinstance(record, dict) or not isinstance(record.get("protocolSection"), dict):
        raise CtgovRecordError(["not a ClinicalTrials.gov API v2 study record (no protocolSection)"])
    section = record["protocolSection"]
    nct_id = (section.get("identificationModule") or {}).get("nctId")
    locations = (section.get("contactsLocationsModule") or {}).get("locations")
    if not isinstance(locations, list) or not locations:
        raise CtgovRecordError(["protocolSection.contactsLocationsModule.locations: no locations"])
    result, problems = CtgovSites(nct_id=nct_id), []
    for i, location in enumerate(locations):
        name = location.get("facility") if isinstance(location, dict) else None
        label = f"location #{i + 1}" + (f" ({name})" if name else "")
        try:
            if not isinstance(location, dict):
                raise ValueError("not an object")
            site, point = _site(location, codes or {}, default_capacity)
        except ValidationError as exc:
            errors = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            problems.append(f"{label}: {errors}")
            continue
        except ValueError as exc:
            problems.append(f"{label}: {exc}")
            continue
        result.sites.append(site)
        if point is not None:
            result.fallbacks[site.code] = point
    site_codes = [s.code for s in result.sites]
    twice = sorted({c for c in site_codes if site_codes.count(c) > 1})
    problems += [f"site {c}: two locations have this code" for c in twice]
    if problems:
        raise CtgovRecordError(problems)
    return result


def read_ctgov_file(path: Path, *, codes_file: Path | None = None, default_capacity: int = 3) -> CtgovSites:
    """``read_ctgov_record`` of a file; ``codes_file`` maps facility names to existing site codes."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        codes = json.loads(codes_file.read_text(encoding="utf-8")) if codes_file else {}
    except (OSError, json.JSONDecodeError) as exc:
        raise CtgovRecordError([str(exc)]) from exc
    codes = codes.get("codes", codes) if isinstance(codes, dict) else None
    if not isinstance(codes, dict) or not all(isinstance(v, str) for v in codes.values()):
        raise CtgovRecordError([f"{codes_file}: expected {{'codes': {{facility: site code}}}}"])
    return read_ctgov_record(record, codes=codes, default_capacity=default_capacity)
