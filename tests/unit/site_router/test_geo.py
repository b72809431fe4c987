"""Distances and offline geocoding over the shipped GeoNames data."""

import socket
import urllib.request
from pathlib import Path

import numpy as np
import pgeocode
import pytest

from services.site_router.domain import distances_km, great_circle_km, km_to_miles
from services.site_router.geo import (
    SHIPPED_DATA_DIR,
    Geocoder,
    GeoError,
    Location,
    UnknownPostalCode,
    UnsupportedCountry,
    normalise_postal_code,
)
from tests.unit.site_router.conftest import NetworkBlockedError

pytestmark = pytest.mark.unit

NEW_YORK = (40.7128, -74.0060)
BOSTON = (42.3601, -71.0589)
LOS_ANGELES = (34.0522, -118.2437)
LONDON = (51.5074, -0.1278)
PARIS = (48.8566, 2.3522)
HOUSTON = (29.7604, -95.3698)
TAMPA = (27.9506, -82.4572)

SHIPPED_COUNTRIES = ("AT", "AU", "BE", "CA", "CH", "DE", "ES", "GB", "IT", "NL", "US")


@pytest.fixture(scope="module")
def geocoder() -> Geocoder:
    return Geocoder()


# --- distances ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "expected_km"),
    [(NEW_YORK, BOSTON, 306), (NEW_YORK, LOS_ANGELES, 3936), (LONDON, PARIS, 344)],
    ids=["new_york-boston", "new_york-los_angeles", "london-paris"],
)
def test_great_circle_matches_known_city_pairs(a, b, expected_km):
    assert great_circle_km(*a, *b) == pytest.approx(expected_km, rel=0.01)
    assert great_circle_km(*b, *a) == pytest.approx(great_circle_km(*a, *b))


def test_great_circle_of_a_point_to_itself_and_antipode():
    assert great_circle_km(*PARIS, *PARIS) == 0.0
    assert great_circle_km(0.0, 0.0, 0.0, 180.0) == pytest.approx(np.pi * 6371.0088)


def test_vectorised_distances_agree_with_scalar():
    points = [BOSTON, LOS_ANGELES, LONDON, PARIS, NEW_YORK]
    lats, lons = np.array([p[0] for p in points]), np.array([p[1] for p in points])
    expected = [great_circle_km(*NEW_YORK, *p) for p in points]
    np.testing.assert_allclose(distances_km(*NEW_YORK, lats, lons), expected, rtol=1e-12, atol=1e-9)


def test_miles():
    assert km_to_miles(1.609344) == pytest.approx(1.0)
    assert km_to_miles(great_circle_km(*NEW_YORK, *BOSTON)) == pytest.approx(190.2, rel=0.01)


# --- normalisation --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "country", "expected"),
    [
        ("10021", "US", "10021"),
        ("10021-1234", "US", "10021"),
        ("100211234", "US", "10021"),
        (" 02215 ", "US", "02215"),
        ("2215", "US", "2215"),  # a lost leading zero is not guessed back
        ("H3Z 2Y7", "CA", "H3Z"),
        ("h3z2y7", "CA", "H3Z"),
        ("SW1A 1AA", "GB", "SW1A"),
        ("sw1a1aa", "GB", "SW1A"),
        ("M1 1AE", "GB", "M1"),
        ("M11AE", "GB", "M1"),
        ("SW1A", "GB", "SW1A"),
        ("1012 AB", "NL", "1012"),
        ("1012ab", "NL", "1012"),
        ("10115", "DE", "10115"),
        ("00118", "IT", "00118"),
        ("0200", "AU", "0200"),
    ],
)
def test_normalise_postal_code(code, country, expected):
    assert normalise_postal_code(code, country) == expected


# --- geocoding ------------------------------------------------------------------------------------------

# Postal codes of the AMELI-01 investigator sites (shared/trial/sites.json) and the cities they are in.
SITE_POSTAL_CODES = [
    ("WCM", "10065", NEW_YORK),
    ("DFCI", "02215", BOSTON),
    ("MCC", "33612", TAMPA),
    ("MDACC", "77030", HOUSTON),
]


@pytest.mark.parametrize(
    ("site", "postal_code", "city"), SITE_POSTAL_CODES, ids=[s[0] for s in SITE_POSTAL_CODES]
)
def test_every_trial_site_postal_code_geocodes_offline(geocoder, site, postal_code, city):
    location = geocoder.locate(postal_code, "US")
    assert location.postal_code == postal_code
    assert great_circle_km(location.latitude, location.longitude, *city) < 20


def test_example_patient_postal_code(geocoder):
    location = geocoder.locate("10021", "US")
    assert location == Location("US", "10021", 40.7685, -73.9588, "New York", "New York")


def test_zip_plus_four_is_the_zip(geocoder):
    assert geocoder.locate("10021-1234", "us") == geocoder.locate("10021", "US")


