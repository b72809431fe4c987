"""What each email says, to whom, and what it must never say; on the real broker, SMTP and database."""

from __future__ import annotations

import pytest

from services.notifier import dispatcher
from services.notifier.domain import message_id
from tests.integration.notifier.conftest import (
    CLINIC,
    CONSUMER_GROUP,
    DFCI,
    PATIENT,
    REFERRER,
    WCM,
    Stack,
    emails_of,
    routed,
    site_decided,
)
from tests.support import builders
from tests.support.builders import wrap
from tests.support.kafka import wait_consumed
from tests.support.metrics import Counts
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

TRACE = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


async def test_a_routed_referral_emails_site_patient_and_referrer(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The three outcomes recorded in one transaction however slow the machine (the contact read
    # delays the patient's and referrer's emails): one referral.notified for the three.
    monkeypatch.setattr(dispatcher, "RECORD_GATHER_S", 30)
    referral_id = stack.referral()
    event = routed(referral_id).model_copy(update={"trace": TRACE})
    emails = Counts("trialroute_emails_total", service="notifier")
    async with stack.run():
        await stack.publish(event)
        rows = await stack.settled(3)
        await eventually(lambda: stack.notified_emails(3), what="3 emails in referral.notified")
    assert emails.moved(outcome="sent") == 3 and emails.moved() == 3
    assert emails.moved(outcome="sent", template="site_new_referral", role="site") == 1

    assert {r.recipient_role: r.state for r in rows} == {
        "site": "sent",
        "patient": "sent",
        "referrer": "sent",
    }
    assert len(stack.smtp.messages) == 3

    (site,) = stack.smtp.to(WCM.coordinator_email)
    assert site.message_id == message_id(event.id, "site")
    assert site.mail_from == "no-reply@trialroute.example"
    assert str(referral_id) in site.subject and WCM.name in site.subject
    for text in (site.body("plain"), site.body("html")):
        assert str(referral_id) in text
        assert "needs review" in text
        assert "cd123_positive, organ_function" in text
        assert "CD123 by immunohistochemistry only; organ function not assessed" in text
        assert "6 km" in text
        assert "clinic-0001" in text
        assert REFERRER.name in text and REFERRER.email in text and str(REFERRER.phone) in text
        assert f"https://sites.trialroute.example/portal/referrals/{referral_id}" in text
        assert "To confirm: To confirm" not in text
    everything = site.raw_text()
    for identity in PATIENT.values():
        assert identity not in everything, f"the site's email carries patient identity: {identity}"

    (patient,) = stack.smtp.to(PATIENT["email"])
    assert patient.message_id == message_id(event.id, "patient")
    assert patient.message["Content-Language"] == "en"
    text = patient.body("plain")
    assert f"Dear {PATIENT['given_name']}," in text
    assert f"Your doctor, {REFERRER.name}, has referred you" in text
    assert f"{WCM.name}, {WCM.city}" in text and WCM.coordinator_email in text and str(WCM.phone) in text
    assert "What happens next" in text
    assert PATIENT["family_name"] not in patient.raw_text()
    assert "<strong>Weill Cornell Medicine</strong>" in patient.body("html")

    (referrer,) = stack.smtp.to(REFERRER.email)
    assert referrer.message_id == message_id(event.id, "referrer")
    assert f"Referral {referral_id}: routed to {WCM.name}" == referrer.subject
    assert PATIENT["given_name"] not in referrer.raw_text()

    assert stack.intake.reads == [("notifier", referral_id)], "one contact read, for patient and referrer"
    by_role = {r.recipient_role: r for r in rows}
    assert by_role["patient"].recipient == "m***@example.com"
    assert by_role["site"].recipient == "u***@sites.example.org"
    assert all(r.attempts == 1 and r.sent_at is not None for r in rows)

    [notified] = await stack.notified()  # one event (version 2) for the referral's three emails
    assert (notified.envelope.referral_id, notified.envelope.producer) == (referral_id, "notifier")
    assert notified.envelope.trace == TRACE, "it continues the trace of the referral's emails"
    assert sorted(notified.roles) == ["patient", "referrer", "site"]
    assert {(e.recipient_role, e.message_id, e.template, e.source_event_id) for e in notified.emails} == {
        ("site", message_id(event.id, "site"), "site_new_referral", event.id),
        ("patient", message_id(event.id, "patient"), "patient_routed", event.id),
        ("referrer", message_id(event.id, "referrer"), "referrer_routed", event.id),
    }
    for identity in [*PATIENT.values(), REFERRER.email, WCM.coordinator_email]:
        assert identity not in notified.envelope.model_dump_json(), "no address or identity in the event"


@pytest.mark.parametrize(
    ("consent", "email", "reason"),
    [(False, PATIENT["email"], "did not consent"), (True, None, "no email address")],
)
async def test_no_patient_email_without_consent_or_address(
    consent: bool,
    email: str | None,
    reason: str,
    stack: Stack,
) -> None:
    referral_id = stack.referral(consent=consent, email=email)
    async with stack.run():
        await stack.publish(routed(referral_id, consent=consent))
        rows = await stack.settled(3)
        await eventually(lambda: stack.notified_emails(2), what="2 emails in referral.notified")

    patient = next(r for r in rows if r.recipient_role == "patient")
    assert patient.state == "skipped" and reason in str(patient.skip_reason)
    assert patient.recipient is None
    assert stack.smtp.to(PATIENT["email"]) == []
    assert {m.rcpt_tos for m in stack.smtp.messages} == {(WCM.coordinator_email,), (REFERRER.email,)}
    roles = sorted(role for _, role, _ in emails_of(await stack.notified()))
    assert roles == ["referrer", "site"], "nothing is published for a skipped email"


@pytest.mark.parametrize(
    ("preferred", "language", "phrase"),
    [("es", "es", "Próximos pasos"), ("es-MX", "es", "Próximos pasos"), ("de", "en", "What happens next")],
)
async def test_the_patient_reads_their_language_or_english(
    preferred: str,
    language: str,
    phrase: str,
    stack: Stack,
) -> None:
    referral_id = stack.referral(language=preferred)
    async with stack.run():
        await stack.publish(routed(referral_id))
        rows = await stack.settled(3)

    (patient,) = stack.smtp.to(PATIENT["email"])
    assert phrase in patient.body("plain") and phrase in patient.body("html")
    assert patient.message["Content-Language"] == language
    assert next(r for r in rows if r.recipient_role == "patient").language == language
    (site,) = stack.smtp.to(WCM.coordinator_email)
    assert "Próximos" not in site.body("plain"), "professionals' emails stay in English"


async def test_a_declined_referral_routed_again_emails_the_new_site_and_tells_the_patient(
    stack: Stack,
) -> None:
    referral_id = stack.referral()
    first, decline, second = (
        routed(referral_id, WCM),
        site_decided(referral_id, "declined", reason="no capacity for apheresis this month"),
        routed(referral_id, DFCI, rank=2),
    )
    async with stack.run():
        for event in (first, decline, second):
            await stack.publish(event)
        await stack.settled(7)

    assert len(stack.smtp.to(WCM.coordinator_email)) == 1
    (new_site,) = stack.smtp.to(DFCI.coordinator_email)
    assert "your site is choice 2" in new_site.body("plain")

    to_patient = stack.smtp.to(PATIENT["email"])
    assert len(to_patient) == 2 and len({m.message_id for m in to_patient}) == 2
    latest = next(m for m in to_patient if m.message_id == message_id(second.id, "patient"))
    text = " ".join(latest.body("plain").split())
    assert f"{WCM.name}, cannot take your referral" in text
    assert f"{DFCI.name}, {DFCI.city}" in text

    to_referrer = {m.subject: m for m in stack.smtp.to(REFERRER.email)}
    declined = to_referrer[f"Referral {referral_id}: declined by {WCM.name}"]
    assert "no capacity for apheresis this month" in declined.body("plain")
    assert f"Referral {referral_id}: routed to {DFCI.name}" in to_referrer
    rerouted = to_referrer[f"Referral {referral_id}: routed to {DFCI.name}"].body("plain")
    assert f"It replaces {WCM.name}" in rerouted


@pytest.mark.parametrize(
    ("decision", "phrase"), [("accepted", "accepted your referral"), ("closed", "closed your referral")]
)
async def test_site_decisions_email_the_referrer_only(
    decision: str,
    phrase: str,
    stack: Stack,
) -> None:
    referral_id = stack.referral()
    async with stack.run():
        await stack.publish(site_decided(referral_id, decision))
        (row,) = await stack.settled(1)

    assert row.recipient_role == "referrer" and row.template == "referrer_site_decided"
    (email,) = stack.smtp.messages
    assert email.rcpt_tos == (REFERRER.email,)
    assert phrase in email.body("plain") and "Site WCM" in email.subject


async def test_an_information_request_emails_the_referrer_once_with_the_fields_and_no_patient(
    stack: Stack,
) -> None:
    referral_id = stack.referral()
    event = wrap(builders.info_request_opened(clinic_id=CLINIC), referral_id)
    async with stack.run():
        await stack.publish(event, times=2)  # redelivered: one email
        [row] = await stack.settled(1)
        await wait_consumed(stack.kafka, CONSUMER_GROUP, "referral.info_request_opened")
        await stack.quiet()

    assert (row.recipient_role, row.template, row.state) == ("referrer", "referrer_info_requested", "sent")
    assert len(stack.smtp.messages) == 1
    (email,) = stack.smtp.to(REFERRER.email)
    assert email.message_id == message_id(event.id, "referrer")
    assert email.subject == f"Referral {referral_id}: information requested"
    for text in (email.body("plain"), email.body("html")):
        assert "ecog" in text and "clinical.ecog" in text
        assert "Observation[LOINC 89247-1].valueInteger" in text
        assert f"/v1/referrals/{referral_id}/amendments" in text
    everything = email.raw_text()
    for identity in PATIENT.values():
        assert identity not in everything, f"the referrer's request carries patient identity: {identity}"
    [notified] = await stack.notified()
    assert [(e.recipient_role, e.template, e.source_event_id) for e in notified.emails] == [
        ("referrer", "referrer_info_requested", event.id)
    ]
