"""Failures the notifier rides out (a token intake refuses) and the ones it gives up on (dead letters)."""

from __future__ import annotations

import base64
import json

import httpx
import pytest

from services.notifier.domain import message_id
from shared.auth import Scope
from shared.events import Envelope
from tests.integration.notifier.conftest import (
    PATIENT,
    REFERRER,
    WCM,
    Issuer,
    Stack,
    routed,
    set_scopes,
)
from tests.support.kafka import read_topic
from tests.support.metrics import Counts
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    ("asks_for", "error"),
    [
        # The default: the token request names contact:read, which the issuer refuses to this client.
        ([Scope.CONTACT_READ.value], "the issuer refused a token"),
        # A token asked without scopes carries the client's others: intake answers 403.
        ([], "intake refused the notifier's token (403)"),
    ],
)
async def test_a_client_without_contact_read_delays_patient_and_referrer_emails_until_it_is_fixed(
    asks_for: list[str],
    error: str,
    issuer: Issuer,
    stack: Stack,
) -> None:
    secret = await issuer.register("notifier-misconfigured", [Scope.REFERRALS_READ], audiences=["intake"])
    settings = stack.make_settings(
        client_id="notifier-misconfigured", client_secret=secret, contact_scopes=asks_for
    )
    referral_id = stack.referral()
    event = routed(referral_id)
    async with stack.run_notifier(settings):
        await stack.publish(event)

        async def refused_twice() -> bool:
            rows = {r.recipient_role: r for r in await stack.notifications()}
            return (
                len(rows) == 3
                and rows["site"].state == "sent"
                and all(rows[r].attempts >= 2 and rows[r].state == "pending" for r in ("patient", "referrer"))
            )

        await eventually(refused_twice, what="patient and referrer emails retried, the site's sent")
        for row in await stack.notifications():
            if row.recipient_role != "site":  # waiting for its next attempt, or in it
                assert row.state in ("pending", "sending") and error in str(row.last_error), row.last_error
        assert [m.rcpt_tos for m in stack.smtp.messages] == [(WCM.coordinator_email,)]

        await set_scopes(issuer, "notifier-misconfigured", [Scope.REFERRALS_READ, Scope.CONTACT_READ])
        rows = await stack.settled(3)

    assert all(r.state == "sent" and r.last_error is None for r in rows)
    assert len(stack.smtp.to(PATIENT["email"])) == 1 and len(stack.smtp.to(REFERRER.email)) == 1
    assert {mid: len(c) for mid, c in stack.smtp.by_message_id().items()} == {
        message_id(event.id, role): 1 for role in ("site", "patient", "referrer")
    }


async def test_out_of_attempts_a_notification_fails_with_a_dead_letter_and_ops_can_retry_it(
    issuer: Issuer,
    http: httpx.AsyncClient,
    stack: Stack,
) -> None:
    ops_token = await issuer.token(http, "ops-console", [Scope.OPS], audience="notifier")
    ops = {"Authorization": f"Bearer {ops_token}"}
    referral_id = stack.referral()
    event = routed(referral_id)
    stack.smtp.stop()
    emails = Counts("trialroute_emails_total", service="notifier")
    dead = Counts("trialroute_dead_letters_total", service="notifier", topic="referral.routed")
    async with stack.run(max_attempts=3) as url:
        await stack.publish(event)
        rows = await stack.settled(3, states=frozenset({"failed"}))
        await eventually(lambda: stack.topic_has("referral.routed.dlq", 3), what="3 dead letters")

        assert all(r.attempts == 3 and "SMTP unavailable" in str(r.last_error) for r in rows)
        letters = [json.loads(r.value or b"") for r in await read_topic(stack.kafka, "referral.routed.dlq")]
        assert {x["notification"]["message_id"] for x in letters} == {
            message_id(event.id, role) for role in ("site", "patient", "referrer")
        }
        for letter in letters:
            assert "SMTP unavailable" in letter["error"]
            assert letter["topic"] == stack.kafka.topic("referral.routed")
            assert letter["key"] == str(referral_id)
            assert Envelope.from_bytes(base64.b64decode(letter["value_b64"])).id == event.id
            assert letter["value_truncated"] is False
            assert PATIENT["email"] not in json.dumps(letter)
        assert await read_topic(stack.kafka, "referral.notified") == []
        assert emails.moved(outcome="retried") == 6 and emails.moved(outcome="failed") == 3
        assert emails.moved(outcome="failed", role="patient", template="patient_routed") == 1
        assert dead.moved() == 3

        stack.smtp.start()
        for row in rows:
            response = await http.post(f"{url}/v1/notifications/{row.id}/retry", headers=ops)
            assert response.status_code == 200, response.text
            assert response.json()["state"] == "pending" and response.json()["attempts"] == 0
        rows = await stack.settled(3)
        again = await http.post(f"{url}/v1/notifications/{rows[0].id}/retry", headers=ops)
        assert again.status_code == 409
        missing = await http.post(f"{url}/v1/notifications/999999/retry", headers=ops)
        assert missing.status_code == 404

    assert len(stack.smtp.messages) == 3
    assert emails.moved(outcome="sent") == 3
