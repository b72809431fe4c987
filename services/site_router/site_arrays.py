"""The site index's numpy half: thousands of sites ranked in one vectorised pass (`domain.SiteIndex` uses
it from `domain.ARRAY_INDEX_MIN_SITES` sites on, and imports it only then: numpy is ~11 MB resident).

Pure like `domain.py`. Sites are unit vectors, ranked by straight-line (chord) distance through the Earth:
it orders sites exactly as great-circle distance does, costs no trigonometry per site, and converts to
great-circle km only for the sites it returns. Every method answers exactly as `SiteIndex`'s plain-Python
path does (same order, ties by code, same km to the last bit but for `arcsin`'s rounding).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from services.site_router.domain import (
    EARTH_RADIUS_KM,
    NearbySite,
    RankedSite,
    SiteView,
    check_coordinates,
    km_to_miles,
    unit_vector,
)

FloatArray = npt.NDArray[np.float64]


def km_from_chord_sq(chord_sq: FloatArray) -> FloatArray:
    """Great-circle km from squared chord length on the unit sphere: central angle = 2 asin(chord / 2)."""
    return 2 * EARTH_RADIUS_KM * np.arcsin(np.minimum(np.sqrt(chord_sq) / 2, 1.0))


class SiteArrays:
    """The index's sites (in code order, the list `SiteIndex` holds and updates) as numpy arrays."""

    def __init__(self, sites: Sequence[SiteView]) -> None:
        self._sites = sites
        xyz = np.array([unit_vector(site.lat, site.lon) for site in sites], dtype=np.float64)
        self._xyz: FloatArray = np.ascontiguousarray(xyz.reshape(-1, 3).T)  # rows x, y, z: one pass each
        self._recruiting = np.array([site.recruiting for site in sites], dtype=bool)
        self._has_room = np.array([site.has_room for site in sites], dtype=bool)

    def update(self, i: int, site: SiteView) -> None:
        self._xyz[:, i] = unit_vector(site.lat, site.lon)
        self._recruiting[i] = site.recruiting
        self._has_room[i] = site.has_room

    def distances_km(self, lat: float, lon: float) -> list[float]:
        distances: list[float] = km_from_chord_sq(self._chord_sq(lat, lon)).tolist()
        return distances

    def choose(self, lat: float, lon: float, declined: list[int]) -> RankedSite | None:
        if not self._sites:
            return None
        masked = np.where(self._has_room, self._chord_sq(lat, lon), np.inf)
        masked[declined] = np.inf
        best = int(np.argmin(masked))  # first minimum = lowest code among equals
        if math.isinf(masked[best]):
            return None
        return RankedSite(self._sites[best], float(km_from_chord_sq(masked[best])))

    def rank(self, lat: float, lon: float, excluded: list[int]) -> list[RankedSite]:
        keep = np.ones(len(self._sites), dtype=bool)
        keep[excluded] = False
        return self._ordered(self._chord_sq(lat, lon), np.flatnonzero(keep))

    def nearest(self, lat: float, lon: float, count: int, excluded: list[int]) -> list[RankedSite]:
        chord_sq = self._chord_sq(lat, lon)  # a fresh array: excluded sites are pushed to infinity in it
        chord_sq[excluded] = np.inf
        if count < len(self._sites):
            # The `count` nearest plus any tied with the last of them, so that ties still go by code.
            bound = chord_sq[np.argpartition(chord_sq, count - 1)[:count]].max()
            candidates = np.flatnonzero(chord_sq <= bound)
        else:
            candidates = np.flatnonzero(np.isfinite(chord_sq))
        return self._ordered(chord_sq, candidates[np.isfinite(chord_sq[candidates])])[:count]

    def nearby(self, lat: float, lon: float, limit: int) -> list[NearbySite]:
        chord_sq = self._chord_sq(lat, lon)
        candidates = np.flatnonzero(self._recruiting)
        if limit < len(candidates):
            # Keep the `limit` nearest plus any tied with the last of them, so ties still go by code.
            nearest = np.argpartition(chord_sq[candidates], limit - 1)[:limit]
            candidates = candidates[chord_sq[candidates] <= chord_sq[candidates[nearest]].max()]
        ranked = self._ordered(chord_sq, candidates)[:limit]
        return [NearbySite(site, km, km_to_miles(km)) for site, km in ranked]

    def _chord_sq(self, lat: float, lon: float) -> FloatArray:
        check_coordinates(lat, lon)
        x, y, z = unit_vector(lat, lon)
        chord_sq: FloatArray = (self._xyz[0] - x) ** 2 + (self._xyz[1] - y) ** 2 + (self._xyz[2] - z) ** 2
        return chord_sq

    def _ordered(self, chord_sq: FloatArray, candidates: npt.NDArray[np.intp]) -> list[RankedSite]:
        order = candidates[np.argsort(chord_sq[candidates], kind="stable")]
        return [
            RankedSite(self._sites[i], float(km))
            for i, km in zip(order, km_from_chord_sq(chord_sq[order]), strict=True)
        ]
