"""What every benchmark shares: the machine it ran on, load, percentiles, progress, servers and processes.

Figures are only worth something beside the machine and the load they were measured under: this box
has two cores shared with other engineers' test runs, so every figure is printed with the load average.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy.engine import make_url

from tests.support.system import create_or_drop_databases

DEFAULT_PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:25432/postgres"
DEFAULT_KAFKA = "127.0.0.1:29092"
RUN_DIR = Path(".run") / "bench"
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine(*libraries: str) -> str:
    """CPU, cores, Python, OS and the date: what a reader needs to compare a figure with their own."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    versions = []
    for name in libraries:
        module = sys.modules.get(name) or __import__(name)
        versions.append(f"{name} {getattr(module, '__version__', getattr(module, 'VERSION', '?'))}")
    return (
        f"cpu: {cpu_model()}; cores: {os.cpu_count()} ({usable} usable)\n"
        f"python {platform.python_version()} ({platform.python_implementation()})"
        + "".join(f", {v}" for v in versions)
        + f", {platform.system()} {platform.release()}\n"
        f"date: {datetime.now(UTC):%Y-%m-%d %H:%M UTC}; {load()}"
    )


def load() -> str:
    """The 1/5/15-minute load averages: more than 2 means other work competed for the cores."""
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return "load n/a"
    return f"load {one:.2f}/{five:.2f}/{fifteen:.2f}"


def percentiles_ms(samples_s: Sequence[float]) -> tuple[float, float, float]:
    """p50, p95, p99 in milliseconds."""
    p50, p95, p99 = np.percentile(np.asarray(samples_s) * 1e3, [50, 95, 99])
    return float(p50), float(p95), float(p99)


def latency_line(samples_s: Sequence[float]) -> str:
    p50, p95, p99 = percentiles_ms(samples_s)
    return f"p50 {p50:.1f} ms, p95 {p95:.1f} ms, p99 {p99:.1f} ms, max {max(samples_s) * 1e3:.0f} ms"


class Progress:
    """A line on stderr every few seconds, so a long run shows it is moving (and how fast)."""

    def __init__(self, what: str, total: int, every_s: float = 5.0) -> None:
        self.what, self.total, self.every_s = what, total, every_s
        self.started = self.last = time.monotonic()

    def update(self, done: int) -> None:
        now = time.monotonic()
        if now - self.last >= self.every_s:
            self.last = now
            rate = done / (now - self.started) if now > self.started else 0.0
            print(
                f"    ... {self.what}: {done}/{self.total} after {now - self.started:.0f} s ({rate:.0f}/s)",
                file=sys.stderr,
                flush=True,
            )


class Summary:
    """Headline figures as JSON lines, for ``bench/run_all.py``'s table (no file: nothing written)."""

    def __init__(self, path: Path | None, benchmark: str) -> None:
        self.path, self.benchmark = path, benchmark

    def add(
        self, figure: str, value: str, *, goal: str = "", met: bool | None = None, note: str = ""
    ) -> None:
        if self.path is None:
            return
        row = {
            "benchmark": self.benchmark,
            "figure": figure,
            "value": value,
            "goal": goal,
            "met": met,
            "load": load().removeprefix("load "),
            "note": note,
        }
        with self.path.open("a") as out:
            out.write(json.dumps(row) + "\n")


def pg_admin_url() -> str:
    """The servers `deploy/local/up.sh` starts, or those the caller exported (as scripts/test.sh does)."""
    return os.environ.get("TRIALROUTE_TEST_PG_URL", DEFAULT_PG_ADMIN_URL)


def kafka_bootstrap() -> str:
    return os.environ.get("KAFKA_BOOTSTRAP_SERVERS", DEFAULT_KAFKA)


def run_id() -> str:
    return uuid.uuid4().hex[:8]


@contextmanager
def temporary_databases(*services: str, tag: str) -> Iterator[dict[str, str]]:
    """Fresh PostgreSQL databases (async SQLAlchemy URLs), dropped afterwards whatever happens."""
    admin = pg_admin_url()
    names = {s: f"bench_{s}_{tag}" for s in services}
    asyncio.run(create_or_drop_databases(admin, names.values(), create=True))
    url = make_url(admin).set(drivername="postgresql+asyncpg")
    try:
        yield {s: url.set(database=n).render_as_string(hide_password=False) for s, n in names.items()}
    finally:
        asyncio.run(create_or_drop_databases(admin, names.values(), create=False))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICKS


def memory_mb(pid: int) -> tuple[float, float]:
    """A process's resident memory now and its peak so far (VmRSS, VmHWM), in MB (0 once it is gone)."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return 0.0, 0.0
    kb = {
        k: float(v.split()[0])
        for k, _, v in (line.partition(":") for line in lines)
        if k in ("VmRSS", "VmHWM")
    }
    return kb.get("VmRSS", 0.0) / 1024, kb.get("VmHWM", 0.0) / 1024


def postgres_cpu() -> dict[int, float]:
    """CPU time of each PostgreSQL process here (other engineers' too: read deltas as an upper bound)."""
    out = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        if text[text.find("(") + 1 : text.rfind(")")] in {"postgres", "postmaster"}:
            out[int(stat.parent.name)] = cpu_seconds(int(stat.parent.name))
    return out


def cpu_since(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU used between two snapshots by the processes alive at the second (those that ended are lost)."""
    return sum(max(0.0, sec - before.get(pid, 0.0)) for pid, sec in after.items())


@dataclass
class MachineCpu:
    """Busy and total CPU time of the whole machine since boot, to show how saturated a run left it."""

    busy: float
    total: float

    @classmethod
    def now(cls) -> MachineCpu:
        values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        idle = values[3] + values[4]  # idle + iowait
        return cls(busy=(sum(values) - idle) / _TICKS, total=sum(values) / _TICKS)

    def busy_share_since(self, earlier: MachineCpu) -> float:
        total = self.total - earlier.total
        return (self.busy - earlier.busy) / total if total > 0 else 0.0


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str))
