"""Chaos mode's schedule: faults drawn at random from a seed, so that a run that found something can be
replayed exactly (``TRIALROUTE_CHAOS_SEED``).

Pure: no I/O, no clock. :func:`schedule` decides what happens when; the fault suite turns each
:class:`Planned` into a :class:`~tests.reliability.harness.Fault` that starts at ``start_s``.

Overlaps are allowed but bounded: never more than ``max_at_once`` faults at once, never two on the same
target (a process, the broker, the database, the SMTP server). A fault occupies its target from its
start until it is down for ``down_s`` and then, in the worst case we plan for, back after
``RECOVERY_S`` more: the bounds hold on that reserved span.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

from services.devstack.stack import SERVICES

KINDS = ("kill", "restart_kafka", "restart_postgres", "kill_postgres", "smtp_down")
"""kill -9 of a service, the broker stopped and started, the database stopped and started, the
database's postmaster killed with SIGKILL (crash recovery at the next start), the SMTP server down."""

DOWN_S = {
    "kill": (0.0, 4.0),
    "restart_kafka": (0.0, 6.0),
    "restart_postgres": (1.0, 8.0),
    "kill_postgres": (0.0, 6.0),
    "smtp_down": (3.0, 15.0),
}
"""How long a fault keeps its target down, drawn uniformly from this range (seconds)."""

RECOVERY_S = {
    "kill": 8.0,
    "restart_kafka": 20.0,
    "restart_postgres": 8.0,
    "kill_postgres": 10.0,
    "smtp_down": 3.0,
}
"""What a target takes to come back once started again, generously (a loaded 2-core machine)."""

WEIGHTS = {"kill": 4, "restart_kafka": 1, "restart_postgres": 1, "kill_postgres": 1, "smtp_down": 1}
"""A kill names one of six services, so it is drawn more often: every target gets hit."""


@dataclass(frozen=True)
class Planned:
    """One fault of the schedule: what, on which target, when (seconds from the load's start), how long
    its target stays down before it is started again."""

    start_s: float
    kind: str
    target: str
    down_s: float

    @property
    def reserved_until(self) -> float:
        """The end of the span this fault holds its target for (down, then a worst-case recovery)."""
        return self.start_s + self.down_s + RECOVERY_S[self.kind]

    @property
    def name(self) -> str:
        down = f"{self.down_s:.0f}s"
        return {
            "kill": f"kill -9 {self.target}, {down}",
            "restart_kafka": f"restart Kafka, {down} down",
            "restart_postgres": f"restart PostgreSQL, {down} down",
            "kill_postgres": f"SIGKILL PostgreSQL, {down} down",
            "smtp_down": f"SMTP down {down}",
        }[self.kind]


def target_of(kind: str, service: str) -> str:
    return {"restart_kafka": "kafka", "restart_postgres": "postgres", "kill_postgres": "postgres"}.get(
        kind, "mailbox" if kind == "smtp_down" else service
    )


def schedule(
    seed: int,
    duration_s: float,
    *,
    max_at_once: int = 2,
    gap_s: tuple[float, float] = (2.0, 12.0),
    first_s: float = 3.0,
) -> list[Planned]:
    """Faults starting within ``[first_s, duration_s)``, ``gap_s`` apart (uniform), drawn from
    ``random.Random(seed)``: the same seed gives the same list. A draw that would break a bound is
    dropped and the next one tried a little later, so the schedule never waits on a long fault."""
    rng = random.Random(seed)  # a replayable schedule, not a secret
    kinds = list(WEIGHTS)
    weights = [WEIGHTS[k] for k in kinds]
    planned: list[Planned] = []
    t = first_s
    while t < duration_s:
        kind = rng.choices(kinds, weights)[0]
        target = target_of(kind, rng.choice(SERVICES))
        low, high = DOWN_S[kind]
        candidate = Planned(round(t, 1), kind, target, round(rng.uniform(low, high), 1))
        # Every earlier fault started before this one, so the most that are ever active at once
        # during its span is the number active at its start, plus itself.
        active = [p for p in planned if p.reserved_until > candidate.start_s]
        if len(active) < max_at_once and all(p.target != target for p in active):
            planned.append(candidate)
        t += rng.uniform(*gap_s)
    return planned


def seed_from_env(environ: dict[str, str] | None = None) -> int:
    """``TRIALROUTE_CHAOS_SEED`` to replay a run, else a fresh seed (printed by the caller)."""
    value = (os.environ if environ is None else environ).get("TRIALROUTE_CHAOS_SEED", "").strip()
    return int(value) if value else random.SystemRandom().randrange(2**32)


def describe(planned: list[Planned]) -> str:
    """The schedule, one line a fault, for the report (and for comparing two runs of one seed)."""
    return "\n".join(
        f"  {p.start_s:7.1f}s  {p.name}  (target {p.target}, held to {p.reserved_until:.0f}s)"
        for p in planned
    )
