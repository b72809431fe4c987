"""Every email template renders, escapes in HTML, and keeps patient identity out of the site's email.

Reads the packaged templates (package data, like the rule sets), nothing else.
"""

from __future__ import annotations

from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Any

import pytest

from services.notifier.domain import Template
from services.notifier.mail import DeliveryError, Templates, build_message

pytestmark = pytest.mark.unit

TEMPLATES = Templates()


def context(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "study": "UCART123 (AMELI-01)",
        "referral_id": "6a1f2d9e-0000-4000-8000-000000000001",
        "previous_site": None,
        "site": {
            "code": "WCM",
            "name": "Weill Cornell <Medicine>",
            "city": "New York",
            "coordinator_email": "c@sites.example",
            "phone": "+1 212 555 0199",
        },
        "distance_km": 4.2,
        "rank": 1,
        "decision": "needs_review",
        "decision_label": "needs review",
        "criteria_to_confirm": ["ecog", "organ_function"],
        # As site_router's domain.confirmation_note writes it: the label is part of the note.
        "note": "To confirm: ECOG <2> not reported; organ function older than the screening window. "
        "Pre-screened on the study's main public criteria only.",
        "clinic_id": "clinic-a",
        "referrer": {"name": "Dr. <b>Smith</b>", "email": "asmith@clinic.example", "phone": None},
        "site_referral_url": "http://sites.example/portal/referrals/1",
        "step": "screen_failed",
        "step_label": "the patient did not pass the study's screening",
        "patient_given_name": "Maria",
        "reason": None,
        "enrolled": None,
        "site_code": "WCM",
        "site_label": "Weill Cornell",
        "origin": "screening",
        "revision": 1,
        "items": [
            {
                "criterion": "ecog",
                "reason": "ecog not given",
                "fields": [{"json_path": "clinical.ecog", "fhir": "Observation[LOINC 89247-1].valueInteger"}],
            }
        ],
        "has_question": False,
    }
    return {**base, **overrides}


@pytest.mark.parametrize("template", list(Template))
def test_every_template_renders_in_every_language_it_has(template: Template) -> None:
    languages = TEMPLATES.languages(template)
    assert "en" in languages
    for language in languages:
        rendered = TEMPLATES.render(template, language, context())
        assert rendered.subject and "\n" not in rendered.subject
        assert "6a1f2d9e-0000-4000-8000-000000000001" in rendered.text
        assert "<b>Smith</b>" not in rendered.html and "&lt;b&gt;Smith&lt;/b&gt;" in rendered.html


def test_patients_can_read_their_email_in_english_or_spanish() -> None:
    assert TEMPLATES.languages(Template.PATIENT_ROUTED) >= {"en", "es"}
    spanish = TEMPLATES.render(Template.PATIENT_ROUTED, "es", context())
    assert "Su derivación" in spanish.subject and "Próximos pasos" in spanish.text


def test_a_rerouted_patient_hears_of_the_new_site() -> None:
    text = TEMPLATES.render(Template.PATIENT_ROUTED, "en", context(previous_site="Dana-Farber")).text
    assert "Dana-Farber, cannot take your referral" in text
    assert "Weill Cornell <Medicine>, New York" in text


def test_the_site_email_needs_no_patient_identity() -> None:
    without_patient = context()
    del without_patient["patient_given_name"]
    rendered = TEMPLATES.render(Template.SITE_NEW_REFERRAL, "en", without_patient)
    assert "Maria" not in rendered.text + rendered.html
    assert "ecog, organ_function" in rendered.text and "4 km" in rendered.text
    assert "To confirm: ECOG <2> not reported" in rendered.text
    assert "To confirm: ECOG &lt;2&gt; not reported" in rendered.html
    assert "To confirm: To confirm" not in rendered.text + rendered.html, "the label is the note's own"
    assert "http://sites.example/portal/referrals/1" in rendered.text
    assert 'href="http://sites.example/portal/referrals/1"' in rendered.html


