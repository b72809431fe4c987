"""One fault scenario from start to verdict: a clinic's load, faults while it runs, then the checks
that nothing was lost or sent twice, with a table of every fault's window.

Every fault suite (a single broker's restarts and crashes, a broker cluster, network faults, chaos)
runs its faults through :func:`run_scenario` and asserts that it found no problem.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from services.devstack.stack import SERVICES, Stack
from shared.dead_letters import list_dead_letters
from shared.events import TOPICS
from tests.reliability.harness import (
    Clock,
    Fault,
    FaultRecord,
    Load,
    Row,
    Submission,
    Watch,
    account,
    plan,
    run_faults,
    sort_mail,
    table,
)
from tests.support.system import Client

CAPACITY = 10_000  # site_router's maximum: far more than the load can fill
TAIL_S = 5.0
"""How long the load goes on after the last fault recovered: the last window has its load too."""
SETTLE_S = 150.0
"""Generous: the backlog a fault leaves, plus the notifier's lease (40 s in tests) for the resend of
an email whose outcome a crash lost; counted from the last referral that became final."""
SETTLE_MAX_S = 900.0


@dataclass
class Outcome:
    report: str
    problems: list[str]
    rows: list[Row] = field(default_factory=list)
    """The fault table's rows (the last: the total)."""
    load: Load | None = None
    """The clinic's submissions and every answer it got."""
    records: list[FaultRecord] = field(default_factory=list)
    stored: int = 0
    """Referrals intake stored for the clinic during the scenario (each accepted one exactly once)."""
    arrivals: list[float] = field(default_factory=list)
    """When each email arrived (seconds since the load began)."""


