"""Configuration from environment variables, read once at start-up and passed down.

Each service subclasses ``ServiceSettings`` with its own prefix (``INTAKE_``, ...). Kafka and the token
issuer are the same for every service, so they have prefixes of their own (``KAFKA_``, ``OAUTH_``).
"""

from __future__ import annotations

import ipaddress
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url

from shared.tracing import TracingSettings

Environment = Literal["development", "test", "production"]


class KafkaSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KAFKA_", extra="ignore")

    bootstrap_servers: str = "127.0.0.1:29092"
    topic_prefix: str = Field(default="", description="prepended to every topic; isolates test runs")
    partitions: int = 6
    send_timeout_s: float = 10.0

    def topic(self, name: str) -> str:
        return f"{self.topic_prefix}{name}"


class OAuthSettings(BaseSettings):
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


class ServiceSettings(BaseSettings):
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
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    oauth: OAuthSettings = Field(default_factory=OAuthSettings)
    tracing: TracingSettings = Field(default_factory=TracingSettings)

    @field_validator("trusted_proxies")
    @classmethod
    def _addresses(cls, values: list[str]) -> list[str]:
        """A typo would silently trust nobody (or the wrong network): refuse it at start-up."""
        for value in values:
            ipaddress.ip_network(value, strict=False)  # ValueError: not an address or a CIDR
        return values

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
        return self.public_url or f"http://{self.host}:{self.port}"
