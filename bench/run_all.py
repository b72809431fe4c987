"""Run every benchmark with modest sizes (about ten minutes in all) and print one summary table.

Each benchmark runs as its own process, so that one's servers and event loop never share a process with
the next; its full output streams through as it runs. Headline figures are gathered as JSON lines and
printed at the end as a Markdown table (also written to .run/bench/summary-<time>.md), with the machine and
the load average each figure was measured under: on a shared two-core machine the load says how far
a figure can be trusted. Figures are measured, never asserted: a missed goal is reported, not failed.

    python -m bench.run_all [--only intake consumers ...] [--quick]      (from the repo root)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from bench.common import RUN_DIR, load, machine

# name -> module and its modest arguments (the full defaults of each module measure longer)
BENCHMARKS: dict[str, tuple[str, list[str]]] = {
    "eligibility": ("bench.bench_eligibility", ["--count", "20000", "--passes", "2"]),
    "routing": ("bench.bench_routing", ["--sites", "10000", "--routings", "3000"]),
    "intake": ("bench.bench_intake", ["--requests", "2000", "--rounds", "2", "--open-seconds", "15"]),
    "consumers": ("bench.bench_consumers", ["--events", "2000"]),
    "end_to_end": (
        "bench.bench_end_to_end",
        ["--referrals", "1000", "--rate", "50", "--seconds", "10", "--sustainable-seconds", "15"],
    ),
}
QUICK: dict[str, list[str]] = {
    "eligibility": ["--count", "5000", "--passes", "1"],
    "routing": ["--sites", "10000", "--routings", "500"],
    "intake": ["--requests", "300", "--warmup", "50", "--rounds", "1", "--open-seconds", "3"],
    "consumers": ["--events", "300", "--warmup", "20", "--settle-s", "2"],
    "end_to_end": ["--referrals", "60", "--rate", "50", "--seconds", "2", "--sustainable-seconds", "4"],
}


def run(name: str, module: str, arguments: list[str], summary: Path) -> tuple[int, float]:
    print(f"\n{'=' * 100}\n{name}: python -m {module} {' '.join(arguments)}   ({load()})", flush=True)
    started = time.monotonic()
    code = subprocess.call([sys.executable, "-m", module, *arguments, "--summary", str(summary)])
    return code, time.monotonic() - started


def table(rows: list[dict[str, object]]) -> str:
    lines = [
        "| benchmark | figure | measured | goal | met | load (1/5/15 min) |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        met = {True: "yes", False: "**no**", None: ""}[row["met"]]  # type: ignore[index]
        note = f" ({row['note']})" if row.get("note") else ""
        lines.append(
            f"| {row['benchmark']} | {row['figure']} | {row['value']}{note} | {row['goal']} | {met} | "
            f"{row['load']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", nargs="+", choices=list(BENCHMARKS), help="run only these")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks that all run, figures poor")
    args = parser.parse_args()

    RUN_DIR.mkdir(parents=True, exist_ok=True)
    # Files of this run only: the checkout (and its .run/) may be shared by runs of other engineers.
    stamp = f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{os.getpid()}"
    summary = RUN_DIR / f"summary-{stamp}.jsonl"
    print(machine())
    started = time.monotonic()
    outcomes = []
    for name in args.only or list(BENCHMARKS):
        module, arguments = BENCHMARKS[name]
        code, took = run(name, module, QUICK[name] if args.quick else arguments, summary)
        outcomes.append((name, code, took))

    rows = [json.loads(line) for line in summary.read_text().splitlines()] if summary.exists() else []
    report = (
        f"{machine()}\n\n{table(rows)}\n\n"
        + "\n".join(
            f"- {name}: {'ok' if code == 0 else f'FAILED (exit {code})'} in {took:.0f} s"
            for name, code, took in outcomes
        )
        + f"\n\ntotal {time.monotonic() - started:.0f} s"
    )
    markdown = summary.with_suffix(".md")
    markdown.write_text(report + "\n")
    print(f"\n{'=' * 100}\nsummary (also in {markdown})\n\n{report}")
    sys.exit(1 if any(code != 0 for _, code, _ in outcomes) else 0)


if __name__ == "__main__":
    main()
