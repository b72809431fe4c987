"""Pure parts of the shared mechanisms: envelope, settings, problem details, log redaction."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError
from pydantic_settings import SettingsConfigDict

from shared.events import EVENT_TYPES, TOPICS, Envelope, ReferralWithdrawn, UnknownEventType
from shared.observability import redact
from shared.problems import field_errors
from shared.settings import ServiceSettings

pytestmark = pytest.mark.unit


def test_envelope_round_trips_and_types_its_payload() -> None:
    envelope = Envelope.wrap(ReferralWithdrawn(clinic_id="c1"), producer="intake", referral_id=uuid.uuid4())
    again = Envelope.from_bytes(envelope.to_bytes())
    assert again == envelope
    assert again.type == "referral.withdrawn" and again.version == 1
    assert again.payload() == ReferralWithdrawn(clinic_id="c1")


def test_consumers_ignore_unknown_fields_but_refuse_unknown_versions() -> None:
    envelope = Envelope.wrap(ReferralWithdrawn(clinic_id="c1"), producer="intake", referral_id=uuid.uuid4())
    newer = envelope.model_copy(update={"data": {**envelope.data, "added_later": True}})
    assert newer.payload() == ReferralWithdrawn(clinic_id="c1")
    with pytest.raises(UnknownEventType):
        envelope.model_copy(update={"version": 99}).payload()
    with pytest.raises(ValidationError):
        envelope.model_copy(update={"data": {}}).payload()


def test_every_event_type_has_a_topic_of_its_name() -> None:
    assert set(TOPICS) == {t for t, _ in EVENT_TYPES}
    assert len(TOPICS) == 14


class _Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="UNITTEST_")
    secret: SecretStr = SecretStr("dev-secret")


def test_default_secrets_are_refused_outside_development() -> None:
    assert _Settings(environment="development").secret.get_secret_value() == "dev-secret"
    with pytest.raises(ValidationError, match="secret must be set"):
        _Settings(environment="production")
    assert _Settings(environment="production", secret=SecretStr("real")).environment == "production"


def test_settings_come_from_the_service_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UNITTEST_PORT", "9123")
    monkeypatch.setenv("KAFKA_TOPIC_PREFIX", "x.")
    settings = _Settings()
    assert settings.port == 9123
    assert settings.kafka.topic("referral.submitted") == "x.referral.submitted"


def test_field_errors_name_the_json_path() -> None:
    errors = [{"loc": ("body", "patient", "date_of_birth"), "msg": "must not be in the future"}]
    assert field_errors(errors) == [{"field": "patient.date_of_birth", "reason": "must not be in the future"}]


def test_redaction_removes_emails_and_phone_numbers() -> None:
    text = redact("contact maria.lopez@example.com or +1 212 555 0142 about ref 42")
    assert "maria" not in text and "555" not in text and "ref 42" in text


def test_the_local_broker_creates_every_topic_of_the_contract() -> None:
    """deploy/local/kafka.sh creates the topics listed in deploy/kafka/topics.txt: none may be missing."""
    listed = Path(__file__).parents[3] / "deploy" / "kafka" / "topics.txt"
    names = [
        line.strip() for line in listed.read_text().splitlines() if line.strip() and not line.startswith("#")
    ]
    assert sorted(names) == sorted(TOPICS)
