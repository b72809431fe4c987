"""Faults injected into the whole running system while a clinic keeps submitting referrals.

Every service runs as its own process on real Kafka, PostgreSQL and SMTP. In turn, a few seconds apart:
each service killed (SIGKILL) and started again, the broker restarted, the database restarted, the SMTP
server stopped for a while. The services must ride out the server restarts on their own. Afterwards
every referral the clinic saw accepted must have reached its final state and every email must have
arrived exactly once; a second copy with the same Message-ID is the one duplicate window the notifier
documents (a crash between the SMTP server's acceptance and the commit): counted, reported, allowed.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest

from services.devstack.stack import SERVICES, Stack
from shared.dead_letters import DeadLetter, list_dead_letters
from shared.events import TOPICS, dead_letter_topic
from shared.kafka import new_producer
from shared.settings import KafkaSettings
from tests.reliability.harness import (
    Clock,
    Fault,
    Load,
    LocalServers,
    Submission,
    Watch,
    account,
    plan,
    run_faults,
    sort_mail,
    table,
)
from tests.support.system import Client

pytestmark = pytest.mark.reliability

REFERRALS = 300
RATE_PER_S = 10.0
GAP_S = 3.0
SMTP_DOWN_S = 10.0
CAPACITY = 10_000  # site_router's maximum: far more than the load can fill
SETTLE_S = 150.0
"""Generous: the backlog a fault leaves, plus the notifier's lease (40 s in tests) for the resend of
an email whose outcome a crash lost."""


def faults(system: Stack, servers: LocalServers) -> list[Fault]:
    def crash(name: str) -> Fault:
        def inject() -> None:
            process = system.processes[name]
            process.kill()
            process.start()
            process.wait_healthy()

        return Fault(f"kill -9 {name}", inject, down=(name,))

    def smtp_outage() -> None:
        mailbox = system.processes["mailbox"]
        mailbox.stop()
        time.sleep(SMTP_DOWN_S)  # the fault itself: the mailbox stays down this long
        mailbox.start()
        mailbox.wait_healthy()

    return [
        *(crash(service) for service in SERVICES),
        Fault("restart Kafka", servers.restart_kafka),
        Fault("restart PostgreSQL", servers.restart_postgres),
        Fault(f"SMTP down {SMTP_DOWN_S:.0f} s", smtp_outage, down=("mailbox",)),
    ]


@pytest.mark.timeout(540)
async def test_every_accepted_referral_completes_and_each_email_arrives_once_despite_faults(
    system: Stack, local_servers: LocalServers, capsys: pytest.CaptureFixture[str]
) -> None:
    began = time.monotonic()
    clinic, ops = Client(system, "demo-clinic"), Client(system, "ops")
    async with httpx.AsyncClient(timeout=10, limits=httpx.Limits(max_connections=200)) as web:
        sites = await raise_capacity(web, system, ops)
        clock = Clock()
        load = Load(system, clinic, web, clock, plan(REFERRALS), rate_per_s=RATE_PER_S)
        watch = Watch(system, ops, web, clock)
        stop = asyncio.Event()
        watchers = [asyncio.create_task(watch.processes(stop)), asyncio.create_task(watch.sites(stop))]
        loading = asyncio.create_task(load.run())
        try:
            records = await run_faults(faults(system, local_servers), watch, load, gap_s=GAP_S)
            await loading
            statuses = await settle(web, system, clinic, ops, load.accepted, watch)
            settled = clock.now()
            messages = await mailbox(web, system)
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
    rows = account(records, accepted, statuses, sorted_mail)
    total = rows[-1]
    refused = [f"#{s.index}: {s.refused}" for s in load.submissions if s.refused]
    unanswered = [s for s in load.submissions if s.referral_id is None and not s.refused]
    routed = sum(1 for status in statuses.values() if status in ("routed", "notified"))
    held = sum(s["open_count"] for s in final_sites)
    crashed_loops = loop_crashes(system)

    problems = [f"{name} {detail}" for name, detail in watch.exits.items()]
    problems += [f"background loop stopped: {line}" for line in crashed_loops]
    problems += [f"refused: {line}" for line in refused]
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

    report = [
        "",
        f"fault suite: {len(load.submissions)} referrals at {RATE_PER_S:.0f}/s, faults {GAP_S:.0f} s apart; "
        f"last 2xx at {max((s.accepted_at or 0.0) for s in load.submissions):.0f} s, faults over at "
        f"{records[-1].recovered:.0f} s, all settled at {settled:.0f} s, "
        f"test took {time.monotonic() - began:.0f} s",
        table(rows),
        "(a row's window runs from its fault's start to the next fault's start. accepted so far: 2xx "
        "before the fault; completed, lost: referrals accepted in the window; duplicated: a second copy "
        "with the same Message-ID, extra: any other surplus email, both by arrival; emails: all that "
        "arrived in the window, i.e. work in flight)",
        f"accepted {len(accepted)}, never answered 2xx {len(unanswered)}, refused {len(refused)}; "
        f"{sum(s.attempts for s in load.submissions) - len(load.submissions)} client retries; "
        f"{len(messages)} emails; {held} slots held; {watch.site_polls} capacity polls",
        *(f"PROBLEM: {p}" for p in problems),
    ]
    with capsys.disabled():
        print("\n".join(report))
    assert not problems, "\n".join(problems)


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
    sending (so no email, not even a resend after a lost outcome, is still to come); or at the deadline."""
    deadline = time.monotonic() + SETTLE_S
    statuses: dict[str, str] = {}
    while time.monotonic() < deadline and not watch.exits:
        try:
            statuses = await referral_statuses(web, system, clinic)
            if all(statuses.get(s.referral_id or "") == s.final_status for s in accepted):
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
    response = await web.get(f"{system.config.url('mail_http')}/api/messages", timeout=60)
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


async def test_the_dead_letter_check_sees_a_dead_letter(kafka: KafkaSettings) -> None:
    """The fault suite's "no dead letters" means something only if listing finds one that is there."""
    producer = await new_producer(kafka, client_id="reliability-probe")
    try:
        letter = DeadLetter.of_value(
            b"{}", error="PoisonMessage: probe", consumer="probe", topic=kafka.topic("referral.routed")
        )
        await producer.send_and_wait(
            kafka.topic(dead_letter_topic("referral.routed")), letter.to_bytes(), key=b"probe"
        )
    finally:
        await producer.stop()
    assert [x.error for x in await list_dead_letters(kafka, "referral.routed")] == [letter.error]
    assert await list_dead_letters(kafka, "referral.screened") == []
