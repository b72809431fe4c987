"""Reading a ClinicalTrials.gov study record (API v2) as sites: status, country, code, contact, geoPoint."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from services.site_router import ctgov
from services.site_router.ctgov import (
    LOCATION_STATUS,
    SHIPPED_CODES_FILE,
    CtgovRecordError,
    country_code,
    derive_code,
    read_ctgov_file,
    read_ctgov_record,
)
from services.site_router.domain import SiteStatus
from services.site_router.sites import SEED_FILE

pytestmark = pytest.mark.unit

SAMPLE = Path(ctgov.__file__).with_name("seed") / "ctgov-ucart123.json"


def _record() -> dict[str, Any]:
    record: dict[str, Any] = json.loads(SAMPLE.read_text())
    return copy.deepcopy(record)


def _locations(record: dict[str, Any]) -> list[dict[str, Any]]:
    locations: list[dict[str, Any]] = record["protocolSection"]["contactsLocationsModule"]["locations"]
    return locations


def test_the_shipped_record_maps_onto_the_trials_sites() -> None:
    found = read_ctgov_file(SAMPLE, codes_file=SHIPPED_CODES_FILE, default_capacity=2)
    seed = {s["code"]: s for s in json.loads(SEED_FILE.read_text())["sites"]}
    assert found.nct_id == "NCT03190278"
    assert [s.code for s in found.sites] == list(seed)
    for site in found.sites:
        assert (site.postal_code, site.country, site.city) == (
            seed[site.code]["postal_code"],
            "US",
            seed[site.code]["city"],
        )
        assert site.coordinator_email == seed[site.code]["coordinator_email"]
        assert (site.capacity, site.status) == (2, SiteStatus.RECRUITING)
    assert found.fallbacks["DFCI"] == (42.35843, -71.05977)
    assert found.sites[0].region == "New York" and found.sites[0].phone == "+1 212 555 0100"


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("RECRUITING", SiteStatus.RECRUITING),
        ("NOT_YET_RECRUITING", SiteStatus.PAUSED),
        ("ACTIVE_NOT_RECRUITING", SiteStatus.PAUSED),
        ("ENROLLING_BY_INVITATION", SiteStatus.PAUSED),
        ("COMPLETED", SiteStatus.CLOSED),
        ("TERMINATED", SiteStatus.CLOSED),
        ("WITHDRAWN", SiteStatus.CLOSED),
        ("SUSPENDED", SiteStatus.CLOSED),
    ],
)
def test_recruitment_status_maps_to_site_status(status: str, expected: SiteStatus) -> None:
    record = _record()
    _locations(record)[0]["status"] = status
    assert read_ctgov_record(record).sites[0].status == expected
    assert LOCATION_STATUS[status] == expected


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("United States", "US"),
        ("United Kingdom", "GB"),
        ("Korea, Republic of", "KR"),
        ("Czechia", "CZ"),
        ("Taiwan", "TW"),
        ("Turkey", "TR"),
        (" germany ", "DE"),
    ],
)
def test_country_names_become_iso_codes(name: str, code: str) -> None:
    assert country_code(name) == code


def test_derived_codes_are_stable_valid_and_distinguish_postal_codes() -> None:
    code = derive_code("Dana-Farber Cancer Institute", "02215")
    assert code == "DANA-FARBER-CANCER-INSTITU-02215" == derive_code("Dana-Farber Cancer Institute", "02215")
    assert derive_code("Hôpital Saint-Louis", "75010") == "HOPITAL-SAINT-LOUIS-75010"
    assert derive_code("Dana-Farber Cancer Institute", "02115") != code
    long = derive_code("A" * 60, "SW1A 1AA")
    assert len(long) == 32 and long.endswith("-SW1A1AA")


def test_without_a_codes_mapping_sites_get_derived_codes() -> None:
    found = read_ctgov_record(_record())
    assert found.sites[1].code == "DANA-FARBER-CANCER-INSTITU-02215"
    assert set(found.fallbacks) == {s.code for s in found.sites}


def test_the_contact_with_an_email_is_the_coordinator_study_contacts_first() -> None:
    record = _record()
    _locations(record)[0]["contacts"] = [
        {"name": "PI", "role": "PRINCIPAL_INVESTIGATOR", "email": "pi@sites.example.org"},
        {"name": "No email", "role": "CONTACT"},
        {
            "name": "Coordinator",
            "role": "CONTACT",
            "email": "c@sites.example.org",
            "phone": "555",
            "phoneExt": "12",
        },
    ]
    site = read_ctgov_record(record).sites[0]
    assert (site.coordinator_email, site.phone) == ("c@sites.example.org", "555 ext. 12")


def test_a_missing_or_bad_geopoint_leaves_no_fallback() -> None:
    record = _record()
    del _locations(record)[0]["geoPoint"]
    _locations(record)[1]["geoPoint"] = {"lat": 123.0, "lon": 0}
    found = read_ctgov_record(record)
    assert found.sites[0].code not in found.fallbacks and found.sites[1].code not in found.fallbacks
    assert found.sites[2].code in found.fallbacks


def test_bad_locations_refuse_the_record_naming_each() -> None:
    record = _record()
    locations = _locations(record)
    locations[0]["status"] = "AVAILABLE"
    locations[1]["country"] = "Atlantis"
    locations[2]["contacts"] = [{"name": "PI", "role": "PRINCIPAL_INVESTIGATOR"}]
    del locations[3]["city"]
    with pytest.raises(CtgovRecordError) as refused:
        read_ctgov_record(record)
    problems = refused.value.problems
    assert len(problems) == 4
    assert problems[0].startswith("location #1 (Weill Cornell") and "'AVAILABLE'" in problems[0]
    assert "Atlantis" in problems[1]
    assert "no contact with an email" in problems[2]
    assert problems[3].startswith("location #4") and "city" in problems[3]


def test_two_locations_with_one_code_refuse_the_record() -> None:
    record = _record()
    _locations(record).append(copy.deepcopy(_locations(record)[0]))
    with pytest.raises(CtgovRecordError, match="two locations have this code"):
        read_ctgov_record(record)


@pytest.mark.parametrize("record", [{}, [], {"protocolSection": {}}, {"protocolSection": {"x": 1}}])
def test_a_record_without_locations_is_refused(record: Any) -> None:
    with pytest.raises(CtgovRecordError):
        read_ctgov_record(record)


def test_a_bad_codes_file_is_refused(tmp_path: Path) -> None:
    codes = tmp_path / "codes.json"
    codes.write_text(json.dumps({"codes": {"Dana-Farber Cancer Institute": 7}}))
    with pytest.raises(CtgovRecordError, match="expected"):
        read_ctgov_file(SAMPLE, codes_file=codes)
