"""``referral.notified`` in both versions as intake reads it: the timeline entry, the emails the clinic's
view lists, and the fold (a notice is a state only after routing)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from services.intake.domain import Fact, Status, describe, notified_reason, project, sent_emails
from shared.events import (
    EVENT_TYPES,
    STATUS_EVENTS,
    Envelope,
    NotifiedEmail,
    ReferralNotified,
    ReferralNotifiedV2,
)

pytestmark = pytest.mark.unit

T0 = datetime(2026, 11, 10, 9, 0, tzinfo=UTC)
SOURCE = uuid.uuid4()


def email(role: str, template: str, n: int) -> NotifiedEmail:
    return NotifiedEmail(
        recipient_role=role,  # type: ignore[arg-type]
        template=template,
        message_id=f"<m{n}@trialroute.notifier>",
        source_event_id=SOURCE,
    )


ROUTING = ReferralNotifiedV2(
    emails=[
        email("site", "site_new_referral", 1),
        email("patient", "patient_routed", 2),
        email("referrer", "referrer_routed", 3),
    ]
)


def test_both_versions_are_registered_on_one_topic_and_taken_as_status_events() -> None:
    assert EVENT_TYPES[("referral.notified", 1)] is ReferralNotified
    assert EVENT_TYPES[("referral.notified", 2)] is ReferralNotifiedV2
    assert {ReferralNotified, ReferralNotifiedV2} <= set(STATUS_EVENTS)
    envelope = Envelope.wrap(ROUTING, producer="notifier", referral_id=uuid.uuid4())
    assert (envelope.type, envelope.version) == ("referral.notified", 2)
    assert Envelope.from_bytes(envelope.to_bytes()).payload() == ROUTING


def test_a_v2_lists_at_least_one_email() -> None:
    with pytest.raises(ValidationError):
        ReferralNotifiedV2(emails=[])
    with pytest.raises(ValidationError):
        ReferralNotifiedV2.model_validate({"emails": [{"recipient_role": "site", "template": "t"}]})


def test_a_v2_is_one_notified_entry_naming_the_roles_and_templates() -> None:
    described = describe(ROUTING)
    assert described.status is Status.NOTIFIED and described.revision is None
    assert described.reason == (
        "site, patient and referrer notified (site_new_referral, patient_routed, referrer_routed)"
    )
    assert described.details == {
        "notifications": [
            {"recipient_role": role, "template": template, "message_id": f"<m{n}@trialroute.notifier>"}
            for n, (role, template) in enumerate(
                [
                    ("site", "site_new_referral"),
                    ("patient", "patient_routed"),
                    ("referrer", "referrer_routed"),
                ],
                start=1,
            )
        ]
    }
    assert sent_emails(described.details) == described.details["notifications"]


def test_the_reason_of_one_or_two_emails() -> None:
    assert notified_reason([email("referrer", "referrer_site_decided", 1)]) == (
        "referrer notified (referrer_site_decided)"
    )
    two = [email("patient", "patient_routed", 1), email("referrer", "referrer_routed", 2)]
    assert notified_reason(two) == "patient and referrer notified (patient_routed, referrer_routed)"


def test_a_v1_stays_one_entry_per_email() -> None:
    v1 = ReferralNotified(
        recipient_role="patient", template="patient_routed", message_id="<m9>", source_event_id=SOURCE
    )
    described = describe(v1)
    assert described.status is Status.NOTIFIED and described.reason == "patient notified (patient_routed)"
    assert sent_emails(described.details) == [
        {"recipient_role": "patient", "template": "patient_routed", "message_id": "<m9>"}
    ]
    assert sent_emails({}) == [], "an entry of another kind lists no email"


def test_a_v2_folds_as_a_v1_does() -> None:
    def fact(status: Status, minute: int, seq: int, event_type: str = "test") -> Fact:
        return Fact(event_type, T0 + timedelta(minutes=minute), seq, status, 1 if seq == 1 else None)

    routed = [fact(Status.RECEIVED, 0, 1), fact(Status.ROUTED, 1, 2)]
    v1 = fact(Status.NOTIFIED, 2, 3, "referral.notified")
    v2 = fact(Status.NOTIFIED, 3, 4, "referral.notified")
    assert project([*routed, v1, v2], 1).status_at == T0 + timedelta(minutes=2)
    assert project([*routed, v2], 1).status is Status.NOTIFIED
    accepted = [*routed, fact(Status.ACCEPTED, 2, 3), fact(Status.NOTIFIED, 3, 4)]
    assert project(accepted, 1).status is Status.ACCEPTED, "a notice about a decision is history"
