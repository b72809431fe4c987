"""Chaos mode: faults drawn at random from a seed (``tests/reliability/chaos.py``), overlapping up to
two at once, while a clinic keeps submitting; then every check of the fault suite.

CI runs a short one (``TRIALROUTE_CHAOS_DURATION_S``, default 75 s of faults); ``make chaos`` a long one
(10 minutes, 3,000 referrals). The seed is printed first and in the report: ``TRIALROUTE_CHAOS_SEED``
replays the same schedule. Each report is also kept in ``.run/chaos/``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import pytest

from services.devstack.stack import Stack
from tests.reliability.chaos import Planned, describe, schedule, seed_from_env
from tests.reliability.harness import REPO, Fault, LocalServers, revive
from tests.reliability.scenario import run_scenario

pytestmark = pytest.mark.reliability

DURATION_S = float(os.environ.get("TRIALROUTE_CHAOS_DURATION_S", "75"))
"""Faults start within this many seconds of the load's start."""
RATE_PER_S = float(os.environ.get("TRIALROUTE_CHAOS_RATE", "5"))
PATIENCE_S = 600.0
"""How long the clinic retries one referral: faults overlap here, and on a busy 2-core machine a broker
restart alone takes minutes (a clinic that gave up on a referral intake stored reads as a problem)."""
REPORTS = REPO / ".run" / "chaos"


def chaos_faults(system: Stack, servers: LocalServers, planned: list[Planned]) -> list[Fault]:
    """Each planned fault as one the scenario runs at its start time."""

    def process_down(name: str, seconds: float, *, crash: bool) -> Callable[[], None]:
        def inject() -> None:
            process = system.processes[name]
            if crash:
                process.kill()
            else:
                process.stop()
            time.sleep(seconds)  # the fault itself: the process stays down this long
            revive(process)

        return inject

    def inject_for(p: Planned) -> Callable[[], None]:
        if p.kind == "kill":
            return process_down(p.target, p.down_s, crash=True)
        if p.kind == "smtp_down":
            return process_down("mailbox", p.down_s, crash=False)
        if p.kind == "restart_kafka":
            return lambda: servers.restart_kafka(down_s=p.down_s)
        if p.kind == "restart_postgres":
            return lambda: servers.restart_postgres(down_s=p.down_s)
        if p.kind == "kill_postgres":
            return lambda: servers.kill_postgres(down_s=p.down_s)
        raise ValueError(f"no such fault kind: {p.kind}")

    return [
        Fault(
            p.name,
            inject_for(p),
            down=(p.target,) if p.target in system.processes else (),
            at=p.start_s,
            target=p.target,
            kind=p.kind,
        )
        for p in planned
    ]


@pytest.mark.timeout(int(DURATION_S) + 900)
async def test_chaos_loses_nothing_and_sends_each_email_once(
    system: Stack, local_servers: LocalServers, capsys: pytest.CaptureFixture[str]
) -> None:
    seed = seed_from_env()
    planned = schedule(seed, DURATION_S)
    heading = (
        f"chaos seed {seed} (replay: TRIALROUTE_CHAOS_SEED={seed}): {len(planned)} faults over "
        f"{DURATION_S:.0f} s, at least {int(DURATION_S * RATE_PER_S)} referrals at {RATE_PER_S:g}/s"
    )
    with capsys.disabled():
        print(f"\n{heading}\n{describe(planned)}", flush=True)
    outcome = await run_scenario(
        system,
        chaos_faults(system, local_servers, planned),
        referrals=int(DURATION_S * RATE_PER_S),
        rate_per_s=RATE_PER_S,
        gap_s=0.0,
        title=f"chaos, seed {seed}",
        patience_s=PATIENCE_S,
    )
    REPORTS.mkdir(parents=True, exist_ok=True)
    (REPORTS / f"seed-{seed}.txt").write_text(f"{heading}\n{describe(planned)}\n{outcome.report}\n")
    with capsys.disabled():
        print(outcome.report)
    assert not outcome.problems, f"seed {seed}:\n" + "\n".join(outcome.problems)
    assert sorted(str(r.kind) for r in outcome.records) == sorted(p.kind for p in planned)
