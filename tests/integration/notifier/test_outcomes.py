"""The referrer's emails over a referral's life at its site, on the real broker, SMTP and database:
exactly one per decision (acceptance, decline) and one for the final outcome, none for the steps
between, however often an event is delivered; never the patient's identity."""

from __future__ import annotations

import uuid

import pytest

from services.notifier.domain import message_id
from shared.events import Envelope
from tests.integration.notifier.conftest import (
    CLINIC,
    DFCI,
    PATIENT,
    REFERRER,
    WCM,
    Stack,
    assert_each_email_once,
    routed,
    site_decided,
)
from tests.support import builders
from tests.support.builders import wrap

pytestmark = pytest.mark.integration


def progressed(referral_id: uuid.UUID, step: str, **fields: object) -> Envelope:
    return wrap(builders.progressed(step, clinic_id=CLINIC, site_code=WCM.code, **fields), referral_id)


async def test_the_referrer_gets_one_email_per_decision_and_one_for_the_outcome(stack: Stack) -> None:
    referral_id = stack.referral()
    accepted = site_decided(referral_id, "accepted")
    steps = [progressed(referral_id, s) for s in ("contacted", "screening_scheduled", "consented")]
    outcome = progressed(referral_id, "enrolled", subject_id="UCART123-0042")
    async with stack.run():
        await stack.publish(routed(referral_id, WCM))
        for event in (accepted, *steps, outcome):
            await stack.publish(event, times=2)  # every event delivered twice
        await stack.settled(5)  # site, patient, referrer on routing; referrer on acceptance and outcome
        await stack.quiet()

    assert_each_email_once(stack.smtp, 5)
    to_referrer = {m.message_id: m for m in stack.smtp.to(REFERRER.email)}
    assert len(to_referrer) == 3
    acceptance = to_referrer[message_id(accepted.id, "referrer")]
    assert "accepted your referral" in acceptance.body("plain")
    enrolled = to_referrer[message_id(outcome.id, "referrer")]
    assert enrolled.subject == f"Referral {referral_id}: outcome at {WCM.name}"
    for text in (enrolled.body("plain"), enrolled.body("html")):
        assert str(referral_id) in text and "the patient was enrolled" in text
    for email in to_referrer.values():
        for identity in PATIENT.values():
            assert identity not in email.raw_text(), (
                f"the referrer's email carries patient identity: {identity}"
            )
    assert "UCART123-0042" not in enrolled.raw_text(), "the subject id stays with the site and the timeline"
    assert len(stack.smtp.to(PATIENT["email"])) == 1 and len(stack.smtp.to(WCM.coordinator_email)) == 1


async def test_a_decline_and_a_screen_failure_each_email_the_referrer_once_with_the_reason(
    stack: Stack,
) -> None:
    referral_id = stack.referral()
    decline = site_decided(referral_id, "declined", reason="no apheresis slot this month")
    at_dfci = wrap(builders.site_decided("accepted", clinic_id=CLINIC, site_code=DFCI.code), referral_id)
    failed = wrap(
        builders.progressed(
            "screen_failed", clinic_id=CLINIC, site_code=DFCI.code, reason="blasts above 30%"
        ),
        referral_id,
    )
    async with stack.run():
        await stack.publish(routed(referral_id, WCM))
        await stack.publish(decline, times=3)
        await stack.publish(routed(referral_id, DFCI, rank=2))
        await stack.publish(at_dfci)
        await stack.publish(failed, times=2)
        await stack.settled(9)  # 3 + referrer on decline + 3 on the new routing + acceptance + outcome
        await stack.quiet()

    assert_each_email_once(stack.smtp, 9)
    to_referrer = {m.message_id: m for m in stack.smtp.to(REFERRER.email)}
    declined = to_referrer[message_id(decline.id, "referrer")]
    assert "no apheresis slot this month" in declined.body("plain")
    outcome = to_referrer[message_id(failed.id, "referrer")]
    assert outcome.subject == f"Referral {referral_id}: outcome at {DFCI.name}"
    text = outcome.body("plain")
    assert "the patient did not pass the study's screening" in text and "Reason: blasts above 30%" in text
