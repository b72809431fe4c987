"""Configuration from environment variables, read once at start-up and passed down.

Each service subclasses ``ServiceSettings`` with its own prefix (``INTAKE_``, ...). Kafka, the token
issuer and the CA the services trust are the same for every service, so they have prefixes of their own
(``KAFKA_``, ``OAUTH_``, ``TLS_``).

Any setting can also be read from a file: ``<NAME>_FILE`` (say ``NOTIFIER_CLIENT_SECRET_FILE``) names a
file whose content is the value, as Kubernetes mounts a Secret. ``Settings`` is the base of every class
here, so every secret (database URLs, client secrets, the Kafka and SMTP passwords, the key-encryption
secret) can come from a file without a line of its own.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)
from sqlalchemy.engine import make_url

Environment = Literal["development", "test", "production"]

FILE_SUFFIX = "_FILE"


class FileValues(PydanticBaseSettingsSource):
    """``<PREFIX><FIELD>_FILE=/path``: the field's value is that file's content (one trailing newline,
    as ``echo`` or ``kubectl create secret --from-file`` leave, is dropped).

    pydantic-settings' own ``secrets_dir`` reads a directory of files named after the fields; Kubernetes
    and compose mount each secret where the manifest says, and ``_FILE`` says where that is (the
    convention of the postgres and other official images). A variable set directly wins over its file;
    a named file that cannot be read stops the start-up, as a missing secret should."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # everything is done in __call__

    def __call__(self) -> dict[str, Any]:
        prefix = str(self.config.get("env_prefix") or "")
        environ = {name.upper(): value for name, value in os.environ.items()}
        values: dict[str, Any] = {}
        for name, field in self.settings_cls.model_fields.items():
            if isinstance(field.annotation, type) and issubclass(field.annotation, BaseSettings):
                continue  # nested settings (kafka, oauth, tls) read their own prefix's files
            path = environ.get(f"{prefix}{name}{FILE_SUFFIX}".upper())
            if path:
                text = Path(path).read_text(encoding="utf-8")
                value = text[:-1] if text.endswith("\n") else text
                # A list or a model in a file is JSON, as in its variable.
                complex_value = self.field_is_complex(field)
                values[name] = self.decode_complex_value(name, field, value) if complex_value else value
        return values


class Settings(BaseSettings):
    """The base of every settings class: environment variables, then ``<NAME>_FILE`` files."""

    model_config = SettingsConfigDict(extra="ignore")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (
            init_settings,
            env_settings,
            FileValues(settings_cls),
            dotenv_settings,
            file_secret_settings,
        )


SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"]


class KafkaSettings(Settings):
    """The broker and how to reach it. Production: ``SASL_SSL`` with SCRAM-SHA-512 (an encrypted link,
    the broker's certificate checked against ``ca_file``, a password per service)."""

    model_config = SettingsConfigDict(env_prefix="KAFKA_", extra="ignore")

    bootstrap_servers: str = "127.0.0.1:29092"
    topic_prefix: str = Field(default="", description="prepended to every topic; isolates test runs")
    partitions: int = 6
    send_timeout_s: float = 10.0
    security_protocol: SecurityProtocol = Field(
        default="PLAINTEXT", description="SASL_SSL outside a local stack; PLAINTEXT only on loopback"
    )
    sasl_mechanism: SaslMechanism = "SCRAM-SHA-512"
    username: str = Field(default="", description="the SASL user (SASL_* protocols)")
    password: SecretStr = Field(default=SecretStr(""), description="the SASL user's password")
    ca_file: str | None = Field(
        default=None, description="PEM CA bundle the broker's certificate must chain to; default: system's"
    )

    def topic(self, name: str) -> str:
        return f"{self.topic_prefix}{name}"

    @property
    def uses_tls(self) -> bool:
        return self.security_protocol in ("SSL", "SASL_SSL")

    @property
    def uses_sasl(self) -> bool:
        return self.security_protocol.startswith("SASL_")


