"""Intake's settings: environment variables prefixed ``INTAKE_``, read once at start-up."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.settings import GatherMs, ServiceSettings

DEFAULT_STUDY = "UCART123-AMELI-01"


class IntakeSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="INTAKE_", extra="ignore")

    port: int = 8001
    consumer_gather_ms: GatherMs = 200  # status events reach the timeline up to this much later
    database_url: str = "sqlite+aiosqlite:///.run/data/intake.db"
    study_id: str = Field(default=DEFAULT_STUDY, description="the one study this deployment serves")
    idempotency_ttl_hours: int = Field(
        default=24, ge=24, description="how long an Idempotency-Key is remembered (at least a day)"
    )
    idempotency_lock_s: float = Field(
        default=30.0,
        gt=0,
        description="a request in flight longer than this is presumed dead; a retry may take its key over",
    )
    contact_client_ids: list[str] = Field(
        default_factory=list,
        description="client ids allowed to read contact details; empty: any client with contact:read",
    )
    page_limit_max: int = Field(default=200, ge=1)
