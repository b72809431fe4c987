"""How fast the eligibility engine assesses a referral.

The budget is 10,000 assessments per second on one core. This builds a varied synthetic set from the
example referral of docs/referral.md (ages, diagnoses, thresholds at their boundaries, stale or missing
assessments, every cohort-relevant field), validates it once as the consumer would, then times
`assess` alone: throughput over the whole set (best of a few passes) and per-call latency percentiles.

    python bench/bench_eligibility.py [--count 50000] [--seed 1] [--passes 3] [--summary FILE]
                                                                                  (from the repo root)
"""

from __future__ import annotations

import argparse
import collections
import random
import sys
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np

if not __package__:  # run as `python bench/bench_eligibility.py`: the repo root is not on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import Summary, load, machine
from services.eligibility.domain import ScreeningInput, StudySettings, assess
from services.eligibility.rules import load_ruleset
from shared.referral import ClinicalData

BASE_DAY = date(2026, 11, 10)
SYSTEMS = ("bone_marrow", "renal", "hepatic", "pulmonary", "cardiac")


def pick(rng: random.Random, weighted: dict[Any, int]) -> Any:
    return rng.choices(list(weighted), weights=list(weighted.values()))[0]


def organ_function(rng: random.Random, day: date) -> dict[str, Any] | None:
    if rng.random() < 0.03:
        return None
    days_old = rng.randint(0, 27) if rng.random() < 0.9 else rng.choice([-1, 28, 29, 60])  # window edges
    block: dict[str, Any] = {"assessed_on": (day - timedelta(days=days_old)).isoformat()}
    for system in SYSTEMS:
        block[system] = pick(rng, {"adequate": 98, "inadequate": 1, "unknown": 0.5, None: 0.5})
    return block


def prior_therapy(rng: random.Random, day: date) -> dict[str, Any]:
    last = pick(rng, {"never": 80, "date": 18, None: 2})
    if last == "date":
        last = (day - timedelta(days=rng.randint(60, 500))).isoformat()
    return {
        "gene_or_cell_therapy": pick(rng, {False: 97, True: 2, None: 1}),
        "allogeneic_sct_count": pick(rng, {0: 65, 1: 31, 2: 2, 3: 1, None: 1}),
        "last_anti_cd20_on": last,
    }


def clinical(rng: random.Random, day: date) -> dict[str, Any]:
    """A clinical block as a clinic would send it (ISO date strings), varied around every boundary."""
    blasts = pick(rng, {"draw": 92, 5.0: 2, 5.1: 2, None: 4})
    cd123 = pick(
        rng,
        {
            ("flow_cytometry", True): 90,
            ("flow_cytometry", False): 3,
            ("immunohistochemistry", True): 3,
            ("other", True): 1,
            (None, True): 1,
            None: 2,
        },
    )
    return {
        "diagnosis": pick(rng, {"aml": 92, "apl": 1, "mds": 2, "all": 1, "other": 1, None: 3}),
        "disease_status": pick(
            rng, {"relapsed": 55, "primary_refractory": 35, "newly_diagnosed": 3, "remission": 2, None: 5}
        ),
        "marrow_blast_percent": round(rng.uniform(2, 90), 1) if blasts == "draw" else blasts,
        "cd123": None if cd123 is None else {"method": cd123[0], "positive": cd123[1]},
        "cns_leukemia": pick(rng, {False: 96, True: 2, None: 2}),
        "ecog": pick(rng, {0: 45, 1: 45, 2: 5, 3: 2, None: 3}),
        "organ_function": organ_function(rng, day),
        "prior_therapy": prior_therapy(rng, day),
        "active_infection": pick(rng, {False: 95, True: 3, None: 2}),
        "donor_identified": pick(rng, {True: 93, False: 4, None: 3}),
        "transplant_strategy_defined": pick(rng, {True: 94, False: 3, None: 3}),
    }


def synthetic_inputs(count: int, rng: random.Random) -> tuple[list[ScreeningInput], float]:
    """The inputs, and the mean time to validate one clinical block (the consumer pays it once)."""
    raw = []
    for _ in range(count):
        day = BASE_DAY + timedelta(days=rng.randint(0, 365))
        block = clinical(rng, day)
        age = pick(rng, {"draw": 95, "edge": 4, None: 1})
        if age is not None:
            age = rng.randint(18, 65) if age == "draw" else rng.choice([16, 17, 18, 65, 66, 70])
        raw.append((age, block, day))
    inputs = [
        ScreeningInput(age_years=age, clinical=ClinicalData.model_validate(block), referral_day=day)
        for age, block, day in raw
    ]
    started = time.perf_counter()
    for _, block, _ in raw:
        ClinicalData.model_validate(block)
    return inputs, (time.perf_counter() - started) / count


def throughput(inputs: list[ScreeningInput], passes: int, settings: StudySettings) -> float:
    ruleset = load_ruleset()
    best = float("inf")
    for _ in range(passes):
        started = time.perf_counter()
        for inp in inputs:
            assess(inp, ruleset, settings)
        best = min(best, time.perf_counter() - started)
    return len(inputs) / best


def latencies_us(inputs: list[ScreeningInput], settings: StudySettings) -> np.ndarray:
    ruleset = load_ruleset()
    clock = time.perf_counter_ns
    samples = np.empty(len(inputs), dtype=np.int64)
    for i, inp in enumerate(inputs):
        started = clock()
        assess(inp, ruleset, settings)
        samples[i] = clock() - started
    return samples / 1e3


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--summary", type=Path, help="append headline figures (JSON lines) here")
    args = parser.parse_args()
    summary = Summary(args.summary, "eligibility engine")

    print(machine("pydantic"))
    inputs, validate_s = synthetic_inputs(args.count, random.Random(args.seed))
    ruleset, settings = load_ruleset(), StudySettings()
    # one pass to count decisions, which also warms up the interpreter's caches
    decisions = collections.Counter(assess(inp, ruleset, settings).decision for inp in inputs)
    mix = ", ".join(f"{name} {n / len(inputs):.0%}" for name, n in sorted(decisions.items()))
    print(f"\neligibility: {len(inputs):,} synthetic referrals, rule set {ruleset.version}; decisions: {mix}")
    print(f"  clinical block validation (pydantic, once per event): {validate_s * 1e6:.1f} us per referral")
    for label, cohort_settings in (
        ("dose_escalation", settings),
        ("dose_expansion", StudySettings("dose_expansion")),
    ):
        rate = throughput(inputs, args.passes, cohort_settings)
        p50, p95, p99 = np.percentile(latencies_us(inputs, cohort_settings), [50, 95, 99])
        print(
            f"  assess ({label}): {rate:,.0f} assessments/s on one core; "
            f"latency p50 {p50:.1f} us, p95 {p95:.1f} us, p99 {p99:.1f} us; {load()}"
        )
        summary.add(
            f"assess ({label}), one core",
            f"{rate:,.0f}/s (p99 {p99:.0f} us)",
            goal=">= 10,000/s",
            met=rate >= 10_000,
        )


if __name__ == "__main__":
    main()