class TlsSettings(Settings):
    """What the services' HTTPS clients (token fetching, JWKS, the notifier's contact reads) trust."""

    model_config = SettingsConfigDict(env_prefix="TLS_", extra="ignore")

    ca_file: str | None = Field(
        default=None,
        description="PEM CA bundle trusted in addition to the system's (the internal CA that signed the "
        "services' certificates)",
    )


class OAuthSettings(Settings):
    """Where tokens come from. Any OIDC issuer works: set the issuer and, if not derivable, the JWKS URL."""

    model_config = SettingsConfigDict(env_prefix="OAUTH_", extra="ignore")

    issuer: str = "http://127.0.0.1:8000"
    jwks_url: str | None = Field(default=None, description="default: <issuer>/.well-known/jwks.json")
    token_url: str | None = Field(default=None, description="default: <issuer>/oauth/token")
    leeway_s: int = 30
    jwks_cache_s: int = 300
    token_typ: str = Field(default="at+jwt", description="RFC 9068 'typ'; empty accepts JWTs without it")

    @property
    def resolved_jwks_url(self) -> str:
        return self.jwks_url or f"{self.issuer.rstrip('/')}/.well-known/jwks.json"

    @property
    def resolved_token_url(self) -> str:
        return self.token_url or f"{self.issuer.rstrip('/')}/oauth/token"


def _loopback(host: str) -> bool:
    host = host.strip().strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class TracingSettings(Settings):
    """OpenTelemetry's own environment variables (the ``OTEL_`` prefix), shared by every service."""

    model_config = SettingsConfigDict(env_prefix="OTEL_", extra="ignore")

    exporter_otlp_endpoint: str | None = Field(
        default=None, description="OTLP/HTTP base URL (…/v1/traces is appended); unset: no tracing"
    )
    exporter_otlp_traces_endpoint: str | None = Field(
        default=None, description="the full OTLP/HTTP traces URL, instead of the base URL"
    )
    sdk_disabled: bool = Field(default=False, description="off even when an endpoint is set")

    @property
    def traces_endpoint(self) -> str | None:
        if self.sdk_disabled:
            return None
        if self.exporter_otlp_traces_endpoint:
            return self.exporter_otlp_traces_endpoint
        if self.exporter_otlp_endpoint:
            return self.exporter_otlp_endpoint.rstrip("/") + "/v1/traces"
        return None


GatherMs = Annotated[
    int,
    Field(
        ge=0,
        le=5_000,
        description="let a consumer's fetch wait up to this long for more records once some are there "
        "(Kafka's fetch.max.wait.ms with a large fetch.min.bytes): fewer, larger transactions for a "
        "consumer off the path to the emails, at that cost in freshness; 0: take records at once",
    ),
]
"""``consumer_gather_ms``: a service that gathers by default sets only its default."""


