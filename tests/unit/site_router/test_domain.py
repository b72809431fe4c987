"""Which site a referral goes to: nearest recruiting site with room that has not declined it."""

import math

import numpy as np
import pytest

from services.site_router import domain
from services.site_router.domain import (
    NearbySite,
    SiteIndex,
    SiteStatus,
    SiteView,
    choose_site,
    distances_km,
    great_circle_km,
    nearby,
    rank_sites,
)

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True, params=["python", "numpy"])
def index_kind(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test runs on both of the index's paths: plain Python (a trial's few sites) and numpy."""
    monkeypatch.setattr(domain, "ARRAY_INDEX_MIN_SITES", 0 if request.param == "numpy" else 10**9)
    return str(request.param)


PATIENT = (40.7685, -73.9588)  # 10021, New York


def site(
    code: str, lat: float, lon: float, status: str = "recruiting", capacity: int = 3, open_count: int = 0
):
    return SiteView(code, lat, lon, status, capacity, open_count)


WCM = site("WCM", 40.7651, -73.9638, capacity=4)
DFCI = site("DFCI", 42.3471, -71.1027)
MCC = site("MCC", 28.0502, -82.45)
MDACC = site("MDACC", 29.7041, -95.401, capacity=4)
TRIAL_SITES = [MDACC, MCC, DFCI, WCM]


def codes(ranked) -> list[str]:
    return [entry[0].code for entry in ranked]


def test_nearest_site_with_room_is_chosen():
    choice = choose_site(*PATIENT, TRIAL_SITES)
    assert choice is not None
    assert choice.site == WCM
    assert choice.km == pytest.approx(great_circle_km(*PATIENT, WCM.lat, WCM.lon), rel=1e-9)


def test_full_site_is_skipped():
    full = site("WCM", WCM.lat, WCM.lon, capacity=4, open_count=4)
    assert choose_site(*PATIENT, [full, DFCI, MCC]).site == DFCI


def test_site_without_capacity_is_skipped():
    assert choose_site(*PATIENT, [site("WCM", WCM.lat, WCM.lon, capacity=0), DFCI]).site == DFCI


@pytest.mark.parametrize("status", [SiteStatus.PAUSED, SiteStatus.CLOSED, "paused", "closed"])
def test_sites_not_recruiting_are_skipped(status):
    paused = site("WCM", WCM.lat, WCM.lon, status=status)
    assert choose_site(*PATIENT, [paused, DFCI, MCC]).site == DFCI


def test_declined_sites_are_skipped_in_distance_order():
    assert choose_site(*PATIENT, TRIAL_SITES, declined={"WCM"}).site == DFCI
    assert choose_site(*PATIENT, TRIAL_SITES, declined={"WCM", "DFCI"}).site == MCC
    assert choose_site(*PATIENT, TRIAL_SITES, declined={"WCM", "DFCI", "NOPE"}).site == MCC


def test_no_eligible_site_means_none():
    assert choose_site(*PATIENT, TRIAL_SITES, declined={"WCM", "DFCI", "MCC", "MDACC"}) is None
    assert choose_site(*PATIENT, [site("A", 0, 0, status="paused"), site("B", 1, 1, open_count=3)]) is None
    assert choose_site(*PATIENT, []) is None


def test_ties_go_to_the_lowest_code_whatever_the_input_order():
    twins = [site("ZED", 41.0, -74.0), site("ALPHA", 41.0, -74.0), site("MID", 41.0, -74.0)]
    assert choose_site(*PATIENT, twins).site.code == "ALPHA"
    assert choose_site(*PATIENT, list(reversed(twins))).site.code == "ALPHA"
    assert choose_site(*PATIENT, twins, declined={"ALPHA"}).site.code == "MID"
    assert codes(rank_sites(*PATIENT, twins)) == ["ALPHA", "MID", "ZED"]


def test_rank_sites_orders_every_site_by_distance_without_the_excluded():
    ranked = rank_sites(*PATIENT, TRIAL_SITES, exclude_codes={"DFCI"})
    assert codes(ranked) == ["WCM", "MCC", "MDACC"]
    assert [km for _, km in ranked] == sorted(km for _, km in ranked)
    paused = site("WCM", WCM.lat, WCM.lon, status="paused")
    assert codes(rank_sites(*PATIENT, [paused, DFCI]))[0] == "WCM"  # ranking ignores status


def test_nearby_lists_recruiting_sites_with_km_and_miles():
    closed = site("DFCI", DFCI.lat, DFCI.lon, status="closed")
    full = site("MCC", MCC.lat, MCC.lon, open_count=3)
    found = nearby(*PATIENT, [WCM, closed, full, MDACC], limit=10)
    assert [entry.site.code for entry in found] == ["WCM", "MCC", "MDACC"]
    first = found[0]
    assert isinstance(first, NearbySite)
    assert first.miles == pytest.approx(first.km / 1.609344)


def test_nearby_honours_the_limit():
    index = SiteIndex(TRIAL_SITES)
    assert [entry.site.code for entry in index.nearby(*PATIENT, limit=2)] == ["WCM", "DFCI"]
    assert index.nearby(*PATIENT, limit=0) == []


def test_update_refreshes_one_site_in_place():
    index = SiteIndex(TRIAL_SITES)
    assert index.choose(*PATIENT).site == WCM
    index.update(site("WCM", WCM.lat, WCM.lon, capacity=4, open_count=4))
    assert index.choose(*PATIENT).site == DFCI
    index.update(site("WCM", WCM.lat, WCM.lon, capacity=4, open_count=3))
    assert index.choose(*PATIENT).site.code == "WCM"
    index.update(site("DFCI", 40.77, -73.96))  # moved next to the patient
    assert index.choose(*PATIENT).site.code == "DFCI"
    with pytest.raises(KeyError):
        index.update(site("NEW", 0, 0))


def test_index_refuses_duplicate_codes():
    with pytest.raises(ValueError, match="unique"):
        SiteIndex([WCM, WCM])


@pytest.mark.parametrize(
    "bad",
    [
        {"lat": 91.0},
        {"lon": -181.0},
        {"lat": math.nan},
        {"capacity": -1},
        {"open_count": -1},
    ],
)
def test_site_view_refuses_impossible_values(bad):
    with pytest.raises(ValueError):
        site(**{"code": "X", "lat": 0.0, "lon": 0.0, **bad})


def test_index_agrees_with_brute_force_on_random_sites():
    rng = np.random.default_rng(20240412)
    sites = [
        site(
            f"S{i:04d}",
            float(rng.uniform(25, 60)),
            float(rng.uniform(-125, 20)),
            status=str(rng.choice(["recruiting", "recruiting", "paused", "closed"])),
            capacity=int(rng.integers(0, 4)),
            open_count=int(rng.integers(0, 4)),
        )
        for i in range(500)
    ]
    index = SiteIndex(sites)
    for lat, lon in zip(rng.uniform(25, 60, 50), rng.uniform(-125, 20, 50), strict=True):
        declined = {sites[i].code for i in rng.choice(len(sites), 20)}
        eligible = [s for s in sites if s.has_room and s.code not in declined]
        expected = min(eligible, key=lambda s: (great_circle_km(lat, lon, s.lat, s.lon), s.code))
        assert index.choose(lat, lon, declined).site == expected


def test_nearby_ties_at_the_limit_go_by_code():
    twins = [site(code, 41.0, -74.0) for code in ("D", "B", "C", "A")] + [site("FAR", 10.0, 10.0)]
    assert [entry.site.code for entry in nearby(*PATIENT, twins, limit=2)] == ["A", "B"]


def test_index_distances_are_great_circle_distances():
    rng = np.random.default_rng(3)
    lats, lons = rng.uniform(-89, 89, 200), rng.uniform(-180, 180, 200)
    index = SiteIndex(
        site(f"S{i:03d}", float(a), float(b)) for i, (a, b) in enumerate(zip(lats, lons, strict=True))
    )
    expected = distances_km(*PATIENT, lats, lons)
    np.testing.assert_allclose(index.distances_km(*PATIENT), expected, rtol=1e-9, atol=1e-6)
    ranked = index.rank(*PATIENT)
    assert [km for _, km in ranked] == pytest.approx(sorted(expected), rel=1e-9)


@pytest.mark.parametrize(("lat", "lon"), [(math.nan, 0.0), (0.0, math.nan), (95.0, 0.0), (0.0, 200.0)])
def test_impossible_patient_coordinates_are_refused(lat, lon):
    with pytest.raises(ValueError, match="out of range"):
        choose_site(lat, lon, TRIAL_SITES)


def test_the_index_takes_the_path_its_size_calls_for(index_kind):
    assert SiteIndex(TRIAL_SITES).vectorised == (index_kind == "numpy")


def test_both_paths_answer_alike_on_random_sites(monkeypatch):
    """Same sites, same patients: the plain-Python and the numpy index give the same sites in the same
    order (ties included: many sites share coordinates) and the same distances."""
    rng = np.random.default_rng(19)
    spots = [
        (float(a), float(b)) for a, b in zip(rng.uniform(25, 60, 40), rng.uniform(-125, 20, 40), strict=True)
    ]
    sites = [
        site(
            f"S{i:03d}",
            *spots[int(rng.integers(0, len(spots)))],
            status=str(rng.choice(["recruiting", "paused", "closed"])),
            capacity=int(rng.integers(0, 3)),
            open_count=int(rng.integers(0, 3)),
        )
        for i in range(300)
    ]
    monkeypatch.setattr(domain, "ARRAY_INDEX_MIN_SITES", 10**9)
    plain = SiteIndex(sites)
    monkeypatch.setattr(domain, "ARRAY_INDEX_MIN_SITES", 0)
    arrays = SiteIndex(sites)
    assert (plain.vectorised, arrays.vectorised) == (False, True)

    def same(a, b):
        assert [entry[0].code for entry in a] == [entry[0].code for entry in b]
        assert [entry[1] for entry in a] == pytest.approx([entry[1] for entry in b], rel=1e-12, abs=1e-9)

    for lat, lon in [*spots[:10], *zip(rng.uniform(25, 60, 20), rng.uniform(-125, 20, 20), strict=True)]:
        declined = {sites[i].code for i in rng.choice(len(sites), 30)}
        first, second = plain.choose(lat, lon, declined), arrays.choose(lat, lon, declined)
        same([first] if first else [], [second] if second else [])
        same(plain.rank(lat, lon, declined), arrays.rank(lat, lon, declined))
        for count in (1, 16, 299, 400):
            same(plain.nearest(lat, lon, count, declined), arrays.nearest(lat, lon, count, declined))
        for limit in (1, 5, 200):
            same(
                [(n.site, n.km) for n in plain.nearby(lat, lon, limit)],
                [(n.site, n.km) for n in arrays.nearby(lat, lon, limit)],
            )
        assert plain.distances_km(lat, lon) == pytest.approx(arrays.distances_km(lat, lon), rel=1e-12)
