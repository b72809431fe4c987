"""Which site gets a referral: pure logic over a snapshot of the sites, no I/O.

The nearest recruiting site with free capacity, by great-circle distance, that the referral has not been
declined by. The store reserves the slot atomically; this module only proposes the site. `SiteIndex` keeps
the sites as unit vectors and ranks them by straight-line (chord) distance through the Earth: it orders
sites exactly as great-circle distance does, costs no trigonometry per site (about an eighth of
haversine's time), and converts to great-circle km only for the sites it returns. A trial's handful of
sites is ranked in plain Python; from `ARRAY_INDEX_MIN_SITES` on, in one vectorised numpy pass
(`site_arrays.py`; with thousands of sites one routing must stay well under a millisecond), so that a
process that never holds that many sites never imports numpy (~11 MB resident).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, NamedTuple

from shared.events import OUTCOME_STEPS

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from services.site_router.site_arrays import SiteArrays

EARTH_RADIUS_KM = 6371.0088
"""IUGG mean Earth radius; a sphere of this radius is within about 0.5% of the ellipsoid."""

KM_PER_MILE = 1.609344

NEAREST_CANDIDATES = 16
"""Sites the in-memory index proposes per routing; the database says which of them has room."""

ARRAY_INDEX_MIN_SITES = 64
"""From this many sites `SiteIndex` ranks with numpy (plain Python is faster below about 50 sites, numpy
far faster with thousands); below it, plain Python, and numpy is never imported."""


# --- great-circle distances ----------------------------------------------------------------------------


def great_circle_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Haversine distance in km: what the design routes by (travel time is not known to us)."""
    phi1, phi2 = math.radians(lat1), math.radians(lat2)
    half_dphi = (phi2 - phi1) / 2
    half_dlambda = math.radians(lon2 - lon1) / 2
    a = math.sin(half_dphi) ** 2 + math.cos(phi1) * math.cos(phi2) * math.sin(half_dlambda) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(a)))


