"""One email per (event, recipient) under redelivery, restarts, an SMTP outage, a crashed dispatcher
and several notifier instances; counted per Message-ID at a real SMTP server."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from datetime import UTC, datetime

import pytest

from services.notifier.consumers import on_routed
from services.notifier.domain import message_id
from services.notifier.store import TABLES, claim_due
from shared.db import Database
from shared.events import ReferralRouted
from shared.settings import KafkaSettings
from tests.integration.notifier.conftest import (
    DFCI,
    Intake,
    MakeSettings,
    RunNotifier,
    notifications,
    publish,
    routed,
    settled,
)
from tests.support.kafka import eventually, read_topic
from tests.support.smtp import SmtpServer

pytestmark = pytest.mark.integration


def assert_each_email_once(smtp: SmtpServer, expected: int) -> None:
    copies = {mid: len(received) for mid, received in smtp.by_message_id().items()}
    assert len(copies) == expected, f"{len(copies)} distinct emails, expected {expected}"
    assert set(copies.values()) == {1}, f"duplicates: { {m: n for m, n in copies.items() if n > 1} }"


async def test_an_event_delivered_three_times_and_again_after_a_restart_emails_each_recipient_once(
    notifier_settings: MakeSettings,
    run_notifier: RunNotifier,
    intake: Intake,
    smtp_server: SmtpServer,
    kafka: KafkaSettings,
    database_url: str,
) -> None:
    referral_id = uuid.uuid4()
    intake.add(referral_id)
    event = routed(referral_id)
    settings = notifier_settings()
    async with run_notifier(settings):
        await publish(kafka, event, times=3)
        await settled(database_url, 3)

    async with run_notifier(settings):  # a restart: the same group, store and SMTP server
        await publish(kafka, event)
        # Routed again, behind the copy on the same partition: once its emails are out, the copy
        # was consumed too.
        await publish(kafka, routed(referral_id, DFCI, rank=2))
        await settled(database_url, 6)
        await asyncio.sleep(1)

    assert_each_email_once(smtp_server, 6)
    for role in ("site", "patient", "referrer"):
        assert message_id(event.id, role) in smtp_server.by_message_id()
    notified = await read_topic(kafka, "referral.notified")
    assert len(notified) == 6


async def test_an_smtp_outage_delays_the_emails_and_loses_none(
    notifier_settings: MakeSettings,
    run_notifier: RunNotifier,
    intake: Intake,
    smtp_server: SmtpServer,
    kafka: KafkaSettings,
    database_url: str,
) -> None:
    referrals = [uuid.uuid4() for _ in range(3)]
    for referral_id in referrals:
        intake.add(referral_id)
    smtp_server.stop()
    async with run_notifier(notifier_settings()):
        for referral_id in referrals:
            await publish(kafka, routed(referral_id))
        waiting = await settled(database_url, 9, states=frozenset({"pending", "sending"}))

        async def retried() -> bool:
            rows = await notifications(database_url)
            return all(r.attempts >= 2 and r.state in ("pending", "sending") for r in rows)

        await eventually(retried, what="every notification retried during the outage")
        rows = await notifications(database_url)
        assert all("SMTP unavailable" in str(r.last_error) for r in rows if r.state == "pending")
        assert len(waiting) == 9

        smtp_server.start()
        rows = await settled(database_url, 9)
        await eventually(lambda: _count(kafka, "referral.notified", 9), what="9 referral.notified")
        await asyncio.sleep(1)

    assert_each_email_once(smtp_server, 9)
    assert all(r.state == "sent" and r.last_error is None for r in rows)


async def test_a_dispatcher_that_died_mid_send_is_replaced_after_its_lease_with_the_same_message_id(
    notifier_settings: MakeSettings,
    run_notifier: RunNotifier,
    intake: Intake,
    smtp_server: SmtpServer,
    database_url: str,
) -> None:
    referral_id = uuid.uuid4()
    intake.add(referral_id)
    event = routed(referral_id)
    db = Database(database_url)
    await db.create_tables(TABLES)
    async with db.session() as session:
        data = event.payload()
        assert isinstance(data, ReferralRouted)
        await on_routed(session, event, data, message_id_domain="trialroute.notifier")
    async with db.session() as session:  # claimed by a dispatcher that then crashed
        claimed = await claim_due(session, is_sqlite=False, now=datetime.now(UTC), lease_s=3, limit=10)
    await db.dispose()
    assert len(claimed) == 3

    async with run_notifier(notifier_settings()):
        rows = await notifications(database_url)
        assert {r.state for r in rows} == {"sending"}, "nobody touches a row under a live lease"
        rows = await settled(database_url, 3)

    assert all(r.attempts == 2 for r in rows)
    assert_each_email_once(smtp_server, 3)
    assert message_id(event.id, "site") in smtp_server.by_message_id()


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
async def test_several_notifier_instances_send_each_email_once(
    backend: str,
    notifier_settings: MakeSettings,
    run_notifier: RunNotifier,
    intake: Intake,
    smtp_server: SmtpServer,
    kafka: KafkaSettings,
    database_url: str,
    sqlite_url: str,
) -> None:
    url = database_url if backend == "postgresql" else sqlite_url
    referrals = [uuid.uuid4() for _ in range(8)]
    for referral_id in referrals:
        intake.add(referral_id)
    settings = notifier_settings(database_url=url, dispatch_batch=3)
    async with run_notifier(settings), run_notifier(settings), run_notifier(settings):
        for referral_id in referrals:
            await publish(kafka, routed(referral_id), times=2)
        rows = await settled(url, 24, within=90)
        await eventually(lambda: _count(kafka, "referral.notified", 24), what="24 referral.notified")
        await asyncio.sleep(1)

    assert_each_email_once(smtp_server, 24)
    assert Counter(r.state for r in rows) == {"sent": 24}
    assert len(await read_topic(kafka, "referral.notified")) == 24


async def _count(kafka: KafkaSettings, topic: str, count: int) -> bool:
    return len(await read_topic(kafka, topic)) >= count
