"""Postal code to coordinates, offline (distances between them are the domain's: ``domain.py``).

Routing uses pgeocode over GeoNames data that the project ships (`geonames/`, see its NOTICE.md).
pgeocode downloads a country's table the first time it is asked for it; here its `Nominatim` reads the
shipped file instead, so no lookup can reach the network. Only pgeocode's loading step is replaced: the
per-postal-code index is pgeocode's own.

A country's index is loaded on its first lookup (a referral or a site in that country), once, and kept
compactly (`_Table`: codes as sorted integers, coordinates as float arrays, place names as one UTF-8 blob;
about 40 bytes a code, against some 250 as a dict of tuples); pgeocode's frames (the whole GeoNames table
among them) are dropped. A lookup is a binary search, as pgeocode's query is an exact match on the
normalised code. pandas and pgeocode are imported only where the index is built (in a child process when
there is an index directory, as in the service), so a process that only geocodes never imports them.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import struct
import subprocess
import sys
import tempfile
import threading
from array import array
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

SHIPPED_DATA_DIR = Path(__file__).with_name("geonames")

_LOOKUP_CACHE_SIZE = 4096
"""Distinct (country, postal code) lookups kept as `Location`s (about 1 MB when full): a table lookup costs
a few microseconds, so the cache only spares repeated codes their `Location`."""


class GeoError(Exception):
    """A postal code that cannot become coordinates; `reason` is shown to the clinic as given."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class UnknownPostalCode(GeoError):
    """The country is supported but GeoNames has no such postal code."""


class UnsupportedCountry(GeoError):
    """No GeoNames table is shipped for the country."""


@dataclass(frozen=True, slots=True)
class Location:
    """Where a postal code is: pgeocode's mean of every GeoNames place sharing the (normalised) code.

    `place_name` joins those places' names (`Sydney, Parliament House, ...`); `region` is the first
    administrative level by name (state, province, nation), as numeric admin codes mean nothing to people.
    """

    country: str
    postal_code: str
    latitude: float
    longitude: float
    place_name: str
    region: str | None


# --- postal code normalisation -------------------------------------------------------------------------

_WHITESPACE = re.compile(r"\s+")


def _compact(code: str) -> str:
    return _WHITESPACE.sub("", code)


def _us(code: str) -> str:
    """ZIP+4 (`10021-1234`, `100211234`) keeps the 5-digit ZIP; a short ZIP is not padded (no guessing)."""
    compact = _compact(code.split("-", 1)[0])
    return compact[:5] if len(compact) == 9 and compact.isdigit() else compact


def _first_three(code: str) -> str:
    """Canada: GeoNames holds the forward sortation area only (`H3Z 2Y7` -> `H3Z`)."""
    return _compact(code)[:3]


def _gb_outward(code: str) -> str:
    """GB: GeoNames holds outward codes only; the inward code is always the last three characters."""
    parts = code.split()
    if len(parts) > 1:
        return parts[0]
    compact = _compact(code)
    return compact[:-3] if len(compact) >= 5 else compact


def _nl(code: str) -> str:
    """Netherlands: GeoNames holds the four digits only (`1012 AB` -> `1012`)."""
    compact = _compact(code)
    return compact[:4] if compact[:4].isdigit() else compact


_NORMALISERS: dict[str, Callable[[str], str]] = {"US": _us, "CA": _first_three, "GB": _gb_outward, "NL": _nl}


def normalise_postal_code(postal_code: str, country: str) -> str:
    """The form GeoNames holds a country's codes in; every other country: uppercase, spaces removed."""
    code = postal_code.strip().upper()
    return _NORMALISERS.get(country, _compact)(code)


# --- pgeocode over the shipped files -------------------------------------------------------------------


def _read_geonames(path: Path) -> pd.DataFrame:
    """Read one shipped table exactly as pgeocode parses a downloaded one (same fields, types and NAs)."""
    import pandas as pd
    import pgeocode

    return pd.read_csv(
        path,
        sep="\t",
        header=None,
        names=pgeocode.DATA_FIELDS,
        dtype={"postal_code": str},
        na_values=pgeocode.NA_VALUES,
        keep_default_na=False,
        compression="gzip",
    )