async def run_scenario(
    system: Stack,
    faults: list[Fault],
    *,
    referrals: int,
    rate_per_s: float,
    gap_s: float,
    title: str,
    tail_s: float = TAIL_S,
    patience_s: float = 120.0,
) -> Outcome:
    """The load and ``faults`` (``gap_s`` apart, or at their ``Fault.at``) at once, then every check;
    the report names ``title``. The load submits at least ``referrals``, and goes on until ``tail_s``
    after the last fault recovered, so that every fault happens under load; the clinic retries each
    referral for ``patience_s`` (a referral it gave up on that intake stored shows as a problem)."""
    began = time.monotonic()
    clinic, ops = Client(system, "demo-clinic"), Client(system, "ops")
    async with httpx.AsyncClient(timeout=10, limits=httpx.Limits(max_connections=200)) as web:
        sites = await raise_capacity(web, system, ops)
        before = set(await referral_statuses(web, system, clinic))
        clock = Clock()
        earliest = -(time.monotonic() - began)  # the scenario's start on the load's clock
        load = Load(system, clinic, web, clock, plan(referrals), rate_per_s=rate_per_s, patience_s=patience_s)
        watch = Watch(system, ops, web, clock)
        stop, faults_over = asyncio.Event(), asyncio.Event()
        watchers = [asyncio.create_task(watch.processes(stop)), asyncio.create_task(watch.sites(stop))]
        loading = asyncio.create_task(load.run(until=faults_over))
        try:
            records = await run_faults(faults, watch, load, gap_s=gap_s)
            await asyncio.sleep(tail_s)  # the load after the last recovery, part of the scenario
            faults_over.set()
            await loading
            statuses = await settle(web, system, clinic, ops, load.accepted, watch)
            settled = clock.now()
            # What arrived since this scenario began: a system shared by two suites holds the first's
            # emails too (it settled before: nothing was pending or sending, which the fixture checks).
            messages = [m for m in await mailbox(web, system) if clock.at(m["received_at"]) >= earliest]
            failed = await notifications(web, system, ops, "failed")
            final_sites = await list_sites(web, system, ops)
            unready = await unready_services(web, system)
        finally:
            stop.set()
            loading.cancel()
            await asyncio.gather(loading, *watchers, return_exceptions=True)
    letters = {t: await list_dead_letters(system.config.kafka, t) for t in TOPICS}

    accepted = load.accepted
    coordinator_addresses = {s["coordinator_email"].lower() for s in sites}
    sorted_mail = sort_mail(messages, accepted, coordinator_addresses, clock)
    rows = account(records, accepted, statuses, sorted_mail, load.answers)
    total = rows[-1]
    stored = {referral for referral in statuses if referral not in before}
    refused = [f"#{s.index}: {s.refused}" for s in load.submissions if s.refused]
    unanswered = [s for s in load.submissions if s.referral_id is None and not s.refused]
    routed = sum(1 for status in statuses.values() if status in ("routed", "notified"))
    held = sum(s["open_count"] for s in final_sites)
    crashed_loops = loop_crashes(system)

    problems = [f"{name} {detail}" for name, detail in watch.exits.items()]
    problems += [f"background loop stopped: {line}" for line in crashed_loops]
    problems += [f"refused: {line}" for line in refused]
    if unanswered:
        problems.append(f"{len(unanswered)} referrals never answered 2xx within the client's patience")
    if total.lost:
        problems.append(f"{total.lost} expected emails never arrived")
    if total.completed != total.accepted:
        stuck = [
            f"{s.referral_id} {statuses.get(s.referral_id or '')}"
            for s in accepted
            if statuses.get(s.referral_id or "") != s.final_status
        ]
        problems.append(f"{total.accepted - total.completed} accepted referrals incomplete: {stuck[:20]}")
    if total.extra:
        problems.append(
            f"{total.extra} emails beyond the expected ones (not a same-Message-ID resend): "
            f"{sorted_mail.surplus()[:15]}"
        )
    if watch.overbooked or not watch.site_polls:
        problems.append(f"sites over capacity: {watch.overbooked[:20]} ({watch.site_polls} polls)")
    if held != routed:
        problems.append(f"sites hold {held} slots for {routed} routed referrals")
    problems += [
        f"{len(v)} dead letters on {t}.dlq: {[x.error for x in v][:5]}" for t, v in letters.items() if v
    ]
    problems += [
        f"notification failed: {n['recipient_role']} of {n['referral_id']}: {n['last_error']}" for n in failed
    ]
    problems += [f"{name} not ready after the faults: {detail}" for name, detail in unready.items()]
    if len(stored) != len(accepted) or stored != {s.referral_id for s in accepted}:
        problems.append(f"intake stored {len(stored)} referrals for {len(accepted)} accepted ones")
    errors = [a for a in load.answers if a.status is not None and a.status >= 500 and a.status != 503]
    unhinted = [a for a in load.answers if a.status == 503 and not a.retry_after]
    if errors or unhinted:
        problems.append(
            f"intake answered {len(errors)} 5xx other than 503 and {len(unhinted)} 503s without "
            f"Retry-After: {[(round(a.at, 1), a.status) for a in (errors + unhinted)[:10]]}"
        )

    report = [
        "",
        f"{title}: {len(load.submissions)} referrals at {rate_per_s:.0f}/s, faults {gap_s:.0f} s apart; "
        f"last 2xx at {max((s.accepted_at or 0.0) for s in load.submissions):.0f} s, faults over at "
        f"{records[-1].recovered if records else 0.0:.0f} s, all settled at {settled:.0f} s, "
        f"took {time.monotonic() - began:.0f} s",
        table(rows),
        "(a row's window runs from its fault's start to the next fault's start, so faults that overlap "
        "show a next start before their back s. accepted so far: 2xx before the fault; in window: 2xx "
        "in the window; completed, lost: referrals accepted in the window; duplicated: a second copy "
        "with the same Message-ID, extra: any other surplus email, both by arrival; emails: all that "
        "arrived in the window, i.e. work in flight; 503s: intake's 503 + Retry-After answers, no "
        "answer: attempts intake did not answer (down, reset, timeout), no token: attempts that "
        "could not get a token from auth, all three in the window)",
        f"accepted {len(accepted)}, never answered 2xx {len(unanswered)}, refused {len(refused)}; "
        f"{sum(s.attempts for s in load.submissions) - len(load.submissions)} client retries; "
        f"{len(messages)} emails; {held} slots held; {watch.site_polls} capacity polls; intake stored "
        f"{len(stored)} referrals",
        *(f"PROBLEM: {p}" for p in problems),
    ]
    return Outcome("\n".join(report), problems, rows, load, records, len(stored), sorted_mail.arrivals)


async def raise_capacity(web: httpx.AsyncClient, system: Stack, ops: Client) -> list[dict[str, Any]]:
    """Room for every eligible referral, so that each one ends ``notified`` and none waits."""
    headers = await ops.headers(web, "site_router")
    base = f"{system.config.url('site_router')}/v1/sites"
    for site in await list_sites(web, system, ops):
        response = await web.patch(f"{base}/{site['code']}", json={"capacity": CAPACITY}, headers=headers)
        assert response.status_code == 200, response.text
    return await list_sites(web, system, ops)