def test_the_referrer_hears_the_outcome_without_patient_identity() -> None:
    outcome = context(reason="blasts <40%>", referrer={"name": "Dr. Ana Smith", "email": "a@c.example"})
    del outcome["patient_given_name"]
    rendered = TEMPLATES.render(Template.REFERRER_OUTCOME, "en", outcome)
    assert rendered.subject == "Referral 6a1f2d9e-0000-4000-8000-000000000001: outcome at Weill Cornell"
    assert "the patient did not pass the study's screening" in rendered.text
    assert "Reason: blasts <40%>" in rendered.text and "blasts &lt;40%&gt;" in rendered.html
    assert "Maria" not in rendered.text + rendered.html


def test_a_missing_variable_is_a_permanent_error_not_a_blank() -> None:
    broken = context()
    del broken["site"]
    with pytest.raises(DeliveryError) as caught:
        TEMPLATES.render(Template.SITE_NEW_REFERRAL, "en", broken)
    assert caught.value.permanent


def test_messages_carry_both_alternatives_and_the_given_message_id() -> None:
    rendered = TEMPLATES.render(Template.REFERRER_ROUTED, "en", context())
    email = build_message(
        rendered, sender="n@trialroute.example", to="a@b.example", message_id="<x@y>", language="en"
    )
    message = parse(email.data)
    assert (email.sender, email.recipient) == ("n@trialroute.example", "a@b.example")
    assert message["Message-ID"] == "<x@y>"
    assert message.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in message.iter_parts()] == ["text/plain", "text/html"]


def test_a_message_reads_back_as_written_whatever_its_language_and_line_lengths() -> None:
    long_line = "Hinweis: " + "ä" * 30 + " " + "x" * 200 + " =?not-a-word?= " + "\n.\n"
    rendered = TEMPLATES.render(Template.PATIENT_ROUTED, "es", context(note=long_line))
    rendered = type(rendered)(
        subject=rendered.subject + " " + "y" * 80, text=rendered.text + long_line, html=rendered.html
    )
    email = build_message(
        rendered,
        sender="UCART123 study referrals <no-reply@trialroute.example>",
        to="maria.lopez@example.com",
        message_id="<abc@trialroute.notifier>",
        language="es",
        date=datetime(2026, 11, 25, 12, 0, tzinfo=UTC),
    )
    assert email.data.isascii(), "7-bit clean: any SMTP server takes it"
    assert all(len(line) <= 78 for line in email.data.split(b"\r\n")), "no line over RFC 5322's 78"
    assert b"\n" not in email.data.replace(b"\r\n", b"")
    message = parse(email.data)
    assert message["From"] == "UCART123 study referrals <no-reply@trialroute.example>"
    assert email.sender == "no-reply@trialroute.example"
    assert message["To"] == "maria.lopez@example.com"
    assert message["Subject"] == rendered.subject
    assert message["Date"] == "Wed, 25 Nov 2026 12:00:00 +0000"
    assert message["Message-ID"] == "<abc@trialroute.notifier>"
    assert message["Auto-Submitted"] == "auto-generated"
    assert message["Content-Language"] == "es" and message["MIME-Version"] == "1.0"
    text, html = message.iter_parts()
    assert text.get_content().replace("\r\n", "\n") == rendered.text
    assert html.get_content().replace("\r\n", "\n") == rendered.html
    assert message.get_body(preferencelist=("html",)) is html


def parse(data: bytes) -> EmailMessage:
    return BytesParser(policy=policy.default).parsebytes(data)  # type: ignore[return-value]


def test_the_information_request_names_each_field_in_json_and_fhir_and_no_patient() -> None:
    without_patient = context(origin="site", has_question=True)
    del without_patient["patient_given_name"]
    rendered = TEMPLATES.render(Template.REFERRER_INFO_REQUESTED, "en", without_patient)
    assert "information requested" in rendered.subject
    assert "clinical.ecog" in rendered.text and "Observation[LOINC 89247-1].valueInteger" in rendered.text
    assert "Study site WCM asks" in rendered.text and "wrote a question" in rendered.text
    assert "/v1/referrals/6a1f2d9e-0000-4000-8000-000000000001/amendments" in rendered.html
