"""Pure parts of routing: candidate order, what the site must confirm, postal areas."""

import pytest

from services.site_router.domain import (
    PRE_SCREEN_NOTE,
    SiteIndex,
    SiteView,
    confirmation_note,
    criteria_to_confirm,
    declined_by_every_site,
    postal_area,
)
from services.site_router.geo import normalise_postal_code

pytestmark = pytest.mark.unit

PATIENT = (40.7685, -73.9588)  # 10021, New York
SITES = [
    SiteView("WCM", 40.7651, -73.9638, "recruiting", 4, 4),
    SiteView("DFCI", 42.3471, -71.1027, "paused", 3, 0),
    SiteView("MCC", 28.0502, -82.45, "closed", 3, 0),
    SiteView("MDACC", 29.7041, -95.401, "recruiting", 4, 0),
]


def test_nearest_proposes_every_status_in_distance_order_without_the_declined():
    """Counts and statuses in memory may be stale: the database decides which candidate has room."""
    index = SiteIndex(SITES)
    assert [r.site.code for r in index.nearest(*PATIENT, 10)] == ["WCM", "DFCI", "MCC", "MDACC"]
    assert [r.site.code for r in index.nearest(*PATIENT, 2, exclude_codes={"WCM"})] == ["DFCI", "MCC"]
    assert index.nearest(*PATIENT, 0) == [] and SiteIndex([]).nearest(*PATIENT, 3) == []
    assert index.nearest(*PATIENT, 1)[0].km < 1


def test_nearest_keeps_ties_in_code_order():
    twins = [SiteView(code, 40.0, -74.0, "recruiting", 1, 0) for code in ["B", "C", "A"]]
    assert [r.site.code for r in SiteIndex(twins).nearest(40.1, -74.0, 2)] == ["A", "B"]


VERDICTS = [
    ("age", "met", "58 years"),
    ("ecog", "unknown", "ecog not given"),
    ("cd123_positive", "unknown", "cd123 positive by immunohistochemistry, not verified by flow_cytometry"),
    ("apl_or_cns", "absent", "no APL, no CNS leukemia"),
]


def test_site_confirms_the_undecided_criteria_with_their_reasons():
    assert criteria_to_confirm(VERDICTS) == ["ecog", "cd123_positive"]
    note = confirmation_note(VERDICTS)
    assert note.startswith("To confirm: ecog (ecog not given); cd123_positive (cd123 positive by ")
    assert note.endswith(PRE_SCREEN_NOTE)
    assert confirmation_note(VERDICTS[:1]) == PRE_SCREEN_NOTE
    assert criteria_to_confirm([]) == []


@pytest.mark.parametrize(
    ("code", "country", "area"),
    [
        ("10021-1234", "US", "100"),
        ("H3Z 2Y7", "CA", "H3Z"),
        ("SW1A 1AA", "GB", "SW1"),
        ("1012 AB", "NL", "101"),
    ],
)
def test_postal_area_never_shows_the_full_code(code: str, country: str, area: str):
    assert postal_area(normalise_postal_code(code, country)) == area


def test_unroutable_only_once_every_known_site_declined():
    assert declined_by_every_site({"A", "B"}, {"A", "B"})
    assert not declined_by_every_site({"A"}, {"A", "B"})
    assert not declined_by_every_site(set(), set())  # no sites yet: wait for one
