"""Faults injected into the whole running system while a clinic keeps submitting referrals.

Every service runs as its own process on real Kafka, PostgreSQL and SMTP. In turn, a few seconds apart:
each service killed (SIGKILL) and started again, the broker restarted, the database restarted, the SMTP
server stopped for a while. The services must ride out the server restarts on their own. Afterwards
every referral the clinic saw accepted must have reached its final state and every email must have
arrived exactly once; a second copy with the same Message-ID is the one duplicate window the notifier
documents (a crash between the SMTP server's acceptance and the commit): counted, reported, allowed.
"""

from __future__ import annotations

import time

import pytest

from services.devstack.stack import SERVICES, Stack
from shared.dead_letters import DeadLetter, list_dead_letters
from shared.events import dead_letter_topic
from shared.kafka import new_producer
from shared.settings import KafkaSettings
from tests.reliability.harness import Fault, LocalServers
from tests.reliability.scenario import run_scenario

pytestmark = pytest.mark.reliability

REFERRALS = 300
RATE_PER_S = 10.0
GAP_S = 3.0
SMTP_DOWN_S = 10.0


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