@functools.cache
def _shipped_nominatim() -> Any:
    """pgeocode's Nominatim whose loading step reads a shipped file (defined on first use: pgeocode
    imports pandas)."""
    import pgeocode

    class ShippedNominatim(pgeocode.Nominatim):  # type: ignore[misc]  # pgeocode has no types: Any
        """pgeocode's Nominatim whose loading step reads a shipped file; it has no path to the network.

        pgeocode 0.5.0 builds its per-code index once and writes it as `<data path>-index.txt`; that file
        goes to `index_dir` when one is given (a restart then reads it back), otherwise to a temporary
        directory removed at once. It is published with an atomic rename so that concurrent workers never
        read half.
        """

        _data_path: str  # set by pgeocode's constructor from `_get_data`

        def __init__(self, country: str, source: Path, index_dir: Path | None) -> None:
            self._source = source
            self._index_dir = index_dir
            super().__init__(country, unique=True)

        def _get_data(self, country: str) -> tuple[str, pd.DataFrame]:
            """Replace pgeocode's read-else-download with a read of the shipped file."""
            index_dir = self._index_dir or Path(tempfile.gettempdir())
            return str(index_dir / f"{country}.txt"), _read_geonames(self._source)

        def _index_postal_codes(self) -> pd.DataFrame:
            if self._index_dir is None:
                with tempfile.TemporaryDirectory(prefix="trialroute-geonames-") as scratch:
                    return self._build_index_in(Path(scratch))
            cached = self._index_dir / f"{self.country}-index.txt"
            if cached.exists():
                return super()._index_postal_codes()
            with tempfile.TemporaryDirectory(dir=self._index_dir, prefix=".index-") as scratch:
                index = self._build_index_in(Path(scratch))
                os.replace(Path(scratch) / f"{self.country}-index.txt", cached)
            return index

        def _build_index_in(self, directory: Path) -> pd.DataFrame:
            """Run pgeocode's own indexing with the file it writes redirected into `directory`."""
            data_path = self._data_path
            self._data_path = str(directory / f"{self.country}.txt")
            try:
                return super()._index_postal_codes()
            finally:
                self._data_path = data_path

    return ShippedNominatim


_Entry = tuple[float, float, str, str | None]
"""One postal code of a country's index: latitude, longitude, place names, region."""


def _compact_index(frame: pd.DataFrame) -> dict[str, _Entry]:
    """The index's rows with coordinates, as plain tuples keyed by postal code (pgeocode's query of a code
    without coordinates, or of one not in the index, both come to "unknown")."""
    import pandas as pd

    table: dict[str, _Entry] = {}
    columns = frame[["postal_code", "latitude", "longitude", "place_name", "state_name"]]
    for code, latitude, longitude, place, region in columns.itertuples(index=False, name=None):
        if pd.isna(latitude) or pd.isna(longitude) or pd.isna(code):
            continue
        table.setdefault(
            sys.intern(str(code)),
            (
                float(latitude),
                float(longitude),
                str(place),
                None if pd.isna(region) else sys.intern(str(region)),
            ),
        )
    return table


_KEY_BYTES = 8
"""A postal code is kept as the big-endian integer of its UTF-8 bytes padded to this many: integer order is
the codes' byte order, so a sorted `array` of them is searched in C. The shipped codes have 2 to 5."""
_NO_REGION = 0xFFFF
_HEADER = struct.Struct("<4sIII")  # magic, codes, place-name bytes, region-name bytes
_MAGIC = b"TRG1"
_FORMATS = (("keys", "Q"), ("latitudes", "d"), ("longitudes", "d"), ("place_ends", "I"), ("region_of", "H"))


def _key(code: str) -> int | None:
    """A postal code's integer key; None for one longer than any table holds."""
    raw = code.encode()
    return int.from_bytes(raw.ljust(_KEY_BYTES, b"\0"), "big") if len(raw) <= _KEY_BYTES else None