async def list_sites(web: httpx.AsyncClient, system: Stack, ops: Client) -> list[dict[str, Any]]:
    response = await web.get(
        f"{system.config.url('site_router')}/v1/sites", headers=await ops.headers(web, "site_router")
    )
    assert response.status_code == 200, response.text
    return list(response.json())


async def settle(
    web: httpx.AsyncClient,
    system: Stack,
    clinic: Client,
    ops: Client,
    accepted: list[Submission],
    watch: Watch,
) -> dict[str, str]:
    """Every referral's status once all accepted ones are final and the notifier has nothing pending or
    sending (so no email, not even a resend after a lost outcome, is still to come); or once nothing
    has moved for ``SETTLE_S`` (a long run's backlog on a busy machine takes longer than that, but keeps
    moving), or at ``SETTLE_MAX_S``."""
    began = time.monotonic()
    deadline = began + SETTLE_S
    statuses: dict[str, str] = {}
    final = -1
    while time.monotonic() < min(deadline, began + SETTLE_MAX_S) and not watch.exits:
        try:
            statuses = await referral_statuses(web, system, clinic)
            done = sum(1 for s in accepted if statuses.get(s.referral_id or "") == s.final_status)
            if done > final:  # progress: the backlog is being worked through
                final, deadline = done, time.monotonic() + SETTLE_S
            if done == len(accepted):
                if not await notifications(web, system, ops, "pending", "sending"):
                    break
        except httpx.HTTPError:
            pass
        await asyncio.sleep(2)
    return statuses


async def referral_statuses(web: httpx.AsyncClient, system: Stack, clinic: Client) -> dict[str, str]:
    statuses: dict[str, str] = {}
    params: dict[str, Any] = {"limit": 200}
    while True:
        response = await web.get(
            f"{system.config.url('intake')}/v1/referrals",
            params=params,
            headers=await clinic.headers(web, "intake"),
        )
        response.raise_for_status()
        page = response.json()
        statuses |= {str(item["id"]): item["status"] for item in page["items"]}
        if not page["next_cursor"]:
            return statuses
        params["cursor"] = page["next_cursor"]


async def notifications(
    web: httpx.AsyncClient, system: Stack, ops: Client, *states: str
) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for state in states:
        response = await web.get(
            f"{system.config.url('notifier')}/v1/notifications",
            params={"state": state, "limit": 1000},
            headers=await ops.headers(web, "notifier"),
        )
        response.raise_for_status()
        found += response.json()["notifications"]
    return found


async def mailbox(web: httpx.AsyncClient, system: Stack) -> list[dict[str, Any]]:
    # Every message, parsed anew on each call: thousands of them on a busy machine take minutes.
    response = await web.get(f"{system.config.url('mail_http')}/api/messages", timeout=600)
    response.raise_for_status()
    return list(response.json())


async def unready_services(web: httpx.AsyncClient, system: Stack) -> dict[str, str]:
    """Services whose ``/readyz`` still fails: each must have reconnected to everything by itself."""
    unready = {}
    for service in SERVICES:
        try:
            response = await web.get(f"{system.config.url(service)}/readyz")
            if response.status_code != 200:
                unready[service] = response.text[:300]
        except httpx.HTTPError as exc:
            unready[service] = repr(exc)
    return unready


def loop_crashes(system: Stack) -> list[str]:
    """A background loop (consumer, relay, dispatcher) that ended while its process lives on is as
    bad as a crashed process, and quieter: ``shared.app`` logs it."""
    found = []
    for name in SERVICES:
        log = system.processes[name].log_path
        if log.exists():
            found += [
                f"{name}: {line[:300]}"
                for line in log.read_text(errors="replace").splitlines()
                if "background loop stopped" in line
            ]
    return found


def quiet_windows(outcome: Outcome, *, after_s: float = 25.0) -> list[str]:
    """Faults that did not happen under load: no referral accepted in their window, or no email
    arriving from their start until ``after_s`` after their recovery (a killed consumer stops its
    stage until its group has rebalanced, which waits out the dead member's session: some seconds)."""
    quiet = []
    for row, record in zip(outcome.rows[1:-1], outcome.records, strict=True):
        emails = sum(1 for t in outcome.arrivals if record.started <= t <= record.recovered + after_s)
        if not row.accepted or not emails:
            quiet.append(
                f"{row.fault} (at {record.started:.0f} s): {row.accepted} accepted in its window, "
                f"{emails} emails until {after_s:.0f} s after it recovered"
            )
    return quiet