class ServiceSettings(Settings):
    """Settings every service has; subclasses set ``env_prefix`` and add their own fields."""

    model_config = SettingsConfigDict(extra="ignore")

    environment: Environment = "development"
    database_url: str = "sqlite+aiosqlite:///.run/data/service.db"
    host: str = "127.0.0.1"
    port: int = 8000
    public_url: str | None = Field(default=None, description="how clients reach this service")
    audience: str = Field(default="", description="the 'aud' this service accepts; default its name")
    consumer_group: str = Field(default="", description="default: trialroute-<service>")
    max_body_bytes: int = 65_536
    relay_gather_s: float = Field(
        default=0.02,
        ge=0,
        le=1,
        description="after a commit wakes the outbox relay, wait this long for more before publishing "
        "(batches the events of a low rate at a small cost in latency; 0: publish at once)",
    )
    consumer_gather_ms: GatherMs = 0
    migrate_on_start: bool | None = Field(
        default=None,
        description="bring the store to the code's revision at start-up; default: yes for a SQLite file "
        "(the embedded default), no for PostgreSQL, where `trialroute migrate` is a deploy step",
    )
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="addresses or CIDRs of the reverse proxies whose X-Forwarded-For/-Proto are believed "
        "(JSON list); empty: none, the client is always the TCP peer",
    )
    docs_enabled: bool | None = Field(
        default=None, description="serve /docs, /redoc and /openapi.json; default: outside production only"
    )
    metrics_enabled: bool = Field(default=True, description="serve the Prometheus metrics at all")
    metrics_port: int | None = Field(
        default=None,
        ge=1,
        le=65_535,
        description="serve /metrics on this port (same host) instead of the public one",
    )
    ssl_certfile: str | None = Field(
        default=None, description="PEM certificate (chain) to serve HTTPS with; unset: plain HTTP"
    )
    ssl_keyfile: str | None = Field(default=None, description="the certificate's PEM private key")
    ssl_client_ca_file: str | None = Field(
        default=None,
        description="mutual TLS: refuse clients without a certificate signed by this PEM CA bundle",
    )
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    oauth: OAuthSettings = Field(default_factory=OAuthSettings)
    tls: TlsSettings = Field(default_factory=TlsSettings)
    tracing: TracingSettings = Field(default_factory=TracingSettings)

    @field_validator("trusted_proxies")
    @classmethod
    def _addresses(cls, values: list[str]) -> list[str]:
        """A typo would silently trust nobody (or the wrong network): refuse it at start-up."""
        for value in values:
            ipaddress.ip_network(value, strict=False)  # ValueError: not an address or a CIDR
        return values

    @model_validator(mode="after")
    def _certificate_with_its_key(self) -> ServiceSettings:
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError("ssl_certfile and ssl_keyfile go together")
        if self.ssl_client_ca_file and not self.ssl_certfile:
            raise ValueError("ssl_client_ca_file needs ssl_certfile and ssl_keyfile (HTTPS)")
        return self

    @model_validator(mode="after")
    def _refuse_clear_links_in_production(self) -> ServiceSettings:
        """In production a link off this machine is encrypted: HTTPS served here (or by a proxy named in
        ``trusted_proxies``), Kafka over SSL/SASL_SSL, PostgreSQL with a verifying ``sslmode``. Loopback
        is exempt (a sidecar, the tests)."""
        if self.environment != "production":
            return self
        if not self.serves_tls and not self.trusted_proxies and not _loopback(self.host):
            raise ValueError(
                "production serves HTTPS: set ssl_certfile and ssl_keyfile, or trusted_proxies for the "
                "proxy that terminates TLS in front (or listen on loopback only)"
            )
        brokers = [server.rsplit(":", 1)[0] for server in self.kafka.bootstrap_servers.split(",")]
        if not self.kafka.uses_tls and not all(_loopback(b) for b in brokers):
            raise ValueError("production reaches Kafka over TLS: KAFKA_SECURITY_PROTOCOL=SASL_SSL")
        url = make_url(self.database_url)
        if url.get_backend_name() == "postgresql" and not _loopback(url.host or "localhost"):
            if url.query.get("sslmode") not in ("verify-full", "verify-ca"):
                raise ValueError("production reaches PostgreSQL with ?sslmode=verify-full in database_url")
        return self

    @model_validator(mode="after")
    def _refuse_default_secrets(self) -> ServiceSettings:
        """Outside development a secret left at its shipped default is a deployment mistake."""
        if self.environment == "development":
            return self
        for name, field in type(self).model_fields.items():
            value = getattr(self, name)
            if isinstance(value, SecretStr) and isinstance(field.default, SecretStr):
                if value.get_secret_value() == field.default.get_secret_value():
                    raise ValueError(f"{name} must be set outside development (it is at its default)")
        return self

    @property
    def migrates_on_start(self) -> bool:
        """``migrate_on_start`` as set, else whether the store is the embedded SQLite file: one process
        per store on one machine, with no deploy step to run the migrations."""
        if self.migrate_on_start is not None:
            return self.migrate_on_start
        return make_url(self.database_url).get_backend_name() == "sqlite"

    @property
    def serves_docs(self) -> bool:
        return self.docs_enabled if self.docs_enabled is not None else self.environment != "production"

    @property
    def base_url(self) -> str:
        scheme = "https" if self.serves_tls else "http"
        return self.public_url or f"{scheme}://{self.host}:{self.port}"

    @property
    def serves_tls(self) -> bool:
        return self.ssl_certfile is not None
