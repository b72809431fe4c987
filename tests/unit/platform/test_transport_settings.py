"""Settings of the encrypted links and secrets from files: ``<NAME>_FILE``, Kafka's SASL_SSL options,
PostgreSQL's sslmode, uvicorn's certificate options (no I/O beyond the test's own files)."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError
from sqlalchemy import event

from services.auth.config import AuthSettings
from services.eligibility.config import EligibilitySettings
from services.insights.config import InsightsSettings
from services.intake.config import IntakeSettings
from services.notifier.config import NotifierSettings
from services.site_router.config import SiteRouterSettings
from shared.db import CONNECT_TIMEOUT_S, Database, connect_options
from shared.kafka import connection
from shared.settings import KafkaSettings, ServiceSettings
from shared.tls import server_options
from tests.support.tls import Pki


def secret_file(tmp_path: Path, name: str, content: str) -> str:
    path = tmp_path / name
    path.write_text(content)
    return str(path)


def test_a_secret_is_read_from_the_file_its_FILE_variable_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFIER_CLIENT_SECRET_FILE", secret_file(tmp_path, "s", "from-a-file\n"))
    monkeypatch.setenv("NOTIFIER_SMTP_PASSWORD_FILE", secret_file(tmp_path, "p", "smtp pass"))
    url = "postgresql+asyncpg://notifier:pw@db/notifier?sslmode=verify-full"
    monkeypatch.setenv("NOTIFIER_DATABASE_URL_FILE", secret_file(tmp_path, "u", url + "\n"))
    settings = NotifierSettings()
    assert settings.client_secret.get_secret_value() == "from-a-file"  # one trailing newline dropped
    assert settings.smtp_password is not None
    assert settings.smtp_password.get_secret_value() == "smtp pass"
    assert settings.database_url == url


def test_every_settings_class_reads_files_kafka_and_auth_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KAFKA_PASSWORD_FILE", secret_file(tmp_path, "k", "scram"))
    monkeypatch.setenv("AUTH_KEY_ENCRYPTION_SECRET_FILE", secret_file(tmp_path, "a", "kek"))
    assert KafkaSettings().password.get_secret_value() == "scram"
    assert IntakeSettings().kafka.password.get_secret_value() == "scram"  # nested, as services read it
    assert AuthSettings().key_encryption_secret.get_secret_value() == "kek"


def test_a_list_in_a_file_is_json_as_in_its_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INTAKE_TRUSTED_PROXIES_FILE", secret_file(tmp_path, "p", '["10.0.0.0/8"]\n'))
    assert IntakeSettings().trusted_proxies == ["10.0.0.0/8"]


def test_a_variable_set_directly_wins_over_its_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFIER_CLIENT_SECRET", "direct")
    monkeypatch.setenv("NOTIFIER_CLIENT_SECRET_FILE", secret_file(tmp_path, "s", "file"))
    assert NotifierSettings().client_secret.get_secret_value() == "direct"


def test_a_missing_secret_file_stops_the_start_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFIER_CLIENT_SECRET_FILE", str(tmp_path / "absent"))
    with pytest.raises(FileNotFoundError):
        NotifierSettings()


def test_a_default_secret_from_a_file_is_still_refused_in_production(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "NOTIFIER_CLIENT_SECRET_FILE", secret_file(tmp_path, "s", "development-only-notifier-secret")
    )
    with pytest.raises(ValidationError, match="client_secret must be set"):
        NotifierSettings(environment="production")


def test_plaintext_kafka_has_no_tls_nor_sasl_options() -> None:
    options = connection(KafkaSettings(bootstrap_servers="b:9092"))
    assert options == {"bootstrap_servers": "b:9092", "security_protocol": "PLAINTEXT"}


def test_sasl_ssl_gives_every_client_a_verifying_context_and_scram(tmp_path: Path) -> None:
    pki = Pki.make(tmp_path, "kafka")
    settings = KafkaSettings(
        bootstrap_servers="kafka:9093",
        security_protocol="SASL_SSL",
        username="intake",
        password=SecretStr("pw"),
        ca_file=str(pki.ca_file),
    )
    options = connection(settings)
    context = options.pop("ssl_context")
    assert isinstance(context, ssl.SSLContext)
    assert context.check_hostname and context.verify_mode == ssl.CERT_REQUIRED
    assert options == {
        "bootstrap_servers": "kafka:9093",
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "intake",
        "sasl_plain_password": "pw",
    }


def test_sasl_without_credentials_is_refused() -> None:
    settings = KafkaSettings(security_protocol="SASL_SSL", username="intake")  # auth: never connects
    with pytest.raises(ValueError, match="needs a username and a password"):
        connection(settings)


@pytest.mark.parametrize(
    ("mode", "check_hostname", "verify_mode"),
    [
        ("verify-full", True, ssl.CERT_REQUIRED),
        ("verify-ca", False, ssl.CERT_REQUIRED),
        ("require", False, ssl.CERT_NONE),
    ],
)
def test_libpq_sslmode_becomes_an_ssl_context(
    tmp_path: Path, mode: str, check_hostname: bool, verify_mode: ssl.VerifyMode
) -> None:
    pki = Pki.make(tmp_path, "db")
    url, args = connect_options(
        f"postgresql+asyncpg://u:p@db:5432/x?sslmode={mode}&sslrootcert={pki.ca_file}"
    )
    assert "sslmode" not in url.query and "sslrootcert" not in url.query
    assert url.render_as_string(hide_password=False) == "postgresql+asyncpg://u:p@db:5432/x"
    context = args["ssl"]
    assert isinstance(context, ssl.SSLContext)
    assert (context.check_hostname, context.verify_mode) == (check_hostname, verify_mode)
    assert args["timeout"] == CONNECT_TIMEOUT_S


def test_urls_without_tls_parameters_are_left_alone() -> None:
    url, args = connect_options("postgresql+asyncpg://u@db/x?application_name=intake")
    assert (url.query, args) == ({"application_name": "intake"}, {"timeout": CONNECT_TIMEOUT_S})
    assert connect_options("postgresql+asyncpg://u@db/x?sslmode=disable")[1] == {
        "ssl": "disable",
        "timeout": CONNECT_TIMEOUT_S,
    }
    assert connect_options("sqlite+aiosqlite:///x.db")[1] == {"timeout": 30}


async def test_a_service_never_waits_forever_on_a_silent_postgresql_connection() -> None:
    """A partition drops packets: the connection stays open and silent. Connecting and every statement
    of a service have client-side timeouts, in what the engine hands asyncpg's ``connect``."""
    db = Database("postgresql+asyncpg://u@db.invalid/x", command_timeout_s=12.5)
    seen: dict[str, object] = {}

    def capture(_dialect: object, _record: object, _cargs: object, cparams: dict[str, object]) -> None:
        seen.update(cparams)
        raise _Captured  # before any I/O

    event.listen(db.engine.sync_engine, "do_connect", capture)
    try:
        with pytest.raises(_Captured):
            await db.engine.connect()
    finally:
        await db.dispose()
    assert (seen["timeout"], seen["command_timeout"]) == (CONNECT_TIMEOUT_S, 12.5)