class _Table:
    """One country's index, compactly: parallel arrays in code order (integer keys, latitudes, longitudes,
    where each place name ends in one UTF-8 blob, the region's number in a short list of names).

    It holds exactly the entries of `_compact_index` (the dict it replaced in memory): `get` returns the same
    tuple. Read-only once built, so threads share it without a lock.
    """

    __slots__ = ("keys", "latitudes", "longitudes", "place_ends", "places", "region_of", "regions")

    def __init__(
        self,
        keys: array[int],
        latitudes: array[float],
        longitudes: array[float],
        place_ends: array[int],
        places: bytes,
        region_of: array[int],
        regions: list[str],
    ) -> None:
        self.keys, self.latitudes, self.longitudes = keys, latitudes, longitudes
        self.place_ends, self.places = place_ends, places
        self.region_of, self.regions = region_of, regions

    def __len__(self) -> int:
        return len(self.keys)

    @classmethod
    def from_entries(cls, entries: Mapping[str, _Entry]) -> _Table:
        rows = []
        for code in entries:
            key = _key(code)
            if key is None or not code or code.endswith("\0"):
                raise ValueError(f"postal code {code!r} does not fit a table key")
            rows.append((key, code))
        rows.sort()
        regions = sorted({region for *_, region in entries.values() if region is not None})
        number = {region: i for i, region in enumerate(regions)}
        places = bytearray()
        place_ends, region_of = array("I"), array("H")
        latitudes, longitudes = array("d"), array("d")
        for _, code in rows:
            latitude, longitude, place, region = entries[code]
            latitudes.append(latitude)
            longitudes.append(longitude)
            places += place.encode()
            place_ends.append(len(places))
            region_of.append(_NO_REGION if region is None else number[region])
        if len(regions) >= _NO_REGION:
            raise ValueError("too many regions for a table")
        keys = array("Q", (key for key, _ in rows))
        return cls(keys, latitudes, longitudes, place_ends, bytes(places), region_of, regions)

    def get(self, code: str) -> _Entry | None:
        raw = code.encode()
        if len(raw) > _KEY_BYTES:
            return None
        key = int.from_bytes(raw, "big") << (8 * (_KEY_BYTES - len(raw)))  # `_key`, inlined: a hot path
        keys = self.keys
        i = bisect_left(keys, key)
        if i == len(keys) or keys[i] != key:
            return None
        ends, region = self.place_ends, self.region_of[i]
        return (
            self.latitudes[i],
            self.longitudes[i],
            self.places[ends[i - 1] if i else 0 : ends[i]].decode(),
            None if region == _NO_REGION else self.regions[region],
        )

    def to_bytes(self) -> bytes:
        """The table as a file: a header, the arrays (little-endian), the place names, the region names."""
        regions = "\n".join(self.regions).encode()
        parts = [_HEADER.pack(_MAGIC, len(self), len(self.places), len(regions))]
        for name, _ in _FORMATS:
            column = array(getattr(self, name).typecode, getattr(self, name))
            if sys.byteorder == "big":
                column.byteswap()
            parts.append(column.tobytes())
        return b"".join([*parts, self.places, regions])

    @classmethod
    def from_bytes(cls, data: bytes) -> _Table:
        magic, count, places_size, regions_size = _HEADER.unpack_from(data)
        if magic != _MAGIC:
            raise ValueError("not a compact postal-code table")
        view, at = memoryview(data), _HEADER.size
        columns: dict[str, array[Any]] = {}
        for name, typecode in _FORMATS:
            column = array(typecode)
            size = count * column.itemsize
            column.frombytes(view[at : at + size])
            if sys.byteorder == "big":
                column.byteswap()
            columns[name] = column
            at += size
        places = bytes(view[at : at + places_size])
        regions_text = bytes(view[at + places_size : at + places_size + regions_size]).decode()
        if at + places_size + regions_size != len(data):
            raise ValueError("truncated or oversized compact postal-code table")
        regions = [sys.intern(region) for region in regions_text.split("\n")] if regions_text else []
        return cls(places=places, regions=regions, **columns)


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


