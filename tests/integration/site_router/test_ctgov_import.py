"""Importing sites from a ClinicalTrials.gov record on PostgreSQL: creation, re-import that updates and
keeps capacity and reserved slots, status mapping, the geoPoint fallback, the CLI."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from services.cli import app as trialroute
from services.site_router import store
from services.site_router.schemas import SiteUpdate
from services.site_router.sites import SiteImportError, import_ctgov, update_site
from tests.integration.site_router.conftest import CommandKit

pytestmark = pytest.mark.integration

SAMPLE = Path(store.__file__).with_name("seed") / "ctgov-ucart123.json"
CODES = ["WCM", "DFCI", "MCC", "MDACC"]


def _record() -> dict[str, Any]:
    record: dict[str, Any] = json.loads(SAMPLE.read_text())
    return copy.deepcopy(record)


def _locations(record: dict[str, Any]) -> list[dict[str, Any]]:
    locations: list[dict[str, Any]] = record["protocolSection"]["contactsLocationsModule"]["locations"]
    return locations


def _write(path: Path, record: dict[str, Any]) -> Path:
    path.write_text(json.dumps(record))
    return path


async def _sites(kit: CommandKit) -> dict[str, store.Site]:
    async with kit.db.session() as session:
        return {s.code: s for s in await store.list_sites(session)}


async def test_import_creates_the_sites_under_their_codes(kit: CommandKit) -> None:
    report = await import_ctgov(kit.db, SAMPLE, kit.commands.geocoder, default_capacity=2)
    assert report.created == CODES and report.updated == []
    sites = await _sites(kit)
    wcm = sites["WCM"]
    # From the postal code (10065), not the record's city-level geoPoint (40.71427, -74.00597).
    assert (wcm.latitude, wcm.longitude) == pytest.approx((40.7651, -73.9638), abs=1e-3)
    assert (wcm.capacity, wcm.status, wcm.country, wcm.region) == (2, "recruiting", "US", "New York")
    assert (wcm.coordinator_email, wcm.phone) == ("ucart123.wcm@sites.example.org", "+1 212 555 0100")


async def test_reimport_updates_keeps_capacity_and_slots_and_maps_status(
    kit: CommandKit, tmp_path: Path
) -> None:
    await import_ctgov(kit.db, SAMPLE, kit.commands.geocoder, default_capacity=1)
    async with kit.db.session() as session:
        await update_site(session, "WCM", SiteUpdate(capacity=5))
        await session.commit()
    await kit.commands.directory.reload(kit.db)
    referral = await kit.screen()
    assert await kit.site_of(referral) == "WCM"

    record = _record()
    wcm, dfci, mcc, mdacc = _locations(record)
    wcm["facility"] = "Weill Cornell Medicine / NewYork-Presbyterian Hospital"  # mapped name, unchanged
    wcm["contacts"][0]["email"] = "new.coordinator@sites.example.org"
    dfci["status"] = "NOT_YET_RECRUITING"
    mcc["status"] = "COMPLETED"
    mdacc["status"] = "ENROLLING_BY_INVITATION"
    path = _write(tmp_path / "r.json", record)
    again = await import_ctgov(kit.db, path, kit.commands.geocoder, default_capacity=9)
    assert again.created == [] and again.updated == CODES

    sites = await _sites(kit)
    assert sorted(sites) == sorted(CODES), "re-import never duplicates"
    assert (sites["WCM"].capacity, sites["WCM"].open_count) == (5, 1)
    assert sites["WCM"].coordinator_email == "new.coordinator@sites.example.org"
    assert {code: (s.status, s.capacity) for code, s in sites.items()} == {
        "WCM": ("recruiting", 5),
        "DFCI": ("paused", 1),
        "MCC": ("closed", 1),
        "MDACC": ("paused", 1),
    }
    assert await kit.site_of(referral) == "WCM"


async def test_unknown_postal_codes_fall_back_to_the_geopoint(kit: CommandKit, tmp_path: Path) -> None:
    record = _record()
    wcm, _, _, mdacc = _locations(record)
    wcm["zip"] = "00000"  # no such ZIP in GeoNames
    mdacc |= {
        "facility": "Hôpital Saint-Louis",
        "city": "Paris",
        "state": None,
        "zip": "75010",
        "country": "France",  # no postal-code table shipped for FR
        "geoPoint": {"lat": 48.85341, "lon": 2.3488},
    }
    report = await import_ctgov(kit.db, _write(tmp_path / "r.json", record), kit.commands.geocoder)
    assert report.created == ["WCM", "DFCI", "MCC", "HOPITAL-SAINT-LOUIS-75010"]
    sites = await _sites(kit)
    assert (sites["WCM"].latitude, sites["WCM"].longitude) == (40.71427, -74.00597)
    paris = sites["HOPITAL-SAINT-LOUIS-75010"]
    assert (paris.country, paris.latitude, paris.longitude, paris.capacity) == ("FR", 48.85341, 2.3488, 3)


async def test_an_unknown_postal_code_without_a_geopoint_refuses_the_record(
    kit: CommandKit, tmp_path: Path
) -> None:
    record = _record()
    _locations(record)[1] |= {"zip": "00000"}
    del _locations(record)[1]["geoPoint"]
    _locations(record)[2]["status"] = "SOMETIMES"
    path = _write(tmp_path / "r.json", record)
    with pytest.raises(SiteImportError, match="SOMETIMES"):
        await import_ctgov(kit.db, path, kit.commands.geocoder)
    _locations(record)[2]["status"] = "RECRUITING"
    with pytest.raises(SiteImportError, match="site DFCI: unknown postal code '00000' for US"):
        await import_ctgov(kit.db, _write(path, record), kit.commands.geocoder)
    assert await _sites(kit) == {}


def test_trialroute_sites_import_ctgov(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the ``trialroute`` entry point: the shipped record, then a record that changes a site."""
    monkeypatch.setenv("SITE_ROUTER_DATABASE_URL", database_url)
    monkeypatch.setenv("SITE_ROUTER_RUNTIME_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("SITE_ROUTER_CTGOV_DEFAULT_CAPACITY", "2")
    runner = CliRunner()
    imported = runner.invoke(trialroute, ["sites", "import", "--ctgov", str(SAMPLE)])
    assert imported.exit_code == 0, imported.output
    assert "created 4 (WCM DFCI MCC MDACC), updated 0" in imported.output

    record = _record()
    _locations(record)[1]["status"] = "SUSPENDED"
    changed = _write(tmp_path / "r.json", record)
    again = runner.invoke(trialroute, ["sites", "import", "--ctgov", str(changed)])
    assert again.exit_code == 0, again.output
    assert "created 0 (-), updated 4 (WCM DFCI MCC MDACC)" in again.output
    listed = runner.invoke(trialroute, ["sites", "list"])
    assert listed.output.splitlines()[0].split("\t") == ["DFCI", "closed", "0/2", "Boston", "US"]

    codes = tmp_path / "codes.json"
    codes.write_text(json.dumps({"codes": {}}))
    derived = runner.invoke(trialroute, ["sites", "import", "--ctgov", str(SAMPLE), "--codes", str(codes)])
    assert derived.exit_code == 0, derived.output
    assert "created 4 (WEILL-CORNELL-MEDICINE-NEW-10065 DANA-FARBER-CANCER-INSTITU-02215" in derived.output

    _locations(record)[0]["country"] = "Atlantis"
    bad = runner.invoke(trialroute, ["sites", "import", "--ctgov", str(_write(tmp_path / "r.json", record))])
    assert bad.exit_code == 1 and "location #1" in bad.output and "Atlantis" in bad.output
