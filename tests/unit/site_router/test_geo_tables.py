"""The geocoder's compact tables: the same answer as the dict they replaced, for every code of every
shipped country; each country loaded on its first use only, once, whatever the concurrency."""

import asyncio
import sys
import threading
import time
from pathlib import Path

import pytest

from services.site_router.geo import (
    SHIPPED_DATA_DIR,
    Geocoder,
    Location,
    UnknownPostalCode,
    UnsupportedCountry,
    _compact_index,
    _shipped_nominatim,
    _Table,
    normalise_postal_code,
)

pytestmark = pytest.mark.unit

SHIPPED_COUNTRIES = ("AT", "AU", "BE", "CA", "CH", "DE", "ES", "GB", "IT", "NL", "US")


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every country's compact table built once, as the service does at start (one child process)."""
    directory = tmp_path_factory.mktemp("geonames-index")
    Geocoder(index_dir=directory).prepare()
    return directory


@pytest.mark.parametrize("country", SHIPPED_COUNTRIES)
def test_every_code_answers_as_the_dict_did(index_dir: Path, country: str) -> None:
    """The dict of tuples that `_compact_index` builds from pgeocode's index was the representation
    before: the table built from it, the one read back from the index directory and `locate` all answer
    exactly as it does, for every code."""
    source = SHIPPED_DATA_DIR / f"{country}.txt.gz"
    expected = _compact_index(_shipped_nominatim()(country, source, None)._data_frame)
    from_file = Geocoder(index_dir=index_dir)._table(country)
    in_process = _Table.from_entries(expected)  # what a geocoder without an index directory holds
    assert len(from_file) == len(in_process) == len(expected) > 1000
    located = Geocoder(index_dir=index_dir)
    for code, entry in expected.items():
        assert from_file.get(code) == entry, code
        assert in_process.get(code) == entry, code
        if normalise_postal_code(code, country) == code:
            assert located.locate(code, country) == Location(country, code, *entry)
    for absent in ("", "0", "ZZZZZZZ", "123456789", "ÄÖÜ", max(expected) + "0"):
        assert from_file.get(absent) is None
        assert in_process.get(absent) is None


def test_a_table_is_compact(index_dir: Path) -> None:
    """The US table (41,481 codes) in well under 50 bytes a code; the dict of tuples took about 250."""
    table = Geocoder(index_dir=index_dir)._table("US")
    arrays = (table.keys, table.latitudes, table.longitudes, table.place_ends, table.region_of)
    size = sum(sys.getsizeof(column) for column in arrays) + sys.getsizeof(table.places)
    size += sum(sys.getsizeof(region) for region in table.regions)
    assert size / len(table) < 50


def test_a_file_of_another_format_is_refused() -> None:
    data = _Table.from_entries({"1000": (50.8, 4.35, "Brussel", "Brussels")}).to_bytes()
    assert _Table.from_bytes(data).get("1000") == (50.8, 4.35, "Brussel", "Brussels")
    with pytest.raises(ValueError, match="not a compact"):
        _Table.from_bytes(b"{}" + data[2:])
    with pytest.raises(ValueError, match="truncated"):
        _Table.from_bytes(data + b"\0")


def test_a_country_is_loaded_on_its_first_use_only(index_dir: Path) -> None:
    geocoder = Geocoder(index_dir=index_dir)
    geocoder.prepare()  # what the service does at start: the files exist, nothing is loaded
    assert geocoder.loaded_countries == ()
    assert geocoder.locate("10021", "US").place_name == "New York"
    assert geocoder.loaded_countries == ("US",)
    geocoder.locate("H3Z 2Y7", "CA")
    with pytest.raises(UnknownPostalCode, match="unknown postal code"):
        geocoder.locate("00000", "GB")  # an unknown code still loads its country's table
    assert geocoder.loaded_countries == ("CA", "GB", "US")
    with pytest.raises(UnsupportedCountry, match="not supported"):
        geocoder.locate("75001", "FR")
    assert geocoder.loaded_countries == ("CA", "GB", "US")
    geocoder.warm(["DE"])
    assert geocoder.loaded_countries == ("CA", "DE", "GB", "US")


def test_prepare_builds_every_table_without_loading_one(tmp_path: Path) -> None:
    geocoder = Geocoder(index_dir=tmp_path)
    geocoder.prepare()
    built = sorted(path.name.split("-", 1)[0] for path in tmp_path.glob("*/*-compact-*.bin"))
    assert built == list(SHIPPED_COUNTRIES)
    assert geocoder.loaded_countries == ()


class CountingGeocoder(Geocoder):
    """A geocoder whose loads are counted and slowed, so that concurrent first uses overlap."""

    def __init__(self, index_dir: Path) -> None:
        super().__init__(index_dir=index_dir)
        self.loads: dict[str, int] = {}
        self.threads: set[int] = set()

    def _load(self, country: str) -> _Table:
        self.loads[country] = self.loads.get(country, 0) + 1
        self.threads.add(threading.get_ident())
        time.sleep(0.2)
        return super()._load(country)


async def test_concurrent_first_uses_load_a_country_once(index_dir: Path) -> None:
    """Coroutines locating at the same time, each in a worker thread as the service does: one loads the
    table, the others wait for it and answer from it."""
    geocoder = CountingGeocoder(index_dir)
    codes = ["10021", "02215", "33612", "77030", "60611", "94143", "98109", "80045"]
    located = await asyncio.gather(*(asyncio.to_thread(geocoder.locate, code, "US") for code in codes))
    assert [location.postal_code for location in located] == codes
    assert geocoder.loads == {"US": 1}
    assert len(geocoder.threads) == 1
    assert geocoder.loaded_countries == ("US",)
