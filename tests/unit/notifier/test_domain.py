"""The notifier's pure rules: who is emailed, in which language, masking, Message-ID, backoff."""

from __future__ import annotations

import uuid

import pytest

from services.notifier.domain import (
    Planned,
    Template,
    choose_language,
    gives_up,
    mask_email,
    message_id,
    needs_contact,
    patient_skip_reason,
    plan,
    retry_delay_s,
)
from shared.events import ReferralRouted, ReferralSiteDecided, ReferralWithdrawn
from tests.support import builders

pytestmark = pytest.mark.unit


def routed() -> ReferralRouted:
    return builders.routed(
        site=builders.site("WCM", name="Weill Cornell", coordinator_email="c@sites.example"),
        distance_km=4.2,
        criteria_to_confirm=["ecog"],
    )


def test_a_routed_referral_emails_site_patient_and_referrer() -> None:
    assert plan(routed()) == [
        Planned("site", Template.SITE_NEW_REFERRAL),
        Planned("patient", Template.PATIENT_ROUTED),
        Planned("referrer", Template.REFERRER_ROUTED),
    ]


@pytest.mark.parametrize("decision", ["accepted", "declined", "closed"])
def test_every_site_decision_emails_the_referrer_only(decision: str) -> None:
    decided = ReferralSiteDecided(clinic_id="clinic-a", site_code="WCM", decision=decision)  # type: ignore[arg-type]
    assert plan(decided) == [Planned("referrer", Template.REFERRER_SITE_DECIDED)]


@pytest.mark.parametrize("step", ["enrolled", "screen_failed", "not_enrolled"])
def test_the_sites_outcome_emails_the_referrer_only(step: str) -> None:
    assert plan(builders.progressed(step)) == [Planned("referrer", Template.REFERRER_OUTCOME)]


@pytest.mark.parametrize("step", ["contacted", "screening_scheduled", "consented"])
def test_the_steps_before_the_outcome_email_nobody(step: str) -> None:
    assert plan(builders.progressed(step)) == []


def test_other_events_email_nobody() -> None:
    assert plan(ReferralWithdrawn(clinic_id="clinic-a")) == []


def test_only_patient_and_referrer_addresses_come_from_intake() -> None:
    assert [needs_contact(r) for r in ("site", "patient", "referrer")] == [False, True, True]


@pytest.mark.parametrize(
    ("consent", "email", "skipped"),
    [
        (True, "maria@example.com", False),
        (False, "maria@example.com", True),
        (True, None, True),
        (True, "  ", True),
        (False, None, True),
    ],
)
def test_the_patient_is_emailed_only_with_consent_and_an_address(
    consent: bool, email: str | None, skipped: bool
) -> None:
    reason = patient_skip_reason(consent, email)
    assert (reason is not None) == skipped
    if not consent:
        assert reason is not None and "consent" in reason


@pytest.mark.parametrize(
    ("preferred", "language"),
    [("es", "es"), ("es-MX", "es"), ("ES_es", "es"), ("de", "en"), ("", "en"), (None, "en"), ("en-GB", "en")],
)
def test_language_is_the_patients_where_a_template_exists(preferred: str | None, language: str) -> None:
    assert choose_language(preferred, {"en", "es"}) == language


@pytest.mark.parametrize(
    ("address", "masked"),
    [("maria.lopez@example.com", "m***@example.com"), ("x@y.org", "x***@y.org"), ("broken", "***")],
)
def test_masked_addresses_keep_the_domain_and_one_letter(address: str, masked: str) -> None:
    assert mask_email(address) == masked


def test_message_id_is_stable_per_event_and_role() -> None:
    event = uuid.UUID("00000000-0000-0000-0000-000000000001")
    first = message_id(event, "site")
    assert first == message_id(event, "site")
    assert first != message_id(event, "patient")
    assert first != message_id(uuid.uuid4(), "site")
    local, _, domain = first.strip("<>").partition("@")
    assert len(local) == 32 and domain == "trialroute.notifier"
    assert first.startswith("<") and first.endswith(">")


def test_backoff_doubles_up_to_a_cap() -> None:
    assert [retry_delay_s(n, 30, 600) for n in range(1, 8)] == [30, 60, 120, 240, 480, 600, 600]


def test_transient_errors_give_up_only_when_attempts_are_used_up() -> None:
    assert not gives_up(1, 3, permanent=False)
    assert gives_up(3, 3, permanent=False)
    assert gives_up(1, 3, permanent=True)
