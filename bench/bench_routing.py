"""How fast the site router chooses a site and geocodes a postal code.

The budget is one millisecond per routing among 10,000 sites. This builds synthetic sites over the
US and Europe, routes random patients with `choose_site` over a `SiteIndex`, and prints throughput and
latency percentiles, then times geocoding cold (table loaded on first use), uncached and cached.

    python -m bench.bench_routing [--sites 10000] [--routings 5000] [--seed 1] [--summary FILE]
                                                                                  (from the repo root)
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bench.common import Summary, load, machine
from services.site_router.domain import NEAREST_CANDIDATES, SiteIndex, SiteView, choose_site
from services.site_router.geo import SHIPPED_DATA_DIR, Geocoder

REGIONS = {"US": ((25.0, 49.0), (-124.0, -67.0)), "EU": ((36.0, 60.0), (-10.0, 25.0))}


def random_point(rng: random.Random) -> tuple[float, float]:
    (lat_lo, lat_hi), (lon_lo, lon_hi) = REGIONS["US" if rng.random() < 0.6 else "EU"]
    return rng.uniform(lat_lo, lat_hi), rng.uniform(lon_lo, lon_hi)


def synthetic_sites(count: int, rng: random.Random) -> list[SiteView]:
    sites = []
    for i in range(count):
        lat, lon = random_point(rng)
        status = rng.choices(["recruiting", "paused", "closed"], weights=[8, 1, 1])[0]
        capacity = rng.randint(1, 5)
        sites.append(SiteView(f"S{i:05d}", lat, lon, status, capacity, rng.randint(0, capacity)))
    return sites


def percentiles_us(samples: list[float]) -> str:
    p50, p95, p99 = np.percentile(np.array(samples) * 1e6, [50, 95, 99])
    return f"p50 {p50:.0f} us, p95 {p95:.0f} us, p99 {p99:.0f} us, max {max(samples) * 1e6:.0f} us"


def timed(call: Callable[[], object]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def bench_routing(site_count: int, routings: int, rng: random.Random, summary: Summary) -> None:
    sites = synthetic_sites(site_count, rng)
    build = min(timed(lambda: SiteIndex(sites)) for _ in range(3))
    index = SiteIndex(sites)
    patients = [random_point(rng) for _ in range(routings)]
    declined = [
        {site.code for site in rng.sample(sites, rng.choice([0, 0, 0, 1, 3]))} for _ in range(routings)
    ]
    for lat, lon in patients[:200]:  # warm-up
        choose_site(lat, lon, index)

    samples, updates, waitlisted = [], [], 0
    for (lat, lon), refused in zip(patients, declined, strict=True):
        started = time.perf_counter()
        choice = choose_site(lat, lon, index, refused)
        samples.append(time.perf_counter() - started)
        if choice is None:
            waitlisted += 1
            continue
        reserved = dataclasses.replace(choice.site, open_count=choice.site.open_count + 1)
        updates.append(timed(lambda reserved=reserved: index.update(reserved)))

    with_room = sum(site.has_room for site in sites)
    print(f"\nrouting: {site_count} sites ({with_room} with room at start), {routings} routings")
    print(f"  index build: {build * 1e3:.1f} ms")
    print(
        f"  choose_site: {len(samples) / sum(samples):,.0f} routings/s; {percentiles_us(samples)}; {load()}"
    )
    p99 = float(np.percentile(samples, 99))
    summary.add(
        f"choose_site among {site_count:,} sites, p99",
        f"{p99 * 1e6:.0f} us ({len(samples) / sum(samples):,.0f}/s)",
        goal="< 1 ms",
        met=p99 < 1e-3,
    )
    print(
        f"  index.update after a reservation: mean {np.mean(updates) * 1e6:.1f} us; waitlisted {waitlisted}"
    )
    nearby = [
        timed(lambda lat=lat, lon=lon: index.nearby(lat, lon, limit=10)) for lat, lon in patients[:1000]
    ]
    print(f"  nearby(limit=10): {percentiles_us(nearby)}")
    # What the service does per routing: the index proposes candidates, the database picks one with room.
    nearest = [
        timed(lambda lat=lat, lon=lon, refused=refused: index.nearest(lat, lon, NEAREST_CANDIDATES, refused))
        for (lat, lon), refused in zip(patients[:1000], declined, strict=False)
    ]
    print(f"  nearest({NEAREST_CANDIDATES} candidates, as the service ranks): {percentiles_us(nearest)}")


def us_postal_codes() -> list[str]:
    with gzip.open(SHIPPED_DATA_DIR / "US.txt.gz", "rt", encoding="utf-8") as table:
        return sorted({line.split("\t", 2)[1] for line in table})


def bench_geocoding(rng: random.Random) -> None:
    codes = rng.sample(us_postal_codes(), 2000)
    print("\ngeocoding (US table, pgeocode over the shipped file)")
    with tempfile.TemporaryDirectory() as index_dir:
        cold = timed(lambda: Geocoder().locate(codes[0], "US"))
        print(f"  cold, first lookup builds pgeocode's index: {cold * 1e3:.0f} ms")
        timed(lambda: Geocoder(index_dir=Path(index_dir)).locate(codes[0], "US"))
        restart = timed(lambda: Geocoder(index_dir=Path(index_dir)).locate(codes[0], "US"))
        print(f"  cold, index read back from index_dir: {restart * 1e3:.0f} ms")
        warm_all = timed(lambda: Geocoder(index_dir=Path(index_dir)).warm())
        print(f"  warm() all 11 countries from index_dir: {warm_all * 1e3:.0f} ms")
    geocoder = Geocoder()
    geocoder.warm(["US"])
    uncached = [timed(lambda code=code: geocoder.locate(code, "US")) for code in codes]
    print(f"  uncached lookup (table loaded): {percentiles_us(uncached)}")
    cached = [timed(lambda code=code: geocoder.locate(code, "US")) for code in codes]
    print(f"  cached lookup: {percentiles_us(cached)}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sites", type=int, default=10_000)
    parser.add_argument("--routings", type=int, default=5_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--summary", type=Path, help="append headline figures (JSON lines) here")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    print(machine("numpy"))
    bench_routing(args.sites, args.routings, rng, Summary(args.summary, "routing"))
    bench_geocoding(rng)


if __name__ == "__main__":
    main()