class _Captured(Exception):
    pass


def test_https_is_served_only_with_a_certificate_and_its_key() -> None:
    assert server_options(ServiceSettings()) == {}
    assert ServiceSettings(port=8443).base_url == "http://127.0.0.1:8443"
    settings = ServiceSettings(port=8443, ssl_certfile="/tls/tls.crt", ssl_keyfile="/tls/tls.key")
    assert server_options(settings) == {"ssl_certfile": "/tls/tls.crt", "ssl_keyfile": "/tls/tls.key"}
    assert settings.base_url == "https://127.0.0.1:8443"
    with pytest.raises(ValidationError, match="go together"):
        ServiceSettings(ssl_certfile="/tls/tls.crt")


def test_a_client_ca_asks_every_client_for_a_certificate() -> None:
    settings = ServiceSettings(ssl_certfile="/c", ssl_keyfile="/k", ssl_client_ca_file="/ca")
    assert server_options(settings)["ssl_ca_certs"] == "/ca"
    assert server_options(settings)["ssl_cert_reqs"] == ssl.CERT_REQUIRED
    with pytest.raises(ValidationError, match="needs ssl_certfile"):
        ServiceSettings(ssl_client_ca_file="/ca")


PRODUCTION = {
    "environment": "production",
    "host": "0.0.0.0",
    "ssl_certfile": "/tls/tls.crt",
    "ssl_keyfile": "/tls/tls.key",
    "database_url": "postgresql+asyncpg://intake:pw@postgres:5432/intake?sslmode=verify-full&sslrootcert=/ca",
    "kafka": KafkaSettings(bootstrap_servers="kafka:9093", security_protocol="SASL_SSL"),
}


def test_production_with_every_link_encrypted_starts() -> None:
    assert ServiceSettings(**PRODUCTION).serves_tls  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"ssl_certfile": None, "ssl_keyfile": None}, "production serves HTTPS"),
        ({"kafka": KafkaSettings(bootstrap_servers="kafka:9092")}, "Kafka over TLS"),
        ({"database_url": "postgresql+asyncpg://intake:pw@postgres:5432/intake"}, "sslmode=verify-full"),
        (
            {"database_url": "postgresql+asyncpg://i:pw@postgres/intake?sslmode=require"},
            "sslmode=verify-full",
        ),
    ],
)
def test_production_refuses_a_link_in_the_clear(change: dict[str, object], reason: str) -> None:
    with pytest.raises(ValidationError, match=reason):
        ServiceSettings(**(PRODUCTION | change))  # type: ignore[arg-type]


def test_production_on_loopback_or_behind_a_named_proxy_may_be_plain() -> None:
    behind_proxy = PRODUCTION | {"ssl_certfile": None, "ssl_keyfile": None, "trusted_proxies": ["10.0.0.0/8"]}
    assert not ServiceSettings(**behind_proxy).serves_tls  # type: ignore[arg-type]
    local = {
        "environment": "production",
        "host": "127.0.0.1",
        "database_url": "postgresql+asyncpg://p@127.0.0.1/x",
    }
    assert ServiceSettings(**local).environment == "production"  # type: ignore[arg-type]


def test_only_consumers_off_the_path_to_the_emails_gather_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    assert InsightsSettings().consumer_gather_ms == 500
    assert IntakeSettings().consumer_gather_ms == 200
    for on_the_path in (EligibilitySettings, SiteRouterSettings, NotifierSettings):
        assert on_the_path().consumer_gather_ms == 0, on_the_path
    monkeypatch.setenv("INSIGHTS_CONSUMER_GATHER_MS", "0")
    assert InsightsSettings().consumer_gather_ms == 0
    monkeypatch.setenv("INTAKE_CONSUMER_GATHER_MS", "9000")
    with pytest.raises(ValidationError):
        IntakeSettings()
