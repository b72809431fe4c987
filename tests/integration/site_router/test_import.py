"""Importing sites from a file: the shipped seed, upserts by code, refusal of a bad file, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from services.cli import app as trialroute
from services.site_router import store
from services.site_router.sites import SEED_FILE, SiteImportError, import_sites
from tests.integration.site_router.conftest import CommandKit

pytestmark = pytest.mark.integration


def test_the_seed_holds_the_trials_four_sites() -> None:
    assert [s["code"] for s in json.loads(SEED_FILE.read_text())["sites"]] == ["WCM", "DFCI", "MCC", "MDACC"]


async def test_import_upserts_by_code_and_keeps_reserved_slots(kit: CommandKit, tmp_path: Path) -> None:
    report = await import_sites(kit.db, SEED_FILE, kit.commands.geocoder)
    assert report.created == ["WCM", "DFCI", "MCC", "MDACC"] and report.updated == []
    async with kit.db.session() as session:
        wcm = await store.get_site(session, "WCM")
    assert wcm is not None and (wcm.latitude, wcm.longitude) == pytest.approx((40.7651, -73.9638), abs=1e-3)
    assert (wcm.capacity, wcm.status, wcm.coordinator_email) == (
        4,
        "recruiting",
        "ucart123.wcm@sites.example.org",
    )

    await kit.commands.directory.reload(kit.db)
    referral = await kit.screen()
    changed = json.loads(SEED_FILE.read_text())
    changed["sites"][0] |= {"capacity": 6, "name": "WCM / NYP"}
    path = tmp_path / "sites.json"
    path.write_text(json.dumps(changed))
    again = await import_sites(kit.db, path, kit.commands.geocoder)
    assert again.created == [] and again.updated == ["WCM", "DFCI", "MCC", "MDACC"]
    async with kit.db.session() as session:
        wcm = await store.get_site(session, "WCM")
    assert wcm is not None and (wcm.name, wcm.capacity, wcm.open_count) == ("WCM / NYP", 6, 1)
    assert await kit.site_of(referral) == "WCM"


async def test_a_bad_file_changes_nothing(kit: CommandKit, tmp_path: Path) -> None:
    bad = json.loads(SEED_FILE.read_text())
    bad["sites"][1]["postal_code"] = "00000"
    bad["sites"][2]["capacity"] = -1
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(SiteImportError) as refused:
        await import_sites(kit.db, path, kit.commands.geocoder)
    assert [p.split(":")[0] for p in refused.value.problems] == ["site #3"]
    del bad["sites"][2]
    path.write_text(json.dumps(bad))
    with pytest.raises(SiteImportError, match="site DFCI: unknown postal code '00000' for US"):
        await import_sites(kit.db, path, kit.commands.geocoder)
    assert await kit.open_counts() == {}


def test_trialroute_sites_import_and_list(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the ``trialroute`` entry point, configured by environment variables only."""
    monkeypatch.setenv("SITE_ROUTER_DATABASE_URL", database_url)
    monkeypatch.setenv("SITE_ROUTER_RUNTIME_DIR", str(tmp_path / "run"))
    runner = CliRunner()
    imported = runner.invoke(trialroute, ["sites", "import"])
    assert imported.exit_code == 0, imported.output
    assert "created 4 (WCM DFCI MCC MDACC), updated 0" in imported.output
    listed = runner.invoke(trialroute, ["sites", "list"])
    assert listed.output.splitlines()[0].split("\t") == ["DFCI", "recruiting", "0/3", "Boston", "US"]
    assert (tmp_path / "run" / "geonames-index").is_dir()

    missing = runner.invoke(trialroute, ["sites", "import", str(tmp_path / "nope.json")])
    assert missing.exit_code == 1 and "nope.json" in missing.output