def distances_km(lat: float, lon: float, lats: npt.ArrayLike, lons: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Haversine distances in km from one point to many, vectorised (numpy is imported on first use)."""
    import numpy as np

    lats_rad = np.radians(np.asarray(lats, dtype=np.float64))
    lons_rad = np.radians(np.asarray(lons, dtype=np.float64))
    lat_rad = math.radians(lat)
    a = (
        np.sin((lats_rad - lat_rad) / 2) ** 2
        + math.cos(lat_rad) * np.cos(lats_rad) * np.sin((lons_rad - math.radians(lon)) / 2) ** 2
    )
    distances: npt.NDArray[np.float64] = 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.minimum(a, 1.0)))
    return distances


def km_to_miles(km: float) -> float:
    """Statute miles, for the public site finder in the US and GB."""
    return km / KM_PER_MILE


# --- sites ---------------------------------------------------------------------------------------------


class SiteStatus(StrEnum):
    RECRUITING = "recruiting"
    PAUSED = "paused"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class SiteView:
    """What routing needs to know of a site; `open_count` counts the referrals it holds open now."""

    code: str
    lat: float
    lon: float
    status: str
    capacity: int
    open_count: int

    def __post_init__(self) -> None:
        if not (-90.0 <= self.lat <= 90.0 and -180.0 <= self.lon <= 180.0):
            raise ValueError(f"site {self.code}: coordinates ({self.lat}, {self.lon}) out of range")
        if self.capacity < 0 or self.open_count < 0:
            raise ValueError(f"site {self.code}: capacity and open_count cannot be negative")

    @property
    def recruiting(self) -> bool:
        return self.status == SiteStatus.RECRUITING

    @property
    def has_room(self) -> bool:
        """Recruiting with a free slot: the only sites a referral may be routed to."""
        return self.recruiting and self.open_count < self.capacity


class RankedSite(NamedTuple):
    site: SiteView
    km: float


@dataclass(frozen=True, slots=True)
class NearbySite:
    """One row of the public site finder."""

    site: SiteView
    km: float
    miles: float


def unit_vector(lat: float, lon: float) -> tuple[float, float, float]:
    phi, lam = math.radians(lat), math.radians(lon)
    return math.cos(phi) * math.cos(lam), math.cos(phi) * math.sin(lam), math.sin(phi)


def check_coordinates(lat: float, lon: float) -> None:
    if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):  # NaN included: it would rank first
        raise ValueError(f"patient coordinates ({lat}, {lon}) out of range")


def _km_from_chord_sq(chord_sq: float) -> float:
    """Great-circle km from squared chord length on the unit sphere: central angle = 2 asin(chord / 2)."""
    return 2 * EARTH_RADIUS_KM * math.asin(min(math.sqrt(chord_sq) / 2, 1.0))


class SiteIndex:
    """The sites, for ranking them all at once.

    Build it once per change of the site list (new site, moved site); `update` refreshes one site's status
    or counts in place, as every routing and decision changes `open_count`. Sites are held in code order,
    so that equal distances resolve to the lowest code: the same site on every replica and every replay.
    With `ARRAY_INDEX_MIN_SITES` sites or more, `site_arrays.SiteArrays` answers every query, the same way.
    """

    def __init__(self, sites: Iterable[SiteView]) -> None:
        self._sites = sorted(sites, key=lambda site: site.code)
        self._position = {site.code: i for i, site in enumerate(self._sites)}
        if len(self._position) != len(self._sites):
            raise ValueError("site codes must be unique")
        self._xyz = [unit_vector(site.lat, site.lon) for site in self._sites]
        self._arrays: SiteArrays | None = None
        if len(self._sites) >= ARRAY_INDEX_MIN_SITES:
            from services.site_router.site_arrays import SiteArrays

            self._arrays = SiteArrays(self._sites)

    def __len__(self) -> int:
        return len(self._sites)

    @property
    def sites(self) -> Sequence[SiteView]:
        return tuple(self._sites)

    @property
    def vectorised(self) -> bool:
        """Whether numpy ranks the sites (`ARRAY_INDEX_MIN_SITES` or more)."""
        return self._arrays is not None

    def update(self, site: SiteView) -> None:
        """Replace a known site's row; an unknown code needs a new index (KeyError)."""
        i = self._position[site.code]
        self._sites[i] = site
        self._xyz[i] = unit_vector(site.lat, site.lon)
        if self._arrays is not None:
            self._arrays.update(i, site)

    def distances_km(self, lat: float, lon: float) -> list[float]:
        """Great-circle km from the point to every site, in index (code) order."""
        if self._arrays is not None:
            return self._arrays.distances_km(lat, lon)
        return [_km_from_chord_sq(chord_sq) for chord_sq in self._chord_sq(lat, lon)]

    def choose(self, lat: float, lon: float, declined: Collection[str] = ()) -> RankedSite | None:
        """The nearest site with room that has not declined; None sends the referral to the waitlist."""
        if self._arrays is not None:
            return self._arrays.choose(lat, lon, self._positions(declined))
        skip = set(self._positions(declined))
        best, best_sq = -1, math.inf
        for i, chord_sq in enumerate(self._chord_sq(lat, lon)):
            if chord_sq < best_sq and self._sites[i].has_room and i not in skip:  # first = lowest code
                best, best_sq = i, chord_sq
        return None if best < 0 else RankedSite(self._sites[best], _km_from_chord_sq(best_sq))

    def rank(self, lat: float, lon: float, exclude_codes: Collection[str] = ()) -> list[RankedSite]:
        """Every site but the excluded, nearest first, whatever its status (ties by code)."""
        if self._arrays is not None:
            return self._arrays.rank(lat, lon, self._positions(exclude_codes))
        skip = set(self._positions(exclude_codes))
        return self._ordered(self._chord_sq(lat, lon), [i for i in range(len(self._sites)) if i not in skip])

    def nearest(
        self, lat: float, lon: float, count: int, exclude_codes: Collection[str] = ()
    ) -> list[RankedSite]:
        """The `count` nearest sites but the excluded, whatever their status: candidates the database
        then checks for room (this copy's counts may be stale, its order is not)."""
        if count <= 0 or not self._sites:
            return []
        if self._arrays is not None:
            return self._arrays.nearest(lat, lon, count, self._positions(exclude_codes))
        skip = set(self._positions(exclude_codes))
        chord_sq = self._chord_sq(lat, lon)
        nearest = heapq.nsmallest(  # as sorted()[:count]: stable, ties stay in code order
            count, (i for i in range(len(self._sites)) if i not in skip), key=chord_sq.__getitem__
        )
        return [RankedSite(self._sites[i], _km_from_chord_sq(chord_sq[i])) for i in nearest]

    def nearby(self, lat: float, lon: float, limit: int = 10) -> list[NearbySite]:
        """Recruiting sites nearest first, full or not: the public finder shows where the trial runs."""
        if limit <= 0:
            return []
        if self._arrays is not None:
            return self._arrays.nearby(lat, lon, limit)
        chord_sq = self._chord_sq(lat, lon)
        recruiting = [i for i, site in enumerate(self._sites) if site.recruiting]
        return [
            NearbySite(site, km, km_to_miles(km)) for site, km in self._ordered(chord_sq, recruiting)[:limit]
        ]

    def _chord_sq(self, lat: float, lon: float) -> list[float]:
        check_coordinates(lat, lon)
        x, y, z = unit_vector(lat, lon)
        return [(a - x) * (a - x) + (b - y) * (b - y) + (c - z) * (c - z) for a, b, c in self._xyz]

    def _positions(self, codes: Collection[str]) -> list[int]:
        return [self._position[code] for code in codes if code in self._position]

    def _ordered(self, chord_sq: list[float], candidates: list[int]) -> list[RankedSite]:
        order = sorted(candidates, key=chord_sq.__getitem__)  # stable: ties stay in code order
        return [RankedSite(self._sites[i], _km_from_chord_sq(chord_sq[i])) for i in order]


def _as_index(sites: SiteIndex | Iterable[SiteView]) -> SiteIndex:
    return sites if isinstance(sites, SiteIndex) else SiteIndex(sites)


def rank_sites(
    lat: float, lon: float, sites: SiteIndex | Iterable[SiteView], exclude_codes: Collection[str] = ()
) -> list[RankedSite]:
    """Sites nearest first, without the excluded codes; pass a `SiteIndex` to avoid rebuilding one."""
    return _as_index(sites).rank(lat, lon, exclude_codes)


def choose_site(
    lat: float, lon: float, sites: SiteIndex | Iterable[SiteView], declined: Collection[str] = ()
) -> RankedSite | None:
    """The nearest recruiting site with room not in `declined`, or None; a `SiteIndex` keeps this fast."""
    return _as_index(sites).choose(lat, lon, declined)


def nearby(
    lat: float, lon: float, sites: SiteIndex | Iterable[SiteView], limit: int = 10
) -> list[NearbySite]:
    """Recruiting sites nearest first with km and miles, for the public site finder."""
    return _as_index(sites).nearby(lat, lon, limit)


# --- referral lifecycle at the router ---------------------------------------------------------------


class ReferralState(StrEnum):
    """Where a referral stands at the router (intake's timeline names the same states)."""

    NOT_ROUTED = "not_routed"
    ROUTED = "routed"
    WAITLISTED = "waitlisted"
    UNROUTABLE = "unroutable"
    ACCEPTED = "accepted"
    CLOSED = "closed"
    WITHDRAWN = "withdrawn"


class AssignmentState(StrEnum):
    """One routing of a referral to a site; `routed` and `accepted` hold one of the site's slots."""

    ROUTED = "routed"
    ACCEPTED = "accepted"
    DECLINED = "declined"
    CLOSED = "closed"
    RELEASED = "released"
    WITHDRAWN = "withdrawn"


ACTIVE_ASSIGNMENT_STATES = (AssignmentState.ROUTED, AssignmentState.ACCEPTED)
FINAL_REFERRAL_STATES = frozenset({ReferralState.CLOSED, ReferralState.WITHDRAWN})

PRE_SCREEN_NOTE = (
    "Pre-screened on the study's main public criteria only; other criteria may apply and the site confirms "
    "full eligibility."
)


def criteria_to_confirm(criteria: Iterable[tuple[str, str, str]]) -> list[str]:
    """Ids of the criteria pre-screening could not decide (verdict `unknown`): the site must check them."""
    return [criterion_id for criterion_id, verdict, _ in criteria if verdict == "unknown"]


def confirmation_note(criteria: Iterable[tuple[str, str, str]]) -> str:
    """What the site has to confirm, in words: each undecided criterion with its reason, then the caveat."""
    undecided = [f"{cid} ({reason})" for cid, verdict, reason in criteria if verdict == "unknown"]
    prefix = f"To confirm: {'; '.join(undecided)}. " if undecided else ""
    return prefix + PRE_SCREEN_NOTE


def postal_area(normalised_postal_code: str) -> str:
    """The coarse area a site may see before contact (first three characters), never the full code."""
    return normalised_postal_code.replace(" ", "")[:3]


def declined_by_every_site(declined: Collection[str], site_codes: Collection[str]) -> bool:
    """Every known site has declined: no waitlist can help, the referral is unroutable."""
    return bool(site_codes) and set(site_codes) <= set(declined)


# --- the coordinators' portal ----------------------------------------------------------------------------


class QueueTab(StrEnum):
    """The portal's queue tabs: where a referral stands in a coordinator's work."""

    NEW = "new"
    AWAITING = "awaiting"
    IN_PROGRESS = "in_progress"
    CLOSED = "closed"


QUEUE_TAB_LABELS = {
    QueueTab.NEW: "New",
    QueueTab.AWAITING: "Awaiting decision",
    QueueTab.IN_PROGRESS: "In progress",
    QueueTab.CLOSED: "Closed",
}


def queue_tab(state: str, opened: bool) -> QueueTab:
    """Routed and never opened by the site is new; opened and undecided awaits its decision; accepted is
    in progress (the steps to enrolment); anything else (declined, closed, released, withdrawn) is closed."""
    if state == AssignmentState.ROUTED:
        return QueueTab.AWAITING if opened else QueueTab.NEW
    if state == AssignmentState.ACCEPTED:
        return QueueTab.IN_PROGRESS
    return QueueTab.CLOSED


def short_id(referral_id: object) -> str:
    """The first 8 hex digits of a referral id: enough for a person to tell rows apart and say on the
    phone; the page and the link always carry the whole id."""
    return str(referral_id)[:8]


def age_in_queue(seconds: float) -> str:
    """How long a referral has waited, in the largest whole unit that says it (`45 min`, `5 h`, `3 d`)."""
    minutes = max(0, int(seconds // 60))
    if minutes < 60:
        return f"{minutes} min"
    if minutes < 48 * 60:
        return f"{minutes // 60} h"
    return f"{minutes // (24 * 60)} d"


# --- the accepting site's steps to enrolment ----------------------------------------------------------

PROGRESS_ORDER: tuple[str, ...] = ("contacted", "screening_scheduled", "consented", "enrolled")
"""The steps after acceptance, in the one order a site records them (each after the one before)."""
STEP_FIELDS: dict[str, str | None] = {
    "contacted": None,
    "screening_scheduled": "screening_date",
    "consented": None,
    "enrolled": "subject_id",
    "screen_failed": "reason",
    "not_enrolled": "reason",
}
"""The one field each step requires (None: none); the other step fields must then be absent."""
OPTIONAL_FIELDS = frozenset({"screening_date", "subject_id", "reason"})


@dataclass(frozen=True, slots=True)
class StepRefusal:
    """Why a step cannot be recorded: ``field`` set for bad input (422), else the state (409)."""

    reason: str
    field: str | None = None


def step_fields_refusal(step: str, given: Collection[str]) -> StepRefusal | None:
    """The step's required field is given, and no field of another step is: a subject id on
    ``contacted`` would be stored against the wrong step."""
    required = STEP_FIELDS[step]
    if required is not None and required not in given:
        return StepRefusal(f"required for the step {step}", required)
    for name in sorted(set(given) & OPTIONAL_FIELDS):
        if name != required:
            return StepRefusal(f"not a field of the step {step}", name)
    return None


def step_refusal(assignment_state: str, current_step: str | None, step: str) -> StepRefusal | None:
    """Whether ``step`` may follow where the assignment stands: only after the site accepted, each
    progress step after the one before it (``screening_scheduled`` again to reschedule), an outcome
    (screen_failed, not_enrolled) from any step after acceptance, ``enrolled`` after ``consented``;
    nothing after an outcome."""
    if current_step in OUTCOME_STEPS:
        return StepRefusal(f"the referral's outcome is recorded ({current_step}); it is final")
    if assignment_state != AssignmentState.ACCEPTED:
        if assignment_state == AssignmentState.ROUTED:
            return StepRefusal("the site has not accepted the referral yet: accept it first")
        return StepRefusal(f"the referral is {assignment_state} at this site")
    if step in ("screen_failed", "not_enrolled"):
        return None
    at = PROGRESS_ORDER.index(current_step) if current_step in PROGRESS_ORDER else -1
    wanted = PROGRESS_ORDER.index(step)
    if wanted == at + 1 or (step == current_step == "screening_scheduled"):
        return None
    expected = PROGRESS_ORDER[at + 1] if at + 1 < len(PROGRESS_ORDER) else None
    return StepRefusal(f"{step} cannot follow {current_step or 'acceptance'}; next is {expected}")


def next_steps(assignment_state: str, current_step: str | None) -> list[str]:
    """The steps a coordinator may record now (what the portal offers), in order."""
    steps = [*PROGRESS_ORDER, "screen_failed", "not_enrolled"]
    return [s for s in steps if step_refusal(assignment_state, current_step, s) is None]