def test_canadian_code_by_its_first_three_characters(geocoder):
    location = geocoder.locate("H3Z 2Y7", "CA")
    assert (location.postal_code, location.region) == ("H3Z", "Quebec")
    assert great_circle_km(location.latitude, location.longitude, 45.5019, -73.5674) < 10  # Montreal


def test_british_code_by_its_outward_code(geocoder):
    location = geocoder.locate("SW1A 1AA", "GB")
    assert location.postal_code == "SW1A"
    assert great_circle_km(location.latitude, location.longitude, *LONDON) < 5
    assert geocoder.locate("sw1a1aa", "gb") == location


def test_dutch_code_by_its_four_digits(geocoder):
    location = geocoder.locate("1012 AB", "NL")
    assert (location.postal_code, location.place_name) == ("1012", "Amsterdam")


@pytest.mark.parametrize(
    ("country", "postal_code"),
    [
        ("AT", "1010"),
        ("AU", "2000"),
        ("BE", "1000"),
        ("CA", "M5V"),
        ("CH", "8001"),
        ("DE", "10115"),
        ("ES", "28001"),
        ("GB", "EC1A 1BB"),
        ("IT", "00118"),
        ("NL", "1012"),
        ("US", "60601"),
    ],
)
def test_every_shipped_country_geocodes(geocoder, country, postal_code):
    location = geocoder.locate(postal_code, country)
    assert location.country == country
    assert -90 <= location.latitude <= 90 and -180 <= location.longitude <= 180


def test_unknown_postal_code_has_a_reason(geocoder):
    with pytest.raises(UnknownPostalCode) as raised:
        geocoder.locate("00000", "US")
    assert raised.value.reason == "unknown postal code '00000' for US"
    assert isinstance(raised.value, GeoError)


@pytest.mark.parametrize("code", ["", "   ", "ABCDE", "1002"])
def test_malformed_postal_code_is_unknown(geocoder, code):
    with pytest.raises(UnknownPostalCode, match="unknown postal code"):
        geocoder.locate(code, "US")


def test_unsupported_country_lists_the_supported_ones(geocoder):
    with pytest.raises(UnsupportedCountry) as raised:
        geocoder.locate("75001", "fr")
    assert raised.value.reason == (
        "country 'FR' is not supported (supported: AT, AU, BE, CA, CH, DE, ES, GB, IT, NL, US)"
    )


def test_supported_countries_are_the_shipped_files(geocoder):
    assert geocoder.supported_countries == SHIPPED_COUNTRIES


def test_lookups_are_cached(geocoder):
    geocoder.locate("02215", "US")
    hits = geocoder.cache_info().hits
    geocoder.locate("02215-4321", "US")
    assert geocoder.cache_info().hits == hits + 1


# --- offline guarantees ---------------------------------------------------------------------------------


def test_network_guard_is_in_force():
    with pytest.raises(NetworkBlockedError):
        socket.create_connection(("download.geonames.org", 443), timeout=1)
    with pytest.raises(NetworkBlockedError):
        urllib.request.urlopen("https://download.geonames.org/export/zip/US.zip", timeout=1)


def test_a_country_without_a_shipped_file_is_refused_not_downloaded(tmp_path):
    (tmp_path / "CA.txt.gz").write_bytes((SHIPPED_DATA_DIR / "CA.txt.gz").read_bytes())
    geocoder = Geocoder(data_dir=tmp_path)
    assert geocoder.locate("H3Z 2Y7", "CA").postal_code == "H3Z"
    with pytest.raises(UnsupportedCountry, match=r"\(supported: CA\)"):
        geocoder.locate("10021", "US")


def test_pgeocode_storage_is_never_touched(geocoder):
    storage = Path(pgeocode.STORAGE_DIR)
    before = sorted(storage.iterdir()) if storage.exists() else None
    Geocoder().warm(["BE"])
    assert (sorted(storage.iterdir()) if storage.exists() else None) == before


def test_index_dir_keeps_pgeocode_index_between_geocoders(tmp_path):
    first = Geocoder(index_dir=tmp_path).locate("H3Z 2Y7", "CA")
    written = list(tmp_path.glob("*/CA-index.txt"))
    assert len(written) == 1
    assert not list(tmp_path.glob("*/.index-*"))  # the scratch directory is gone
    written[0].touch()
    mtime = written[0].stat().st_mtime_ns
    assert Geocoder(index_dir=tmp_path).locate("H3Z 2Y7", "CA") == first
    assert written[0].stat().st_mtime_ns == mtime  # read back, not rebuilt


def test_shipped_data_carries_the_geonames_notice():
    notice = (SHIPPED_DATA_DIR / "NOTICE.md").read_text()
    assert "www.geonames.org" in notice
    assert "CC BY 4.0" in notice
    assert "2024-04-12" in notice
