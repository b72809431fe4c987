"""Faults injected into the whole running system while a clinic keeps submitting referrals.

Every service runs as its own process on real Kafka, PostgreSQL (durable: one of the faults is a
SIGKILL) and SMTP. In turn, a few seconds apart, while the load goes on through all of them: each
service killed (SIGKILL) and started again, the broker restarted, the database restarted and killed
with SIGKILL, the SMTP server stopped for a while, and two pairs that overlap (a service killed while
SMTP is down, the broker restarted while the database is down). The services must ride out the server
restarts on their own. Afterwards every referral the clinic saw accepted must have reached its final
state and every email must have arrived exactly once; a second copy with the same Message-ID is the one
duplicate window the notifier documents (a crash between the SMTP server's acceptance and the commit):
counted, reported, allowed. While the database is down intake answers 503 with Retry-After, and the
clinic's retry with the same Idempotency-Key stores the referral once.
"""

from __future__ import annotations

import time

import pytest

from services.devstack.stack import SERVICES, Stack
from shared.dead_letters import DeadLetter, list_dead_letters
from shared.events import dead_letter_topic
from shared.kafka import new_producer
from shared.settings import KafkaSettings
from tests.reliability.harness import Fault, LocalServers, overlapping, revive
from tests.reliability.scenario import Outcome, quiet_windows, run_scenario

pytestmark = pytest.mark.reliability

REFERRALS = 300
"""At least this many; the load goes on until every fault has recovered (about 150 s)."""
RATE_PER_S = 5.0
GAP_S = 3.0
SMTP_DOWN_S = 10.0
PG_DOWN_S = 5.0
AFTER_DATABASE_S = 12.0
"""The pause after a database fault: every stage backs off while its store is down, so emails flow
again some seconds after it is back, and the window is to show them."""


def crash(system: Stack, name: str) -> Fault:
    def inject() -> None:
        process = system.processes[name]
        process.kill()
        revive(process)

    return Fault(f"kill -9 {name}", inject, down=(name,), kind="kill", target=name)


def smtp_outage(system: Stack, seconds: float) -> Fault:
    def inject() -> None:
        mailbox = system.processes["mailbox"]
        mailbox.stop()
        time.sleep(seconds)  # the fault itself: the mailbox stays down this long
        revive(mailbox)

    return Fault(f"SMTP down {seconds:.0f} s", inject, down=("mailbox",), kind="smtp_down", target="mailbox")


def faults(system: Stack, servers: LocalServers) -> list[Fault]:
    restart_postgres = Fault(
        f"restart PostgreSQL, {PG_DOWN_S:.0f} s down",
        lambda: servers.restart_postgres(down_s=PG_DOWN_S),
        kind="restart_postgres",
        then_s=AFTER_DATABASE_S,
    )
    kill_postgres = Fault(
        f"SIGKILL PostgreSQL, {PG_DOWN_S:.0f} s down",
        lambda: servers.kill_postgres(down_s=PG_DOWN_S),
        kind="kill_postgres",
        then_s=AFTER_DATABASE_S,
    )
    restart_kafka = Fault("restart Kafka", servers.restart_kafka, kind="restart_kafka")
    long_pg_outage = Fault(
        "PostgreSQL down 12 s", lambda: servers.restart_postgres(down_s=12.0), kind="restart_postgres"
    )
    # The broker restarts only once, overlapping the database outage: on this machine a broker's
    # start (and its topic check) takes most of a minute, which CI's time cannot afford twice.
    return [
        *(crash(system, service) for service in SERVICES),
        restart_postgres,
        kill_postgres,
        smtp_outage(system, SMTP_DOWN_S),
        overlapping(
            f"kill -9 notifier while SMTP down {SMTP_DOWN_S:.0f} s",
            smtp_outage(system, SMTP_DOWN_S),
            crash(system, "notifier"),
            after_s=3.0,
        ),
        overlapping("restart Kafka while PostgreSQL down 12 s", long_pg_outage, restart_kafka, after_s=2.0),
    ]


@pytest.mark.timeout(660)
async def test_every_accepted_referral_completes_and_each_email_arrives_once_despite_faults(
    system: Stack, local_servers: LocalServers, capsys: pytest.CaptureFixture[str]
) -> None:
    outcome = await run_scenario(
        system,
        faults(system, local_servers),
        referrals=REFERRALS,
        rate_per_s=RATE_PER_S,
        gap_s=GAP_S,
        title="fault suite",
    )
    with capsys.disabled():
        print(outcome.report)
    assert not outcome.problems, "\n".join(outcome.problems)
    assert not quiet_windows(outcome), outcome.report
    assert_503_then_stored_once(outcome)


def assert_503_then_stored_once(outcome: Outcome) -> None:
    """During each database fault the clinic got 503s with Retry-After (not a 500, not a reset from
    intake), and every referral it got one for was accepted later under the same Idempotency-Key;
    ``run_scenario`` has checked that intake stored each accepted referral exactly once."""
    assert outcome.load is not None
    by_index = {s.index: s for s in outcome.load.submissions}
    database_faults = [r for r in outcome.records if "postgres" in (r.kind or "")]
    assert len(database_faults) == 3, outcome.records
    for fault in database_faults:
        during = [a for a in outcome.load.answers if fault.started <= a.at <= fault.recovered]
        unavailable = [a for a in during if a.status == 503 and a.retry_after]
        assert unavailable, f"no 503 with Retry-After during {fault.name}: {during[:20]}"
        resets = [a for a in during if a.status is None and not a.no_token]
        assert not resets, f"intake reset or timed out during {fault.name}: {resets[:5]}"
        for answer in unavailable:
            submission = by_index[answer.index]
            assert submission.referral_id is not None, f"#{answer.index} never accepted after a 503"
            assert submission.accepted_at is not None and submission.accepted_at > answer.at
    assert outcome.stored == len(outcome.load.accepted)


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