class Geocoder:
    """Postal code and country to a `Location`, from the shipped GeoNames tables only.

    A country's table is loaded on its first lookup, once even when several threads ask at the same time
    (`warm` loads some up front). Lookups, unknown codes included, are cached in memory.

    `index_dir` (e.g. under `.run/`) keeps pgeocode's per-code index and the compact table built from it
    between runs (`prepare` builds them all, without loading any); it is keyed by the data file's digest,
    so a new snapshot never reads a stale index. Without it the index is rebuilt per process.
    """

    def __init__(self, data_dir: Path = SHIPPED_DATA_DIR, index_dir: Path | None = None) -> None:
        shipped = ((path.name.removesuffix(".txt.gz"), path) for path in data_dir.glob("??.txt.gz"))
        self._files = {country: path for country, path in shipped if country.isalpha() and country.isupper()}
        self._index_dir = index_dir
        self._tables: dict[str, _Table] = {}
        self._load_lock = threading.Lock()
        self._lookup = functools.lru_cache(maxsize=_LOOKUP_CACHE_SIZE)(self._query)

    @property
    def supported_countries(self) -> tuple[str, ...]:
        return tuple(sorted(self._files))

    @property
    def loaded_countries(self) -> tuple[str, ...]:
        """The countries whose table is in memory: those looked up (or warmed) so far."""
        return tuple(sorted(self._tables))

    def prepare(self) -> None:
        """Build every country's compact table in the index directory now (one child process, nothing
        when they exist), so that no first lookup waits for pgeocode; none is loaded into memory."""
        with self._load_lock:
            self._build_compact(list(self.supported_countries))

    def warm(self, countries: Iterable[str] | None = None) -> None:
        """Load countries' tables now rather than on their first lookup."""
        wanted = [self._country(c) for c in (self.supported_countries if countries is None else countries)]
        with self._load_lock:
            self._build_compact([c for c in wanted if c not in self._tables])
        for country in wanted:
            self._table(country)

    def locate(self, postal_code: str, country: str) -> Location:
        """Coordinates of a postal code; raises `GeoError` with a reason fit to show the clinic."""
        country_code = self._country(country)
        location = self._lookup(country_code, normalise_postal_code(postal_code, country_code))
        if location is None:
            raise UnknownPostalCode(f"unknown postal code '{postal_code.strip()}' for {country_code}")
        return location

    def cache_info(self) -> functools._CacheInfo:
        return self._lookup.cache_info()

    def _country(self, country: str) -> str:
        code = country.strip().upper()
        if code not in self._files:
            supported = ", ".join(self.supported_countries)
            raise UnsupportedCountry(f"country '{code}' is not supported (supported: {supported})")
        return code

    def _query(self, country: str, code: str) -> Location | None:
        if not code:
            return None
        entry = self._table(country).get(code)
        if entry is None:
            return None
        latitude, longitude, place_name, region = entry
        return Location(
            country=country,
            postal_code=code,
            latitude=latitude,
            longitude=longitude,
            place_name=place_name,
            region=region,
        )

    def _table(self, country: str) -> _Table:
        """The country's table, loaded on its first use; a thread that finds it loading waits for it."""
        table = self._tables.get(country)
        if table is not None:
            return table
        with self._load_lock:
            if country not in self._tables:
                self._tables[country] = self._load(country)
            return self._tables[country]

    def _load(self, country: str) -> _Table:
        """Without an index directory, through pgeocode in this process; with one, from the compact
        table kept there (built once, by pgeocode in a child process: this one never imports pandas)."""
        index_dir = self._index_dir_for(country)
        if index_dir is None:
            frame = _shipped_nominatim()(country, self._files[country], None)._data_frame
            return _Table.from_entries(_compact_index(frame))
        compact = index_dir / _compact_name(country)
        if not compact.exists():
            self._build_compact([country])
        return _Table.from_bytes(compact.read_bytes())

    def _build_compact(self, countries: list[str]) -> None:
        """Write the compact table of each country that has none yet, in one child process."""
        jobs = []
        for country in countries:
            index_dir = self._index_dir_for(country)
            if index_dir is not None and not (index_dir / _compact_name(country)).exists():
                jobs.append([country, str(self._files[country]), str(index_dir)])
        if jobs:
            child = [sys.executable, "-m", "services.site_router.geo", json.dumps(jobs)]
            subprocess.run(child, check=True, stdin=subprocess.DEVNULL)  # noqa: S603 - our own module

    def _index_dir_for(self, country: str) -> Path | None:
        if self._index_dir is None:
            return None
        path = self._index_dir / _file_digest(self._files[country])
        path.mkdir(parents=True, exist_ok=True)
        return path


def _compact_name(country: str) -> str:
    """The compact table's file name (the format's version in it: an older build's file is not read)."""
    return f"{country}-compact-{_MAGIC.decode().lower()}.bin"


def _write_compact(country: str, source: Path, index_dir: Path) -> None:
    """Build a country's index with pgeocode (its own index file kept in ``index_dir`` too) and write
    the compact table beside it, published with an atomic rename."""
    table = _Table.from_entries(_compact_index(_shipped_nominatim()(country, source, index_dir)._data_frame))
    with tempfile.NamedTemporaryFile("wb", dir=index_dir, prefix=".compact-", delete=False) as out:
        out.write(table.to_bytes())
    os.replace(out.name, index_dir / _compact_name(country))


if __name__ == "__main__":  # the child of ``Geocoder._build_compact``: [[country, source, index dir], ...]
    for country_code, source_file, directory in json.loads(sys.argv[1]):
        _write_compact(country_code, Path(source_file), Path(directory))
